//! One forward on the GPU: the activation buffers, and the [`ForwardOps`] that launch the
//! kernels over them and the step's metadata (`plan.rs`); for a GLIDE drafter, also its
//! cross-attention over the target's pool. The operations only enqueue
//! launches on the stream (no copies, no waits), so a whole forward can be captured into a CUDA
//! graph and replayed: the graph's pointers stay valid because every buffer here lives as long
//! as the model's scratch.

use specd_kernels::cuda::{
    bf16_to_f32, q8_bytes, AttentionArgs, Buffer, DevicePtr, Gpu, KvLayout, MatmulArgs,
    RejectionArgs, RopeArgs,
};

use super::gpu_err;
use super::plan::{MetaPtrs, Plan, Shape};
use super::weights::{GpuFeature, GpuMatrix};
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::glide::{FeatureRow, FeatureSource};
use crate::model::llama::{Act, ForwardOps, OutputMode, SampleInput, SeqInput};

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
    x: Buffer<f32>,
    normed: Buffer<u16>,
    qkv: Buffer<f32>,
    attn: Buffer<u16>,
    delta: Buffer<f32>,
    gate_up: Buffer<f32>,
    gated: Buffer<u16>,
    head_in: Buffer<u16>,
    /// The 8-bit copy of a product's input, for the products that read one (Q4_K and Q6_K
    /// matrices;
    /// `Gpu::reads_q8`), made once per product for all its parts.
    xq: Buffer<u8>,
    pub logits: Buffer<f32>,
    pub top_tok: Buffer<i32>,
    pub top_prob: Buffer<f32>,
    argmax_scratch: Buffer<f32>,
    pub verdicts: Buffer<i32>,
    /// Sampled verification: the inverse temperature of each logit row, then `logit_rows`
    /// uniforms per sequence.
    sample: Buffer<f32>,
    /// Sampled verification: each sequence's first row in `q` (−1: one-hot drafts).
    qrow: Buffer<i32>,
    /// Sampled verification: the drafts' distributions, `[logit_rows, vocab]`, allocated by
    /// the first sampled verification.
    q: Option<Buffer<f32>>,
    pub meta: Buffer<i32>,
    pub chunk_table: Buffer<u64>,
    /// A GLIDE drafter's cross-attention queries, `[rows, cross_q_dim]`.
    cross_q: Buffer<f32>,
    /// A GLIDE drafter's feature input: the target's hidden row for each row that takes one,
    /// zeros elsewhere, `[rows, hidden]` (empty for other models).
    feature: Buffer<f32>,
    /// The same for the drafter's own rows, when its chained rows have their own norm
    /// (`chain_norm`; empty otherwise: they go into `feature`).
    feature_own: Buffer<f32>,
    /// The chunks of the target's pool the cross-attention reads.
    pub cross_chunk_table: Buffer<u64>,
}

/// Widths of a GLIDE drafter's own buffers (0 for other models).
#[derive(Debug, Clone, Copy)]
pub(super) struct ExtraWidths {
    /// Its cross-attention queries: the target's heads · head dimension.
    pub cross_q: usize,
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

/// What a GLIDE drafter's cross-attention launches with: the target's pool layout and layer,
/// its attention shape, and its rotary table.
#[derive(Debug, Clone, Copy)]
pub(super) struct CrossLaunch {
    pub kv: KvLayout,
    pub layer: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub interleaved: bool,
    /// (cos, sin) of the target's frequencies, `[max_position][head_dim / 2]`.
    pub cos_sin: DevicePtr,
}

/// The launches of one forward: [`ForwardOps`] over the buffers and the metadata.
pub(super) struct CudaStep<'a> {
    pub gpu: &'a Gpu,
    pub c: &'a ModelConfig,
    pub bufs: &'a Buffers,
    pub shape: Shape,
    pub kv: KvLayout,
    pub cos_sin: DevicePtr,
    pub head_rows: usize,
    pub mode: OutputMode,
    pub cross: Option<CrossLaunch>,
    meta: MetaPtrs,
}

