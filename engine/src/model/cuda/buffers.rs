//! A forward's device buffers (activations, outputs, metadata, scratch), sized by a
//! [`Capacity`], and what goes in and out of them around a step: the metadata and sampling
//! inputs uploaded before it, the outputs read back after.

use std::sync::LazyLock;

use candle_core::Tensor;
use specd_kernels::cuda::{q8_bytes, AttentionScratch, Buffer, Gpu};

use super::gpu_err;
use super::plan::{Plan, Shape};
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::config::ModelConfig;
use crate::model::glide::{FeatureRow, FeatureSource};
use crate::model::llama::{ForwardOut, OutputMode, SampleInput, SeqInput, Top};
use specd_kernels::cuda::bf16_to_f32;

/// What a set of [`Buffers`] holds at most.
#[derive(Debug, Clone, Copy)]
pub(super) struct Capacity {
    /// Token rows.
    pub rows: usize,
    /// Rows of logits.
    pub logit_rows: usize,
    pub seqs: usize,
    /// i32 values of metadata.
    pub meta_ints: usize,
    /// KV chunks of the model's own pool.
    pub chunks: usize,
    /// KV chunks of the target's pool a GLIDE drafter reads.
    pub cross_chunks: usize,
}

impl Capacity {
    /// What a forward of `shape` needs, reading `chunks` KV chunks of its own pool and
    /// `cross_chunks` of the target's.
    pub fn of(shape: &Shape, chunks: usize, cross_chunks: usize) -> Self {
        Self {
            rows: shape.rows,
            logit_rows: shape.logit_rows,
            seqs: shape.seqs,
            meta_ints: shape.ints(),
            chunks: chunks.max(1),
            cross_chunks: cross_chunks.max(1),
        }
    }

    /// Whether buffers of this capacity hold a forward needing `need`.
    pub fn covers(&self, need: &Capacity) -> bool {
        need.rows <= self.rows
            && need.logit_rows <= self.logit_rows
            && need.seqs <= self.seqs
            && need.meta_ints <= self.meta_ints
            && need.chunks <= self.chunks
            && need.cross_chunks <= self.cross_chunks
    }

    /// Each count the larger of `self`'s and `other`'s, rounded up to a power of two (buffers
    /// grow by doubling, so that a server's growing batches and contexts reallocate rarely).
    pub fn max(self, other: Capacity) -> Capacity {
        let m = |a: usize, b: usize| a.max(b).next_power_of_two();
        Capacity {
            rows: m(self.rows, other.rows),
            logit_rows: m(self.logit_rows, other.logit_rows),
            seqs: m(self.seqs, other.seqs),
            meta_ints: m(self.meta_ints, other.meta_ints),
            chunks: m(self.chunks, other.chunks),
            cross_chunks: m(self.cross_chunks, other.cross_chunks),
        }
    }
}

/// Activation and output buffers, sized for `cap.rows` token rows and `cap.logit_rows` rows
/// of logits.
#[derive(Debug)]
pub(super) struct Buffers {
    pub cap: Capacity,
    pub x: Buffer<f32>,
    pub normed: Buffer<u16>,
    pub qkv: Buffer<f32>,
    pub attn: Buffer<u16>,
    pub delta: Buffer<f32>,
    pub gate_up: Buffer<f32>,
    pub gated: Buffer<u16>,
    pub head_in: Buffer<u16>,
    /// The 8-bit copy of a product's input, for the products that read one (Q4_K and Q6_K
    /// matrices;
    /// `Gpu::reads_q8`), made once per product for all its parts.
    pub xq: Buffer<u8>,
    pub logits: Buffer<f32>,
    pub top_tok: Buffer<i32>,
    pub top_prob: Buffer<f32>,
    pub argmax_scratch: Buffer<f32>,
    pub verdicts: Buffer<i32>,
    /// Sampled verification: the inverse temperature of each logit row, then `logit_rows`
    /// uniforms per sequence.
    pub sample: Buffer<f32>,
    /// Sampled verification: each sequence's first row in `q` (−1: one-hot drafts).
    pub qrow: Buffer<i32>,
    /// Sampled verification: the drafts' distributions, `[logit_rows, vocab]`, allocated by
    /// the first sampled verification.
    pub q: Option<Buffer<f32>>,
    /// Attention rows split over several CTAs: their partial results and counters.
    pub attn_partials: Buffer<f32>,
    pub attn_counters: Buffer<u32>,
    pub meta: Buffer<i32>,
    pub chunk_table: Buffer<u64>,
    /// A GLIDE drafter's cross-attention queries, `[rows, cross_q_dim]`.
    pub cross_q: Buffer<f32>,
    /// A GLIDE drafter's feature input: the target's hidden row for each row that takes one,
    /// zeros elsewhere, `[rows, hidden]` (empty for other models).
    pub feature: Buffer<f32>,
    /// The same for the drafter's own rows, when its chained rows have their own norm
    /// (`chain_norm`; empty otherwise: they go into `feature`).
    pub feature_own: Buffer<f32>,
    /// The chunks of the target's pool the cross-attention reads.
    pub cross_chunk_table: Buffer<u64>,
}

