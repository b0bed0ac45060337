//! The CUDA backend: a model's weights, KV blocks and activations in GPU memory, one forward
//! per step through specd's kernels, replayed from CUDA graphs. A GLIDE drafter is a model of
//! this backend too ([`CudaModel::load_glide`]): it shares its target's GPU stream, embedding
//! and rotary table, and its cross-attention reads the target's pool through the
//! paged-attention kernel.
//!
//! Per step only the metadata goes in (token ids, positions, KV slots, block tables: a few
//! hundred bytes) and only what the caller asked for comes out: argmax tokens, greedy
//! verdicts, or (for sampling on the host) the wanted rows of logits.

mod buffers;
mod kv;
mod plan;
mod step;
mod weights;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;
use specd_kernels::cuda::{Buffer, Gpu, GpuError, Graph};

use buffers::{Buffers, Capacity, UploadedChunks};
pub(crate) use kv::GpuBlocks;
use plan::{Plan, Shape, GRAPH_MAX_ROWS};
use step::{CrossLaunch, CudaStep};
use weights::{GpuCross, GpuMatrix, GpuWeights};

use super::config::{ModelConfig, RopeLayout};
use super::device::GpuStats;
use super::glide::{glide_layers, FeatureWeights, GlideHost};
use super::host_weights::HostWeights;
use super::llama::{
    hidden_per_seq, run_layers, ForwardOps, ForwardOut, GlideInput, HiddenRows, OutputMode,
    SeqInput, Wanted,
};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvPool, BLOCK_SIZE};
use specd_kernels::cuda::{KvLayout, WeightFormat};

/// The names of the row-product kernels built in.
pub(crate) fn matmul_kernels() -> Vec<String> {
    specd_kernels::cuda::MatmulKernel::CHOICES
        .iter()
        .map(|k| k.name())
        .collect()
}

pub(crate) fn gpu_err(e: GpuError) -> Error {
    Error::Device(e.to_string())
}

impl From<GpuError> for Error {
    fn from(e: GpuError) -> Self {
        gpu_err(e)
    }
}

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
type GraphKey = (Shape, OutputMode, usize, Option<buffers::FeatureKinds>);

/// Buffers and the KV chunk tables last uploaded into them.
#[derive(Debug)]
struct BufferSet {
    bufs: Buffers,
    chunks: UploadedChunks,
}

/// What the scratch of a model holds between forwards.
#[derive(Debug)]
struct Scratch {
    /// The buffers graphs are captured over, sized at their first use for the largest shape a
    /// graph takes ([`CudaModel::graph_capacity`]): replaced, and every graph dropped with
    /// them, only if a forward outgrows even that (a pool or context larger than at start).
    graphed: Option<BufferSet>,
    /// Buffers of forwards launched directly that `graphed` cannot hold (long prompt chunks),
    /// grown as they come without touching the graphs.
    direct: Option<BufferSet>,
    graphs: LruCache<GraphKey, Graph>,
}