impl<'a> CudaStep<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &'a Gpu,
        c: &'a ModelConfig,
        bufs: &'a Buffers,
        shape: Shape,
        chunk_blocks: usize,
        cos_sin: DevicePtr,
        head_rows: usize,
        mode: OutputMode,
        cross: Option<CrossLaunch>,
    ) -> Self {
        let kv = KvLayout {
            chunks: bufs.chunk_table.ptr(),
            chunk_blocks,
            n_layers: c.num_layers,
            kv_dim: c.num_kv_heads * c.head_dim,
        };
        Self {
            gpu,
            c,
            bufs,
            shape,
            kv,
            cos_sin,
            head_rows,
            mode,
            cross,
            meta: MetaPtrs::new(&bufs.meta, &shape),
        }
    }

    fn act(&self, a: Act) -> DevicePtr {
        let b = self.bufs;
        match a {
            Act::Normed => b.normed.ptr(),
            Act::Qkv => b.qkv.ptr(),
            Act::Attn => b.attn.ptr(),
            Act::Delta => b.delta.ptr(),
            Act::GateUp => b.gate_up.ptr(),
            Act::Gated => b.gated.ptr(),
            Act::CrossQ => b.cross_q.ptr(),
        }
    }

    fn eps(&self) -> f32 {
        self.c.rms_norm_eps as f32
    }
}

/// Writes `y = x · Wᵀ + b` for `rows` rows, one launch per stored part of the matrix; x is
/// quantized to 8 bits into `xq` once if any part's product reads that copy.
fn product(
    gpu: &Gpu,
    m: &GpuMatrix,
    (x, xq): (DevicePtr, DevicePtr),
    y: DevicePtr,
    rows: usize,
    head_rows: Option<usize>,
) -> Result<()> {
    let ldy = head_rows.unwrap_or(m.rows);
    let mut quantized = false;
    for p in &m.parts {
        let mut w = p.view;
        if let Some(h) = head_rows {
            // Only the output columns below `h` are kept.
            if p.col >= h {
                continue;
            }
            w.rows = w.rows.min(h - p.col);
        }
        if !quantized && gpu.reads_q8(&w, rows) {
            gpu.quantize_rows(x, rows, w.cols, xq).map_err(gpu_err)?;
            quantized = true;
        }
        let bias = m.bias.as_ref().map_or(0, |b| b.at(p.col));
        gpu.matmul_rows(&MatmulArgs {
            w,
            x,
            xq,
            xq_ready: quantized,
            y: y + (p.col * 4) as u64,
            bias,
            rows,
            ldy,
        })
        .map_err(gpu_err)?;
    }
    Ok(())
}