/// Widths of a GLIDE drafter's own buffers (0 for other models).
#[derive(Debug, Clone, Copy)]
pub(super) struct ExtraWidths {
    /// Its cross-attention queries: the target's heads · head dimension.
    pub cross_q: usize,
    /// The target's heads its cross-attention reads with.
    pub cross_heads: usize,
    /// Its feature's input rows: the hidden size, for a drafter with a feature.
    pub feature: usize,
    /// Its own rows' feature input: the hidden size, for a drafter whose chained rows have
    /// their own norm.
    pub feature_own: usize,
}

impl Buffers {
    /// Buffers for at least `cap`, and a GLIDE drafter's of `extra` widths.
    pub fn new(gpu: &Gpu, c: &ModelConfig, extra: ExtraWidths, cap: Capacity) -> Result<Self> {
        let cross_q_dim = extra.cross_q;
        let advice = "lower the batch (max_running, max_batch_tokens) or use a smaller model";
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let q_dim = c.num_heads * c.head_dim;
        let qkv_dim = q_dim + 2 * c.num_kv_heads * c.head_dim;
        let Capacity {
            rows,
            logit_rows,
            seqs,
            meta_ints,
            chunks,
            cross_chunks,
        } = cap;
        // Self-attention's heads, or the cross-attention's over the target's, whichever
        // needs more scratch.
        let heads = c.num_heads.max(extra.cross_heads);
        let head_dim = c
            .head_dim
            .max(cross_q_dim.checked_div(extra.cross_heads).unwrap_or(0));
        macro_rules! alloc {
            ($t:ty, $n:expr, $what:expr) => {
                gpu.alloc::<$t>($n, $what, advice).map_err(gpu_err)?
            };
        }
        Ok(Self {
            cap,
            x: alloc!(f32, rows * h, "the residual stream"),
            normed: alloc!(u16, rows * h, "normed activations"),
            qkv: alloc!(f32, rows * qkv_dim, "queries, keys and values"),
            // Self- and cross-attention outputs share it.
            attn: alloc!(u16, rows * q_dim.max(cross_q_dim), "attention outputs"),
            delta: alloc!(f32, rows * h, "layer outputs"),
            gate_up: alloc!(f32, rows * 2 * inter, "MLP activations"),
            gated: alloc!(u16, rows * inter, "MLP activations"),
            head_in: alloc!(u16, logit_rows * h, "the head's input"),
            xq: alloc!(
                u8,
                q8_bytes(
                    rows.max(logit_rows),
                    h.max(inter).max(q_dim).max(cross_q_dim)
                ),
                "8-bit activations"
            ),
            logits: alloc!(f32, logit_rows * c.vocab_size, "logits"),
            top_tok: alloc!(i32, logit_rows, "argmax tokens"),
            top_prob: alloc!(f32, logit_rows, "argmax probabilities"),
            argmax_scratch: alloc!(
                f32,
                Gpu::argmax_scratch_floats(c.vocab_size, logit_rows),
                "argmax partial results"
            ),
            verdicts: alloc!(i32, 2 * seqs, "acceptance results"),
            sample: alloc!(f32, logit_rows * (1 + seqs), "sampling inputs"),
            qrow: alloc!(i32, seqs, "sampling inputs"),
            q: None,
            attn_partials: alloc!(
                f32,
                AttentionScratch::floats(rows, heads, head_dim),
                "attention's partial results"
            ),
            attn_counters: alloc!(
                u32,
                AttentionScratch::counters(rows, heads),
                "attention's split counters"
            ),
            meta: alloc!(i32, meta_ints, "step metadata"),
            chunk_table: alloc!(u64, chunks.max(1), "the KV chunk table"),
            cross_q: alloc!(f32, rows * cross_q_dim, "cross-attention queries"),
            feature: alloc!(f32, rows * extra.feature, "the GLIDE feature's input"),
            feature_own: alloc!(
                f32,
                rows * extra.feature_own,
                "the GLIDE chained rows' input"
            ),
            cross_chunk_table: alloc!(u64, cross_chunks.max(1), "the target's KV chunk table"),
        })
    }