impl Scratch {
    fn new() -> Self {
        let cap = std::env::var("SPECD_CUDA_GRAPH_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(GRAPH_CACHE);
        Self {
            graphed: None,
            direct: None,
            graphs: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
        }
    }
}

/// A GLIDE drafter's part beyond the Llama layers: each layer's cross-attention weights, its
/// feature's ([`GlideFeature::LastHidden`](super::GlideFeature), one `[hidden, hidden]`
/// projection on a GPU), and what its cross-attention reads of the target.
#[derive(Debug)]
struct CudaCross {
    layers: Vec<GpuCross>,
    feature: Option<FeatureWeights<GpuMatrix, Buffer<f32>>>,
    /// The target layer whose keys and values are read.
    layer: usize,
    /// The target's attention shape.
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    interleaved: bool,
    /// The target's KV blocks per chunk and layers (its pool's layout).
    chunk_blocks: usize,
    n_layers: usize,
    /// The target's rotary table (shared with it).
    cos_sin: Arc<Buffer<f32>>,
}

/// A model on a GPU.
#[derive(Debug)]
pub(crate) struct CudaModel {
    gpu: Arc<Gpu>,
    config: ModelConfig,
    weights: GpuWeights,
    /// A GLIDE drafter's cross-attention (`None` for a Llama-family model).
    cross: Option<CudaCross>,
    weight_bytes: usize,
    step_weight_bytes: usize,
    /// (cos, sin) of every position and frequency, `[max_position][head_dim / 2]`.
    cos_sin: Arc<Buffer<f32>>,
    scratch: Mutex<Scratch>,
    graphs: AtomicBool,
    forwards: AtomicU64,
    replays: AtomicU64,
    captures: AtomicU64,
    launches: AtomicU64,
    host_ns: AtomicU64,
    /// With `SPECD_GPU_TIMING=1`: events around each forward's launches, and the GPU's time
    /// between them summed (a diagnostic: recording costs the host a few microseconds).
    timer: Option<Mutex<specd_kernels::cuda::GpuTimer>>,
    gpu_ns: AtomicU64,
}

impl CudaModel {
    pub(crate) fn load(
        config: &ModelConfig,
        host: HostWeights,
        tied: bool,
        ordinal: usize,
    ) -> Result<Self> {
        let gpu = Gpu::open(ordinal).map_err(gpu_err)?;
        for (what, n) in [
            ("hidden size", config.hidden_size),
            ("intermediate size", config.intermediate_size),
        ] {
            if !n.is_multiple_of(32) {
                return Err(Error::Device(format!(
                    "the model's {what} is {n}; the CUDA kernels need a multiple of 32"
                )));
            }
        }
        if config.head_dim > 256 || !config.head_dim.is_multiple_of(8) {
            return Err(Error::Device(format!(
                "the model's head dimension is {}; the CUDA attention kernel takes multiples of 8 up to 256",
                config.head_dim
            )));
        }
        let weights = weights::upload(&gpu, host, tied)?;
        let cos_sin = Arc::new(rope_table(&gpu, config)?);
        let weight_bytes = weights::weight_bytes(&weights, tied);
        let step_weight_bytes = weights::step_bytes(&weights);
        Ok(Self::assemble(
            gpu,
            config,
            weights,
            None,
            (weight_bytes, step_weight_bytes),
            cos_sin,
        ))
    }

    /// A GLIDE drafter of `base`'s shapes on `target`'s GPU (and stream): its layers, final
    /// norm and cross-attention uploaded, the target's embedding shared, and as head its own
    /// matrix or the target's head rows `vocab_ids`; its cross-attention reads target layer
    /// `target_layer`.
    pub(crate) fn load_glide(
        target: &CudaModel,
        base: &ModelConfig,
        host: GlideHost,
        vocab_ids: &[u32],
        target_layer: usize,
    ) -> Result<Self> {
        let gpu = target.gpu.clone();
        gpu.bind().map_err(gpu_err)?;
        if !base.intermediate_size.is_multiple_of(32) {
            return Err(Error::Device(format!(
                "the GLIDE drafter's intermediate size is {}; the CUDA kernels need a multiple \
                 of 32",
                base.intermediate_size
            )));
        }
        if base.head_dim > 256 || !base.head_dim.is_multiple_of(8) {
            return Err(Error::Device(format!(
                "the GLIDE drafter's head dimension is {}; the CUDA attention kernel takes \
                 multiples of 8 up to 256",
                base.head_dim
            )));
        }
        let (weights, layers, feature) =
            weights::upload_glide(&gpu, host, &target.weights, vocab_ids)?;
        let t = &target.config;
        // Its own rotary table is the target's when its heads are as wide (the frequencies
        // depend on the head dimension only).
        let cos_sin = if base.rope_inv_freq() == t.rope_inv_freq() {
            target.cos_sin.clone()
        } else {
            Arc::new(rope_table(&gpu, base)?)
        };
        let cross = CudaCross {
            layers,
            feature,
            layer: target_layer,
            n_heads: t.num_heads,
            n_kv: t.num_kv_heads,
            head_dim: t.head_dim,
            interleaved: t.rope_layout == RopeLayout::Interleaved,
            chunk_blocks: kv::chunk_blocks(t),
            n_layers: t.num_layers,
            cos_sin: target.cos_sin.clone(),
        };
        let bytes = weights::step_bytes(&weights)
            + weights::cross_bytes(&cross.layers, cross.feature.as_ref());
        Ok(Self::assemble(
            gpu,
            base,
            weights,
            Some(cross),
            (bytes, bytes),
            cos_sin,
        ))
    }

