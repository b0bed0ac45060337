//! One forward on the GPU: the activation buffers, and the [`ForwardOps`] that launch the
//! kernels over them and the step's metadata (`plan.rs`). The operations only enqueue
//! launches on the stream (no copies, no waits), so a whole forward can be captured into a CUDA
//! graph and replayed: the graph's pointers stay valid because every buffer here lives as long
//! as the model's scratch.

use specd_kernels::cuda::{
    AttentionArgs, Buffer, DevicePtr, Gpu, KvLayout, MatmulArgs, RejectionArgs, RopeArgs,
};

use super::gpu_err;
use super::plan::{MetaPtrs, Plan, Shape};
use super::weights::GpuMatrix;
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::llama::{Act, ForwardOps, OutputMode, SampleInput, SeqInput};

/// Activation and output buffers, sized for `rows` token rows and `logit_rows` rows of logits.
#[derive(Debug)]
pub(super) struct Buffers {
    pub rows: usize,
    pub logit_rows: usize,
    pub seqs: usize,
    pub meta_ints: usize,
    pub chunks: usize,
    x: Buffer<f32>,
    normed: Buffer<u16>,
    qkv: Buffer<f32>,
    attn: Buffer<u16>,
    delta: Buffer<f32>,
    gate_up: Buffer<f32>,
    gated: Buffer<u16>,
    head_in: Buffer<u16>,
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
}

impl Buffers {
    /// Buffers for at least the given sizes.
    pub fn new(
        gpu: &Gpu,
        c: &ModelConfig,
        rows: usize,
        logit_rows: usize,
        seqs: usize,
        meta_ints: usize,
        chunks: usize,
    ) -> Result<Self> {
        let advice = "lower the batch (max_running, max_batch_tokens) or use a smaller model";
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let q_dim = c.num_heads * c.head_dim;
        let qkv_dim = q_dim + 2 * c.num_kv_heads * c.head_dim;
        macro_rules! alloc {
            ($t:ty, $n:expr, $what:expr) => {
                gpu.alloc::<$t>($n, $what, advice).map_err(gpu_err)?
            };
        }
        Ok(Self {
            rows,
            logit_rows,
            seqs,
            meta_ints,
            chunks,
            x: alloc!(f32, rows * h, "the residual stream"),
            normed: alloc!(u16, rows * h, "normed activations"),
            qkv: alloc!(f32, rows * qkv_dim, "queries, keys and values"),
            attn: alloc!(u16, rows * q_dim, "attention outputs"),
            delta: alloc!(f32, rows * h, "layer outputs"),
            gate_up: alloc!(f32, rows * 2 * inter, "MLP activations"),
            gated: alloc!(u16, rows * inter, "MLP activations"),
            head_in: alloc!(u16, logit_rows * h, "the head's input"),
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
        })
    }

    /// Allocates the draft-distribution buffer of sampled verification, if not yet there.
    pub fn ensure_q(&mut self, gpu: &Gpu, c: &ModelConfig) -> Result<()> {
        if self.q.is_none() {
            let advice = "lower the batch (max_running, max_batch_tokens) or use a smaller model";
            let q = gpu.alloc::<f32>(
                self.logit_rows * c.vocab_size,
                "draft distributions",
                advice,
            );
            self.q = Some(q.map_err(gpu_err)?);
        }
        Ok(())
    }

    /// Whether these buffers hold a forward of `shape` with `chunks` KV chunks.
    pub fn fits(&self, shape: &Shape, chunks: usize) -> bool {
        shape.rows <= self.rows
            && shape.logit_rows <= self.logit_rows
            && shape.seqs <= self.seqs
            && shape.ints() <= self.meta_ints
            && chunks.max(1) <= self.chunks
    }
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
            // A GLIDE drafter's queries: GLIDE runs on the CPU only so far (GlideModel refuses
            // a GPU target, and the GPU backend refuses cross-attention).
            Act::CrossQ => b.attn.ptr(),
        }
    }

    fn eps(&self) -> f32 {
        self.c.rms_norm_eps as f32
    }
}

/// Writes `y = x · Wᵀ + b` for `rows` rows, one launch per stored part of the matrix.
fn product(
    gpu: &Gpu,
    m: &GpuMatrix,
    x: DevicePtr,
    y: DevicePtr,
    rows: usize,
    head_rows: Option<usize>,
) -> Result<()> {
    let ldy = head_rows.unwrap_or(m.rows);
    for p in &m.parts {
        let mut w = p.view;
        if let Some(h) = head_rows {
            // Only the output columns below `h` are kept.
            if p.col >= h {
                continue;
            }
            w.rows = w.rows.min(h - p.col);
        }
        let bias = m.bias.as_ref().map_or(0, |b| b.at(p.col));
        gpu.matmul_rows(&MatmulArgs {
            w,
            x,
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
            self.act(x),
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
            b.head_in.ptr(),
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

/// Uploads the step's chunk table (when it changed) and metadata.
pub(super) fn upload(
    gpu: &Gpu,
    bufs: &Buffers,
    plan: &Plan,
    kv: &mut KvPool,
    last_chunks: &mut Vec<u64>,
) -> Result<()> {
    let blocks = kv.gpu_blocks().expect("a GPU pool (checked by the model)");
    let chunks = blocks.chunk_ptrs();
    if chunks != *last_chunks {
        gpu.write(&bufs.chunk_table, 0, &chunks).map_err(gpu_err)?;
        *last_chunks = chunks;
    }
    gpu.write(&bufs.meta, 0, &plan.meta).map_err(gpu_err)
}