    /// Where attention rows split over several CTAs put their partial results: `None` with
    /// `SPECD_ATTENTION_SPLIT_CTAS=0`, which keeps a row's splits in one CTA (the same
    /// result, more latency: for comparisons).
    pub fn attention_scratch(&self) -> Option<AttentionScratch> {
        static SPLIT_CTAS: LazyLock<bool> = LazyLock::new(|| {
            std::env::var("SPECD_ATTENTION_SPLIT_CTAS").map_or(true, |v| v != "0")
        });
        SPLIT_CTAS.then(|| AttentionScratch {
            partials: self.attn_partials.ptr(),
            partial_floats: self.attn_partials.len(),
            counters: self.attn_counters.ptr(),
            counter_len: self.attn_counters.len(),
        })
    }

    /// Allocates the draft-distribution buffer of sampled verification, if not yet there.
    pub fn ensure_q(&mut self, gpu: &Gpu, c: &ModelConfig) -> Result<()> {
        if self.q.is_none() {
            let advice = "lower the batch (max_running, max_batch_tokens) or use a smaller model";
            let q = gpu.alloc::<f32>(
                self.cap.logit_rows * c.vocab_size,
                "draft distributions",
                advice,
            );
            self.q = Some(q.map_err(gpu_err)?);
        }
        Ok(())
    }
}

