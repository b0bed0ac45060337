//! One forward of a batch: the buffers it takes and the metadata uploaded into them, the step
//! replayed from a captured graph or launched directly (timed when asked), and the outputs
//! read back.

use std::sync::atomic::Ordering;
use std::time::Instant;

use specd_kernels::cuda::KvLayout;

use super::buffers::{self, Capacity};
use super::plan::{Plan, GRAPH_MAX_ROWS};
use super::scratch::{Scratch, DIRECT_FLOOR};
use super::step::{CrossLaunch, CudaStep};
use super::{gpu_err, CudaCross, CudaModel};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvPool};
use crate::model::glide::glide_layers;
use crate::model::llama::{
    hidden_per_seq, run_layers, ForwardOps, ForwardOut, GlideInput, HiddenRows, OutputMode,
    SeqInput, Wanted,
};

impl CudaModel {
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
}
