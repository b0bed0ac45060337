//! What a model keeps between forwards: the buffers graphs are captured over, those of
//! forwards launched directly, and the captured graphs, with how each set of buffers is sized.

use std::num::NonZeroUsize;

use lru::LruCache;
use specd_kernels::cuda::{Buffer, Graph};

use super::buffers::{self, Buffers, Capacity, UploadedChunks};
use super::plan::Shape;
use super::{CudaCross, CudaModel, GpuBlocks};
use crate::error::Result;
use crate::kv::{KvPool, BLOCK_SIZE};
use crate::model::llama::OutputMode;

/// Captured graphs a model keeps (`SPECD_CUDA_GRAPH_CACHE`), the least recently replayed
/// dropped first: padded shapes bound their number for a given batch limit, but a server that
/// sees every batch size and table width should not hold graphs for all of them.
const GRAPH_CACHE: usize = 256;

/// The least that buffers for forwards launched directly are allocated for.
const DIRECT_FLOOR: Capacity = Capacity {
    rows: 16,
    logit_rows: 16,
    seqs: 8,
    meta_ints: 1024,
    chunks: 16,
    cross_chunks: 16,
};

/// A step's padded shape, its output, the head's rows, and whether a GLIDE drafter's feature
/// is added.
pub(super) type GraphKey = (Shape, OutputMode, usize, Option<buffers::FeatureKinds>);

/// Buffers and the KV chunk tables last uploaded into them.
#[derive(Debug)]
pub(super) struct BufferSet {
    pub(super) bufs: Buffers,
    pub(super) chunks: UploadedChunks,
}

/// What the scratch of a model holds between forwards.
#[derive(Debug)]
pub(super) struct Scratch {
    /// The buffers graphs are captured over, sized at their first use for the largest shape a
    /// graph takes ([`CudaModel::graph_capacity`]): replaced, and every graph dropped with
    /// them, only if a forward outgrows even that (a pool or context larger than at start).
    pub(super) graphed: Option<BufferSet>,
    /// Buffers of forwards launched directly that `graphed` cannot hold (long prompt chunks),
    /// grown as they come without touching the graphs.
    pub(super) direct: Option<BufferSet>,
    pub(super) graphs: LruCache<GraphKey, Graph>,
    /// A GLIDE drafter's chained rounds: each round's picks (draft rows) and their
    /// probabilities, grown as rounds and batches need.
    pub(super) picks: Option<(Buffer<i32>, Buffer<f32>)>,
}

impl Scratch {
    pub(super) fn new() -> Self {
        let cap = std::env::var("SPECD_CUDA_GRAPH_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(GRAPH_CACHE);
        Self {
            graphed: None,
            direct: None,
            graphs: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
            picks: None,
        }
    }
}

impl Scratch {
    /// The buffers a forward that needs `need` runs in, and the graphs captured over them: the
    /// graphed set for a forward replayed from a graph (`graphed`) or one the graphed set
    /// holds anyway, else the set of forwards launched directly. `kv` and `cross` (a GLIDE
    /// drafter's target pool) size the graphed set at its first use.
    pub(super) fn set_for(
        &mut self,
        model: &CudaModel,
        need: Capacity,
        graphed: bool,
        kv: &KvPool,
        cross: Option<&KvPool>,
    ) -> Result<(&mut BufferSet, &mut LruCache<GraphKey, Graph>)> {
        let set = if graphed
            || self
                .graphed
                .as_ref()
                .is_some_and(|s| s.bufs.cap.covers(&need))
        {
            let floor = || model.graph_capacity(kv, cross);
            if model.ensure_buffers(&mut self.graphed, need, floor)? {
                self.graphs.clear();
            }
            &mut self.graphed
        } else {
            model.ensure_buffers(&mut self.direct, need, || DIRECT_FLOOR)?;
            &mut self.direct
        };
        Ok((set.as_mut().expect("buffers ensured"), &mut self.graphs))
    }
}

impl CudaModel {
    /// Makes `slot` hold buffers for a forward needing `need`: kept when they do, else grown
    /// to hold both (each count rounded up to a power of two), or, the first time, allocated
    /// for at least `floor()`. Returns whether it allocated new ones (graphs captured over the
    /// old ones must go).
    pub(super) fn ensure_buffers(
        &self,
        slot: &mut Option<BufferSet>,
        need: Capacity,
        floor: impl FnOnce() -> Capacity,
    ) -> Result<bool> {
        let old = slot.as_ref().map(|s| s.bufs.cap);
        if old.is_some_and(|c| c.covers(&need)) {
            return Ok(false);
        }
        let cap = match old {
            Some(c) => c.max(need),
            None => need.max(floor()),
        };
        // The old buffers go first: both sets at once may not fit.
        *slot = None;
        let cross_q_dim = self.cross.as_ref().map_or(0, |c| c.n_heads * c.head_dim);
        let (feature_dim, own_dim) = match &self.cross {
            Some(CudaCross {
                feature: Some(f), ..
            }) => {
                let h = self.config.hidden_size;
                (h, if f.chain_norm.is_some() { h } else { 0 })
            }
            _ => (0, 0),
        };
        let widths = buffers::ExtraWidths {
            cross_q: cross_q_dim,
            cross_heads: self.cross.as_ref().map_or(0, |c| c.n_heads),
            feature: feature_dim,
            feature_own: own_dim,
        };
        *slot = Some(BufferSet {
            bufs: Buffers::new(&self.gpu, &self.config, widths, cap)?,
            chunks: UploadedChunks::default(),
        });
        Ok(true)
    }

    /// What the graphed buffers hold from the start: the largest shape a graph is captured
    /// for, with tables as wide as the context, and every chunk of the pools read. So graphs,
    /// once captured, stay valid as batches grow, contexts deepen and pools fill.
    pub(super) fn graph_capacity(&self, kv: &KvPool, cross: Option<&KvPool>) -> Capacity {
        let chunks = |p: &KvPool| p.gpu_blocks().map_or(1, GpuBlocks::max_chunks);
        let width = self.config.max_position_embeddings.div_ceil(BLOCK_SIZE);
        let shape = Shape::largest_graphed(width, cross.is_some());
        Capacity::of(&shape, chunks(kv), cross.map_or(0, chunks))
    }
}
