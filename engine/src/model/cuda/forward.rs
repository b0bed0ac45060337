//! One forward of a batch: the buffers it takes and the metadata uploaded into them, the step
//! replayed from a captured graph or launched directly (timed when asked), and the outputs
//! read back.

use std::sync::atomic::Ordering;
use std::time::Instant;

use lru::LruCache;
use specd_kernels::cuda::{DevicePtr, Graph, KvLayout};

use super::buffers::{self, Buffers, Capacity};
use super::plan::{Plan, GRAPH_MAX_ROWS};
use super::scratch::{GraphKey, Scratch};
use super::step::{CrossLaunch, CudaStep};
use super::{gpu_err, CudaCross, CudaModel};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvPool};
use crate::model::glide::glide_layers;
use crate::model::llama::{
    hidden_per_seq, run_layers, ForwardOps, ForwardOut, GlideInput, HiddenRows, Logits, OutputMode,
    SeqInput, Top, Wanted,
};

/// Where a forward's token ids come from: the host's plan, or (the rounds of a GLIDE drafter's
/// drafts chained on the device) the picks an earlier forward left in a device buffer, one per
/// sequence, looked up in the drafter's id map.
#[derive(Debug, Clone, Copy)]
enum Ids {
    Planned,
    Picked(DevicePtr),
}

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
        let mode = wanted.mode;
        let keep_hidden = wanted.keep_hidden;
        self.open_gpu_span();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (bufs, plan) = self.enqueue(
            &mut scratch,
            kv,
            batch,
            wanted,
            head_rows,
            glide,
            Ids::Planned,
        )?;
        let out = buffers::read_out(&self.gpu, bufs, &plan, batch, mode, head_rows)?;
        self.add_gpu_time()?;
        let hidden = if keep_hidden {
            let h = self.config.hidden_size;
            let rows = buffers::read_head_input(&self.gpu, bufs, plan.logit_rows * h)?;
            Some(hidden_per_seq(&rows, h, batch))
        } else {
            None
        };
        Ok((out, hidden))
    }

    /// A GLIDE drafter's round of greedy drafts chained on the device: sequence `k` of `batch`
    /// is fed `counts[k]` rows (`counts` must not increase along the batch, so that each
    /// forward's sequences are the first ones of the forward before), one per forward: its one
    /// token first, then each time the token the forward before picked for it (its head's
    /// argmax, looked up in the drafter's id map), with no trip to the host until all are done.
    /// Returns each sequence's picks (rows of the drafter's head, `counts[k]` of them) with their
    /// probabilities; every row fed is in the drafter's cache. The picks are the ones forwards
    /// in [`OutputMode::Top`] give, fed one after another.
    pub(crate) fn draft_chain(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        counts: &[usize],
        head_rows: usize,
        glide: GlideInput<'_>,
    ) -> Result<Vec<Vec<Top>>> {
        if self.cross.is_none() {
            return Err(Error::InvalidRequest(
                "only a GLIDE drafter drafts a chained round".into(),
            ));
        }
        if batch
            .iter()
            .any(|s| s.tokens.len() != 1 || s.logits != Logits::Last)
            || counts.len() != batch.len()
            || counts.windows(2).any(|w| w[0] < w[1])
        {
            return Err(Error::InvalidRequest(
                "a chained round feeds one token a sequence, wants its row, and takes the \
                 sequences in order of the rows they are fed, most first"
                    .into(),
            ));
        }
        let seqs = batch.len();
        let n = counts.first().copied().unwrap_or(0);
        self.open_gpu_span();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // Each round's picks, `[round][sequence]`, out of the scratch while its buffers are used
        // (put back at the end; a failed round drops them).
        let picks = match scratch.picks.take() {
            Some(p) if p.0.len() >= n * seqs => p,
            _ => {
                let len = (n * seqs).next_power_of_two().max(64);
                let what = "a chained round's picks";
                let advice = "free GPU memory";
                (
                    self.gpu.alloc::<i32>(len, what, advice).map_err(gpu_err)?,
                    self.gpu.alloc::<f32>(len, what, advice).map_err(gpu_err)?,
                )
            }
        };
        // Later forwards' ids are written on the device; the plan's are placeholders.
        let placeholder = [0u32];
        for round in 0..n {
            // The sequences fed this round: the first `m`.
            let m = counts.iter().take_while(|&&c| c > round).count();
            for s in batch[..m].iter_mut() {
                kv.reserve(s.table, 1)?;
            }
            let mut inputs: Vec<SeqInput<'_>> = batch[..m]
                .iter_mut()
                .map(|s| SeqInput {
                    table: &mut *s.table,
                    tokens: if round == 0 { s.tokens } else { &placeholder },
                    logits: Logits::Last,
                })
                .collect();
            let ids = match round {
                0 => Ids::Planned,
                _ => Ids::Picked(picks.0.at((round - 1) * seqs)),
            };
            let wanted = Wanted {
                mode: OutputMode::Top,
                sample: &[],
                keep_hidden: false,
            };
            let cross = glide.cross.first(m);
            let g = GlideInput {
                cross: &cross,
                features: if round == 0 { glide.features } else { &[] },
            };
            let (bufs, _) = self.enqueue(
                &mut scratch,
                kv,
                &mut inputs,
                wanted,
                head_rows,
                Some(g),
                ids,
            )?;
            let (tok, prob) = (bufs.top_tok.ptr(), bufs.top_prob.ptr());
            self.gpu
                .copy(picks.0.at(round * seqs), tok, 4 * m)
                .map_err(gpu_err)?;
            self.gpu
                .copy(picks.1.at(round * seqs), prob, 4 * m)
                .map_err(gpu_err)?;
            for s in inputs.iter_mut() {
                kv.commit(s.table, 1);
            }
        }
        let tok: Vec<i32> = self.gpu.read(picks.0.ptr(), n * seqs).map_err(gpu_err)?;
        let prob: Vec<f32> = self.gpu.read(picks.1.ptr(), n * seqs).map_err(gpu_err)?;
        // The round's forwards, timed as one span (read here, not after each, so that they
        // stay queued back to back).
        self.add_gpu_time()?;
        scratch.picks = Some(picks);
        Ok(counts
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                (0..c)
                    .map(|r| Top {
                        token: tok[r * seqs + k] as u32,
                        prob: prob[r * seqs + k],
                    })
                    .collect()
            })
            .collect())
    }

    /// Enqueues one forward of `batch` on the stream (metadata uploaded, the step replayed
    /// from a graph or launched directly), its ids from `ids`; returns the buffers it wrote
    /// and its plan. Nothing waits for the GPU.
    #[allow(clippy::too_many_arguments)]
    fn enqueue<'s>(
        &self,
        scratch: &'s mut Scratch,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        wanted: Wanted<'_, '_>,
        head_rows: usize,
        glide: Option<GlideInput<'_>>,
        ids: Ids,
    ) -> Result<(&'s Buffers, Plan)> {
        let t0 = Instant::now();
        let Wanted { mode, sample, .. } = wanted;
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
        let need = Capacity::of(&plan.shape, chunks, cross_chunks);
        let cross_pool = cross.map(|c| c.kv);
        let (set, graphs) = scratch.set_for(self, need, use_graph, kv, cross_pool)?;
        if mode == OutputMode::SampledVerdict {
            set.bufs.ensure_q(&self.gpu, &self.config)?;
        }
        buffers::upload(&self.gpu, &set.bufs, &plan, kv, cross_pool, &mut set.chunks)?;
        let bufs = &set.bufs;
        if mode == OutputMode::SampledVerdict {
            buffers::upload_sampling(&self.gpu, bufs, &plan.shape, batch, sample, head_rows)?;
        }
        if let (Ids::Picked(picks), Some(c)) = (ids, &self.cross) {
            // The ids lead the metadata (`MetaPtrs::ids`); one row a sequence.
            self.gpu
                .lookup_ids(c.vocab_ids.ptr(), picks, plan.seqs, bufs.meta.ptr())
                .map_err(gpu_err)?;
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
        let key = use_graph.then(|| (plan.shape, mode, head_rows, feature.map(|(_, k)| k)));
        self.run_step(graphs, key, || body(&mut make()))?;
        self.host_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok((bufs, plan))
    }

    /// Runs a step's launches `launch`: replayed from the graph of `key` in `graphs` (captured
    /// the first time), or launched directly without a key; between timing events unless
    /// `SPECD_GPU_TIMING=0`.
    fn run_step(
        &self,
        graphs: &mut LruCache<GraphKey, Graph>,
        key: Option<GraphKey>,
        launch: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let launches_before = self.gpu.launches();
        let mut timer = self
            .timer
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(t) = timer.as_deref_mut().filter(|t| !t.open) {
            self.gpu.mark_start(&t.events).map_err(gpu_err)?;
            t.open = true;
        }
        if let Some(key) = key {
            let graph = graphs.try_get_or_insert(key, || {
                self.captures.fetch_add(1, Ordering::Relaxed);
                self.gpu.capture(&launch)
            })?;
            self.gpu.replay(graph).map_err(gpu_err)?;
            self.replays.fetch_add(1, Ordering::Relaxed);
        } else {
            launch()?;
            self.launches
                .fetch_add(self.gpu.launches() - launches_before, Ordering::Relaxed);
        }
        if let Some(t) = &timer {
            self.gpu.mark_end(&t.events).map_err(gpu_err)?;
        }
        self.forwards.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a new span of the timing events at the next forward (a span a failed forward
    /// left open is dropped unread).
    fn open_gpu_span(&self) {
        if let Some(t) = &self.timer {
            t.lock().unwrap_or_else(|e| e.into_inner()).open = false;
        }
    }

    /// Unless `SPECD_GPU_TIMING=0`, adds the GPU's time of the forwards enqueued since the
    /// span opened (waiting for them).
    fn add_gpu_time(&self) -> Result<()> {
        if let Some(t) = &self.timer {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            if !t.open {
                return Ok(());
            }
            t.open = false;
            let us = t.events.elapsed_us().map_err(gpu_err)?;
            self.gpu_ns.fetch_add((us * 1e3) as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}