impl ForwardOps for CudaStep<'_> {
    type Matrix = GpuMatrix;
    type Vector = Buffer<f32>;

    fn embed(&mut self, table: &GpuMatrix) -> Result<()> {
        let view = table.parts[0].view;
        self.gpu
            .embed_rows(&view, self.meta.ids, self.shape.rows, self.bufs.x.ptr())
            .map_err(gpu_err)
    }

    fn add_rms_norm(&mut self, add: bool, weight: &Buffer<f32>) -> Result<()> {
        let delta = if add { self.bufs.delta.ptr() } else { 0 };
        self.gpu
            .add_rms_norm(
                self.bufs.x.ptr(),
                delta,
                weight.ptr(),
                self.eps(),
                self.bufs.normed.ptr(),
                self.c.hidden_size,
                self.shape.rows,
            )
            .map_err(gpu_err)
    }

    fn linear(&mut self, m: &GpuMatrix, x: Act, out: Act) -> Result<()> {
        product(
            self.gpu,
            m,
            (self.act(x), self.bufs.xq.ptr()),
            self.act(out),
            self.shape.rows,
            None,
        )
    }

    fn rope_write_kv(&mut self, layer: usize) -> Result<()> {
        let c = self.c;
        self.gpu
            .rope_store_kv(&RopeArgs {
                qkv: self.bufs.qkv.ptr(),
                rows: self.shape.rows,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                cos_sin: self.cos_sin,
                pos: self.meta.pos,
                slot: self.meta.slot,
                interleaved: c.rope_layout == RopeLayout::Interleaved,
                kv: self.kv,
                layer,
            })
            .map_err(gpu_err)
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        let c = self.c;
        let q_dim = c.num_heads * c.head_dim;
        self.gpu
            .paged_attention(&AttentionArgs {
                q: self.bufs.qkv.ptr(),
                q_stride: q_dim + 2 * c.num_kv_heads * c.head_dim,
                kv: self.kv,
                layer,
                row_seq: self.meta.row_seq,
                row_kv_len: self.meta.row_len,
                tables: self.meta.tables,
                table_width: self.shape.width,
                rows: self.shape.rows,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                window: c.sliding_window.unwrap_or(0),
                out: self.bufs.attn.ptr(),
            })
            .map_err(gpu_err)
    }

    fn silu_mul(&mut self) -> Result<()> {
        // A separate launch: fusing it into the down projection's input load cost more than it
        // saved (every CTA recomputes the SwiGLU of the whole row; BENCHMARKS.md, GPU run 2).
        self.gpu
            .silu_mul(
                self.bufs.gate_up.ptr(),
                self.bufs.gated.ptr(),
                self.c.intermediate_size,
                self.shape.rows,
            )
            .map_err(gpu_err)
    }

    fn cross_attention(&mut self) -> Result<()> {
        let x = self.cross.ok_or_else(|| {
            crate::error::Error::InvalidRequest(
                "cross-attention without a target to read (not a GLIDE forward)".into(),
            )
        })?;
        let q = self.bufs.cross_q.ptr();
        // The queries rotated at their rows' positions with the target's frequencies: the rope
        // kernel with no key heads rotates the query heads only and writes no cache.
        self.gpu
            .rope_store_kv(&RopeArgs {
                qkv: q,
                rows: self.shape.rows,
                n_heads: x.n_heads,
                n_kv: 0,
                head_dim: x.head_dim,
                cos_sin: x.cos_sin,
                pos: self.meta.pos,
                slot: self.meta.slot,
                interleaved: x.interleaved,
                kv: x.kv,
                layer: x.layer,
            })
            .map_err(gpu_err)?;
        // Each row over the target positions it sees (none: zeros).
        self.gpu
            .paged_attention(&AttentionArgs {
                q,
                q_stride: x.n_heads * x.head_dim,
                kv: x.kv,
                layer: x.layer,
                row_seq: self.meta.row_seq,
                row_kv_len: self.meta.cross_len,
                tables: self.meta.cross_tables,
                table_width: self.shape.cross_width,
                rows: self.shape.rows,
                n_heads: x.n_heads,
                n_kv: x.n_kv,
                head_dim: x.head_dim,
                scale: 1.0 / (x.head_dim as f32).sqrt(),
                window: 0,
                out: self.bufs.attn.ptr(),
            })
            .map_err(gpu_err)
    }

    fn head(&mut self, norm: &Buffer<f32>, head: &GpuMatrix) -> Result<()> {
        let (gpu, b, s) = (self.gpu, self.bufs, self.shape);
        if s.logit_rows == 0 {
            return Ok(());
        }
        let h = self.c.hidden_size;
        gpu.add_rms_norm(
            b.x.ptr(),
            b.delta.ptr(),
            norm.ptr(),
            self.eps(),
            b.normed.ptr(),
            h,
            s.rows,
        )
        .map_err(gpu_err)?;
        gpu.gather_rows(
            b.normed.ptr(),
            self.meta.sel,
            h,
            s.logit_rows,
            b.head_in.ptr(),
        )
        .map_err(gpu_err)?;
        product(
            gpu,
            head,
            (b.head_in.ptr(), b.xq.ptr()),
            b.logits.ptr(),
            s.logit_rows,
            Some(self.head_rows),
        )?;
        match self.mode {
            OutputMode::Logits => Ok(()),
            OutputMode::SampledVerdict => self.rejection_sample(),
            OutputMode::Top | OutputMode::GreedyVerdict => self.argmax(),
        }
    }
}