    fn assemble(
        gpu: Arc<Gpu>,
        config: &ModelConfig,
        weights: GpuWeights,
        cross: Option<CudaCross>,
        (weight_bytes, step_weight_bytes): (usize, usize),
        cos_sin: Arc<Buffer<f32>>,
    ) -> Self {
        let graphs = std::env::var("SPECD_CUDA_GRAPHS").map_or(true, |v| v != "0");
        let timer = if std::env::var("SPECD_GPU_TIMING").is_ok_and(|v| v == "1") {
            match gpu.timer() {
                Ok(t) => Some(Mutex::new(t)),
                Err(e) => {
                    eprintln!("specd: SPECD_GPU_TIMING=1 but no timing events: {e}");
                    None
                }
            }
        } else {
            None
        };
        Self {
            gpu,
            config: config.clone(),
            weights,
            cross,
            weight_bytes,
            step_weight_bytes,
            cos_sin,
            scratch: Mutex::new(Scratch::new()),
            graphs: AtomicBool::new(graphs),
            forwards: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            captures: AtomicU64::new(0),
            launches: AtomicU64::new(0),
            host_ns: AtomicU64::new(0),
            timer,
            gpu_ns: AtomicU64::new(0),
        }
    }

    /// Whether the output head is stored quantized (a GLIDE drafter of this target then
    /// quantizes its own matrices).
    pub(crate) fn head_is_quantized(&self) -> bool {
        is_quantized(&self.weights.head)
    }

    /// Whether every layer matrix, cross-attention ones included, is stored quantized.
    pub(crate) fn layers_quantized(&self) -> bool {
        let cross = self.cross.as_ref().map_or(&[][..], |c| &c.layers[..]);
        self.weights.layers.iter().all(|l| is_quantized(&l.qkv))
            && cross.iter().all(|c| is_quantized(&c.q))
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.gpu.ordinal()
    }

    pub(crate) fn kv_storage(&self, max_blocks: usize) -> GpuBlocks {
        GpuBlocks::new(self.gpu.clone(), &self.config, max_blocks)
    }

    pub(crate) fn memory_free(&self) -> Result<usize> {
        Ok(self.gpu.memory().map_err(gpu_err)?.0)
    }

    /// Turns graph capture and replay on or off (on by default; `SPECD_CUDA_GRAPHS=0` starts
    /// with it off).
    pub(crate) fn set_graphs(&self, on: bool) {
        self.graphs.store(on, Ordering::Relaxed);
    }