/// Uploads what sampled verification needs beyond the metadata: each logit row's inverse
/// temperature, each sequence's uniforms, and the draft distributions (rows of `vocab`, cut or
/// padded with zeros). Padding rows and sequences get temperature 1 and one-hot drafts.
pub(super) fn upload_sampling(
    gpu: &Gpu,
    bufs: &Buffers,
    shape: &Shape,
    batch: &[SeqInput<'_>],
    sample: &[SampleInput<'_>],
    vocab: usize,
) -> Result<()> {
    let lr = shape.logit_rows;
    let mut f = vec![0f32; lr * (1 + shape.seqs)];
    f[..lr].fill(1.0);
    let mut qrow = vec![-1i32; shape.seqs];
    let mut q: Vec<f32> = Vec::new();
    let mut row = 0;
    for (si, (s, x)) in batch.iter().zip(sample).enumerate() {
        let n = s.tokens.len();
        f[row..row + n].fill(x.inv_temp);
        f[lr * (1 + si)..][..n].copy_from_slice(&x.u);
        if let Some(rows) = x.q {
            qrow[si] = (q.len() / vocab) as i32;
            for r in rows {
                let kept = r.len().min(vocab);
                q.extend_from_slice(&r[..kept]);
                q.resize(q.len() + vocab - kept, 0.0);
            }
        }
        row += n;
    }
    gpu.write(&bufs.sample, 0, &f).map_err(gpu_err)?;
    gpu.write(&bufs.qrow, 0, &qrow).map_err(gpu_err)?;
    if let Some(qb) = &bufs.q {
        gpu.write(qb, 0, &q).map_err(gpu_err)?;
    }
    Ok(())
}

/// Which feature inputs a step uploaded: the shared one (the target's rows, and the drafter's
/// own where they share the feature's norm) and the drafter's own rows (when its chained rows
/// have their own norm). Part of a captured graph's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FeatureKinds {
    pub shared: bool,
    pub own: bool,
}

/// Uploads a GLIDE drafter's feature input for `rows` rows (padding included): sequence `i`'s
/// row at `features[i]`'s position, if among its new tokens, gets that hidden row, the others
/// zeros (which the feature maps to zeros: [`CudaStep::add_feature`]); the drafter's own rows
/// go to their own input when `own_norm` (its chained rows have their own norm). Uploads
/// nothing and returns `None` when no row takes one.
pub(super) fn upload_features(
    gpu: &Gpu,
    bufs: &Buffers,
    c: &ModelConfig,
    rows: usize,
    batch: &[SeqInput<'_>],
    features: &[Option<FeatureRow<'_>>],
    own_norm: bool,
) -> Result<Option<FeatureKinds>> {
    let h = c.hidden_size;
    let (mut shared, mut own): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let mut row0 = 0;
    for (s, f) in batch.iter().zip(features) {
        let (start, n) = (s.table.len(), s.tokens.len());
        if let Some(f) = f.filter(|f| (start..start + n).contains(&f.position)) {
            let input = match f.source {
                FeatureSource::Drafter if own_norm => &mut own,
                _ => &mut shared,
            };
            input.resize(rows * h, 0.0);
            let r = row0 + f.position - start;
            input[r * h..(r + 1) * h].copy_from_slice(f.hidden);
        }
        row0 += n;
    }
    let kinds = FeatureKinds {
        shared: !shared.is_empty(),
        own: !own.is_empty(),
    };
    for (input, buf) in [(&shared, &bufs.feature), (&own, &bufs.feature_own)] {
        if !input.is_empty() {
            gpu.write(buf, 0, input).map_err(gpu_err)?;
        }
    }
    Ok((kinds.shared || kinds.own).then_some(kinds))
}

/// The first `n` values of the head's input (the final normed rows it read, bf16), as f32.
pub(super) fn read_head_input(gpu: &Gpu, bufs: &Buffers, n: usize) -> Result<Vec<f32>> {
    let raw: Vec<u16> = gpu.read(bufs.head_in.ptr(), n).map_err(gpu_err)?;
    Ok(raw.into_iter().map(bf16_to_f32).collect())
}

/// The chunk tables last uploaded (rewritten only when a pool grew or another pool is read).
#[derive(Debug, Default)]
pub(super) struct UploadedChunks {
    pub own: Vec<u64>,
    pub cross: Vec<u64>,
}

/// Uploads the step's chunk tables (when they changed) and metadata; `cross` is the target's
/// pool a GLIDE drafter reads.
pub(super) fn upload(
    gpu: &Gpu,
    bufs: &Buffers,
    plan: &Plan,
    kv: &KvPool,
    cross: Option<&KvPool>,
    last: &mut UploadedChunks,
) -> Result<()> {
    let tables = [
        (Some(kv), &bufs.chunk_table, &mut last.own),
        (cross, &bufs.cross_chunk_table, &mut last.cross),
    ];
    for (pool, buf, last) in tables {
        let Some(pool) = pool else { continue };
        let blocks = pool
            .gpu_blocks()
            .expect("a GPU pool (checked by the model)");
        let chunks = blocks.chunk_ptrs();
        if chunks != *last {
            gpu.write(buf, 0, &chunks).map_err(gpu_err)?;
            *last = chunks;
        }
    }
    gpu.write(&bufs.meta, 0, &plan.meta).map_err(gpu_err)
}

/// Where each sequence's wanted rows lie among a forward's output rows, in batch order.
fn row_ranges<'b>(batch: &'b [SeqInput<'_>]) -> impl Iterator<Item = std::ops::Range<usize>> + 'b {
    batch.iter().scan(0, |next, s| {
        let start = *next;
        *next += s.logits.rows(s.tokens.len());
        Some(start..*next)
    })
}

/// What `mode` asked of a forward, read back from `bufs`: each sequence's logits rows, argmax
/// tokens or verdict.
pub(super) fn read_out(
    gpu: &Gpu,
    bufs: &Buffers,
    plan: &Plan,
    batch: &[SeqInput<'_>],
    mode: OutputMode,
    head_rows: usize,
) -> Result<ForwardOut> {
    match mode {
        OutputMode::Logits => {
            let all: Vec<f32> = gpu
                .read(bufs.logits.ptr(), plan.logit_rows * head_rows)
                .map_err(gpu_err)?;
            let out = row_ranges(batch)
                .map(|r| {
                    let rows = all[r.start * head_rows..r.end * head_rows].to_vec();
                    Tensor::from_vec(rows, (r.len(), head_rows), &candle_core::Device::Cpu)
                })
                .collect::<std::result::Result<_, _>>()?;
            Ok(ForwardOut::Logits(out))
        }
        OutputMode::Argmax => {
            let tok: Vec<i32> = gpu
                .read(bufs.top_tok.ptr(), plan.logit_rows)
                .map_err(gpu_err)?;
            let out = row_ranges(batch)
                .map(|r| tok[r].iter().map(|&t| t as u32).collect())
                .collect();
            Ok(ForwardOut::Tokens(out))
        }
        OutputMode::Top => {
            let tok: Vec<i32> = gpu
                .read(bufs.top_tok.ptr(), plan.logit_rows)
                .map_err(gpu_err)?;
            let prob: Vec<f32> = gpu
                .read(bufs.top_prob.ptr(), plan.logit_rows)
                .map_err(gpu_err)?;
            let out = row_ranges(batch)
                .map(|r| {
                    r.map(|i| Top {
                        token: tok[i] as u32,
                        prob: prob[i],
                    })
                    .collect()
                })
                .collect();
            Ok(ForwardOut::Top(out))
        }
        OutputMode::GreedyVerdict | OutputMode::SampledVerdict => {
            let v: Vec<i32> = gpu
                .read(bufs.verdicts.ptr(), 2 * plan.seqs)
                .map_err(gpu_err)?;
            Ok(ForwardOut::Verdicts(
                v.chunks_exact(2)
                    .map(|p| (p[0] as usize, p[1] as u32))
                    .collect(),
            ))
        }
    }
}