impl CudaStep<'_> {
    /// Adds a GLIDE drafter's feature to the residual stream after the embedding:
    /// `x += proj · rms_norm(feature input)` (rows whose input is zeros get exactly zero), for
    /// the uploaded rows `kinds` names: the shared input with the feature's norm, then the
    /// drafter's own rows with the chained rows' norm (a row is in one input at most, so the
    /// other adds exactly zero to it).
    pub fn add_feature(&mut self, f: &GpuFeature, kinds: FeatureKinds) -> Result<()> {
        let b = self.bufs;
        if kinds.shared {
            self.add_feature_from(b.feature.ptr(), f.norm.ptr(), f)?;
        }
        if let (true, Some(chain)) = (kinds.own, &f.chain_norm) {
            self.add_feature_from(b.feature_own.ptr(), chain.ptr(), f)?;
        }
        Ok(())
    }

    /// `x += proj · rms_norm(input, norm)`. The addition goes through the norm kernel, whose
    /// normed output layer 0 then overwrites.
    fn add_feature_from(
        &mut self,
        input: DevicePtr,
        norm: DevicePtr,
        f: &GpuFeature,
    ) -> Result<()> {
        let (gpu, b, rows) = (self.gpu, self.bufs, self.shape.rows);
        let h = self.c.hidden_size;
        let eps = self.eps();
        gpu.add_rms_norm(input, 0, norm, eps, b.normed.ptr(), h, rows)
            .map_err(gpu_err)?;
        product(
            gpu,
            &f.proj,
            (b.normed.ptr(), b.xq.ptr()),
            b.delta.ptr(),
            rows,
            None,
        )?;
        gpu.add_rms_norm(b.x.ptr(), b.delta.ptr(), norm, eps, b.normed.ptr(), h, rows)
            .map_err(gpu_err)
    }

    /// Argmax of every logit row, then (greedy verification) acceptance.
    fn argmax(&mut self) -> Result<()> {
        let (gpu, b, s) = (self.gpu, self.bufs, self.shape);
        gpu.argmax_rows(
            b.logits.ptr(),
            self.head_rows,
            self.head_rows,
            s.logit_rows,
            b.top_tok.ptr(),
            b.top_prob.ptr(),
            b.argmax_scratch.ptr(),
        )
        .map_err(gpu_err)?;
        if self.mode == OutputMode::GreedyVerdict {
            gpu.accept_greedy(
                b.top_tok.ptr(),
                self.meta.ids,
                self.meta.first,
                self.meta.n,
                s.seqs,
                b.verdicts.ptr(),
            )
            .map_err(gpu_err)?;
        }
        Ok(())
    }

    /// Softmax of every logit row at its sequence's temperature (in place), then rejection
    /// sampling of each sequence's drafts.
    fn rejection_sample(&mut self) -> Result<()> {
        let (gpu, b, s) = (self.gpu, self.bufs, self.shape);
        let v = self.head_rows;
        let logits = b.logits.ptr();
        gpu.softmax_rows(logits, v, v, b.sample.ptr(), s.logit_rows, logits)
            .map_err(gpu_err)?;
        gpu.rejection_sample(&RejectionArgs {
            p: logits,
            vocab: v,
            q: b.q.as_ref().map_or(0, Buffer::ptr),
            ids: self.meta.ids,
            first: self.meta.first,
            n: self.meta.n,
            qrow: b.qrow.ptr(),
            u: b.sample.at(s.logit_rows),
            ustride: s.logit_rows,
            seqs: s.seqs,
            out: b.verdicts.ptr(),
        })
        .map_err(gpu_err)
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