    /// Device-to-device copy bandwidth in bytes per second (read plus written), measured on a
    /// 1 GiB buffer.
    pub(crate) fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 30;
        let what = "a bandwidth measurement";
        let a = self.gpu.alloc::<u8>(n, what, "free GPU memory")?;
        let b = self.gpu.alloc::<u8>(n, what, "free GPU memory")?;
        for _ in 0..3 {
            self.gpu.copy(b.ptr(), a.ptr(), n)?;
        }
        self.gpu.synchronize()?;
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            self.gpu.copy(b.ptr(), a.ptr(), n)?;
        }
        self.gpu.synchronize()?;
        Ok(2.0 * (n * reps) as f64 / t.elapsed().as_secs_f64())
    }

    /// Switches the row-product kernel by name (`8x8`, `16x8`, ..., `simple`), dropping the
    /// graphs captured with the old one.
    pub(crate) fn set_matmul(&self, name: &str) -> Result<()> {
        let k = specd_kernels::cuda::MatmulKernel::from_name(name).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "unknown product kernel `{name}`: one of {}",
                matmul_kernels().join(", ")
            ))
        })?;
        self.gpu.set_matmul_kernel(k);
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graphs
            .clear();
        Ok(())
    }

    pub(crate) fn stats(&self) -> GpuStats {
        GpuStats {
            device: self.gpu.name().to_string(),
            matmul: self.gpu.matmul_kernel().name(),
            weight_bytes: self.weight_bytes,
            step_weight_bytes: self.step_weight_bytes,
            forwards: self.forwards.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            captures: self.captures.load(Ordering::Relaxed),
            launches: self.launches.load(Ordering::Relaxed),
            host_us: self.host_ns.load(Ordering::Relaxed) / 1000,
            gpu_us: self.gpu_ns.load(Ordering::Relaxed) / 1000,
        }
    }

    /// One forward of `batch` (slots reserved in `kv`), shaped as `wanted` asks (with
    /// `keep_hidden`, the final normed rows come back too, as the head read them: bf16). A
    /// GLIDE drafter's forward takes `glide`, what it reads of the target (the target's shapes
    /// and layer there are the drafter's own, checked at load).
    pub(crate) fn forward(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        wanted: Wanted<'_, '_>,
        head_rows: usize,
        glide: Option<GlideInput<'_>>,
    ) -> Result<(ForwardOut, Option<HiddenRows>)> {
        let t0 = Instant::now();
        let Wanted {
            mode,
            sample,
            keep_hidden,
        } = wanted;
        self.gpu.bind().map_err(gpu_err)?;
        if self.cross.is_some() != glide.is_some() {
            return Err(Error::InvalidRequest(
                "a GLIDE drafter's forward, and only it, reads the target's pool and tables".into(),
            ));
        }
        let cross = glide.map(|g| g.cross);
        let cross_tables: Option<&[&BlockTable]> = cross.map(|c| c.tables.as_slice());
        let cross_kv = match cross {
            Some(c) => Some(c.kv.gpu_blocks().ok_or_else(|| {
                Error::InvalidRequest("the target's KV pool is not on the GPU".into())
            })?),
            None => None,
        };
        let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let use_graph = self.graphs.load(Ordering::Relaxed) && rows <= GRAPH_MAX_ROWS;
        let plan = Plan::new(batch, cross_tables, use_graph);
        let chunks = kv.gpu_blocks().map_or(0, |g| g.chunk_ptrs().len());
        let chunk_blocks = kv.gpu_blocks().map_or(1, |g| g.chunk_blocks());
        let cross_chunks = cross_kv.map_or(0, |g| g.chunk_ptrs().len());
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let Scratch {
            graphed,
            direct,
            graphs,
        } = &mut *scratch;
        let need = Capacity::of(&plan.shape, chunks, cross_chunks);
        let cross_pool = cross.map(|c| c.kv);
        let set = if use_graph || graphed.as_ref().is_some_and(|s| s.bufs.cap.covers(&need)) {
            if self.ensure_buffers(graphed, need, || self.graph_capacity(kv, cross_pool))? {
                graphs.clear();
            }
            graphed
        } else {
            self.ensure_buffers(direct, need, || DIRECT_FLOOR)?;
            direct
        };
        let set = set.as_mut().expect("buffers ensured");
        if mode == OutputMode::SampledVerdict {
            set.bufs.ensure_q(&self.gpu, &self.config)?;
        }
        let bufs = &set.bufs;
        buffers::upload(&self.gpu, bufs, &plan, kv, cross_pool, &mut set.chunks)?;
        if mode == OutputMode::SampledVerdict {
            buffers::upload_sampling(&self.gpu, bufs, &plan.shape, batch, sample, head_rows)?;
        }
        let feature = match (&self.cross, glide) {
            (
                Some(CudaCross {
                    feature: Some(f), ..
                }),
                Some(g),
            ) => buffers::upload_features(
                &self.gpu,
                bufs,
                &self.config,
                plan.shape.rows,
                batch,
                g.features,
                f.chain_norm.is_some(),
            )?
            .map(|kinds| (f, kinds)),
            _ => None,
        };
        let launch = self.cross.as_ref().map(|x| CrossLaunch {
            kv: KvLayout {
                chunks: bufs.cross_chunk_table.ptr(),
                chunk_blocks: x.chunk_blocks,
                n_layers: x.n_layers,
                kv_dim: x.n_kv * x.head_dim,
            },
            layer: x.layer,
            n_heads: x.n_heads,
            n_kv: x.n_kv,
            head_dim: x.head_dim,
            interleaved: x.interleaved,
            cos_sin: x.cos_sin.ptr(),
        });
        let cos_sin = self.cos_sin.ptr();
        let make = || {
            CudaStep::new(
                &self.gpu,
                &self.config,
                bufs,
                plan.shape,
                chunk_blocks,
                cos_sin,
                head_rows,
                mode,
                launch,
            )
        };
        let body = |step: &mut CudaStep<'_>| match &self.cross {
            Some(c) => {
                step.embed(&self.weights.embed)?;
                if let Some((f, kinds)) = feature {
                    step.add_feature(f, kinds)?;
                }
                glide_layers(step, &self.weights, &c.layers)
            }
            None => run_layers(step, &self.weights),
        };
        let launches_before = self.gpu.launches();
        let timer = self
            .timer
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(t) = &timer {
            self.gpu.mark_start(t).map_err(gpu_err)?;
        }
        if use_graph {
            let graph = graphs.try_get_or_insert(
                (plan.shape, mode, head_rows, feature.map(|(_, kinds)| kinds)),
                || {
                    self.captures.fetch_add(1, Ordering::Relaxed);
                    self.gpu.capture(|| body(&mut make()))
                },
            )?;
            self.gpu.replay(graph).map_err(gpu_err)?;
            self.replays.fetch_add(1, Ordering::Relaxed);
        } else {
            body(&mut make())?;
            self.launches
                .fetch_add(self.gpu.launches() - launches_before, Ordering::Relaxed);
        }
        if let Some(t) = &timer {
            self.gpu.mark_end(t).map_err(gpu_err)?;
        }
        self.forwards.fetch_add(1, Ordering::Relaxed);
        self.host_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let out = buffers::read_out(&self.gpu, bufs, &plan, batch, mode, head_rows)?;
        if let Some(t) = &timer {
            let us = t.elapsed_us().map_err(gpu_err)?;
            self.gpu_ns.fetch_add((us * 1e3) as u64, Ordering::Relaxed);
        }
        let hidden = if keep_hidden {
            let h = self.config.hidden_size;
            let rows = buffers::read_head_input(&self.gpu, bufs, plan.logit_rows * h)?;
            Some(hidden_per_seq(&rows, h, batch))
        } else {
            None
        };
        Ok((out, hidden))
    }

    /// Makes `slot` hold buffers for a forward needing `need`: kept when they do, else grown
    /// to hold both (each count rounded up to a power of two), or, the first time, allocated
    /// for at least `floor()`. Returns whether it allocated new ones (graphs captured over the
    /// old ones must go).
    fn ensure_buffers(
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
    fn graph_capacity(&self, kv: &KvPool, cross: Option<&KvPool>) -> Capacity {
        let chunks = |p: &KvPool| p.gpu_blocks().map_or(1, GpuBlocks::max_chunks);
        let width = self.config.max_position_embeddings.div_ceil(BLOCK_SIZE);
        let shape = Shape::largest_graphed(width, cross.is_some());
        Capacity::of(&shape, chunks(kv), cross.map_or(0, chunks))
    }
}

/// Whether any part of `m` is stored in a quantized format.
fn is_quantized(m: &GpuMatrix) -> bool {
    m.parts.iter().any(|p| p.view.format != WeightFormat::Bf16)
}

/// The rotary table of `config`'s model on the GPU: (cos, sin) of every position and frequency,
/// `[max_position][head_dim / 2]`.
fn rope_table(gpu: &Gpu, config: &ModelConfig) -> Result<Buffer<f32>> {
    let half = config.head_dim / 2;
    let inv_freq = config.rope_inv_freq();
    let mut table = Vec::with_capacity(config.max_position_embeddings * half * 2);
    for p in 0..config.max_position_embeddings {
        for &f in &inv_freq {
            let a = p as f64 * f;
            table.push(a.cos() as f32);
            table.push(a.sin() as f32);
        }
    }
    gpu.upload(
        &table,
        "the rotary embedding table",
        "use a shorter context",
    )
    .map_err(gpu_err)
}
