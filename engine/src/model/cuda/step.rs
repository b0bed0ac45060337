//! One forward on the GPU: the step's metadata (token ids, positions, KV slots, block tables,
//! wanted rows) laid out for the kernels, the activation buffers, and the [`ForwardOps`] that
//! launch the kernels. The operations only enqueue launches on the stream (no copies, no
//! waits), so a whole forward can be captured into a CUDA graph and replayed: the graph's
//! pointers stay valid because every buffer here lives as long as the model's scratch.

use specd_kernels::cuda::{AttentionArgs, Buffer, DevicePtr, Gpu, KvLayout, MatmulArgs, RopeArgs};

use super::gpu_err;
use super::weights::GpuMatrix;
use crate::error::Result;
use crate::kv::{KvPool, BLOCK_SIZE};
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::llama::{Act, ForwardOps, Logits, OutputMode, SeqInput};

/// Rows (and wanted logit rows) a captured graph covers at most; larger forwards (long prompt
/// chunks) launch their kernels directly.
pub(super) const GRAPH_MAX_ROWS: usize = 256;

/// The padded sizes of a forward: what its kernels are launched for. Graphs are captured per
/// shape; rows past the real ones are padding that writes nowhere it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// Token rows.
    pub rows: usize,
    /// Rows of logits.
    pub logit_rows: usize,
    /// Sequences.
    pub seqs: usize,
    /// Block-table entries per sequence.
    pub width: usize,
}

/// A count rounded up to the sizes graphs are captured for: exact up to 16, then steps of a
/// quarter of a power of two.
fn bucket(n: usize) -> usize {
    if n <= 16 {
        return n;
    }
    let p = n.next_power_of_two();
    let step = p / 8;
    n.div_ceil(step) * step
}

impl Shape {
    /// The exact shape, or (for graphs) the bucketed one.
    fn of(rows: usize, logit_rows: usize, seqs: usize, width: usize, padded: bool) -> Self {
        if !padded {
            return Self {
                rows,
                logit_rows,
                seqs,
                width: width.max(1),
            };
        }
        Self {
            rows: bucket(rows),
            logit_rows: bucket(logit_rows),
            seqs: bucket(seqs),
            width: width.max(4).next_power_of_two(),
        }
    }

    /// i32 values of the metadata: ids, positions, slots, row sequences, row lengths (one
    /// each per row), selected rows, sequence first rows and row counts, block tables.
    pub fn ints(&self) -> usize {
        5 * self.rows + self.logit_rows + 2 * self.seqs + self.seqs * self.width
    }

    fn offsets(&self) -> [usize; 9] {
        let r = self.rows;
        let sel = 5 * r;
        let first = sel + self.logit_rows;
        let n = first + self.seqs;
        [0, r, 2 * r, 3 * r, 4 * r, sel, first, n, n + self.seqs]
    }
}

/// The host side of a forward's metadata.
#[derive(Debug)]
pub(super) struct Plan {
    pub shape: Shape,
    /// Real wanted rows and sequences.
    pub logit_rows: usize,
    pub seqs: usize,
    pub meta: Vec<i32>,
}

impl Plan {
    /// Lays out `batch` (slots already reserved in `kv`'s tables).
    pub fn new(batch: &[SeqInput<'_>], padded: bool) -> Self {
        let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let logit_rows: usize = batch.iter().map(|s| s.logits.rows(s.tokens.len())).sum();
        let width = batch
            .iter()
            .map(|s| s.table.blocks().len())
            .max()
            .unwrap_or(1);
        let shape = Shape::of(rows, logit_rows, batch.len(), width, padded);
        let mut meta = vec![0i32; shape.ints()];
        let o = shape.offsets();
        let (mut row, mut sel) = (0, 0);
        for (si, s) in batch.iter().enumerate() {
            let start = s.table.len();
            let blocks = s.table.blocks();
            meta[o[6] + si] = row as i32;
            meta[o[7] + si] = s.tokens.len() as i32;
            for (j, &b) in blocks.iter().enumerate() {
                meta[o[8] + si * shape.width + j] = b as i32;
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                let p = start + i;
                meta[o[0] + row] = t as i32;
                meta[o[1] + row] = p as i32;
                meta[o[2] + row] =
                    (blocks[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE) as i32;
                meta[o[3] + row] = si as i32;
                meta[o[4] + row] = (p + 1) as i32;
                let wanted = match s.logits {
                    Logits::All => true,
                    Logits::Last => i + 1 == s.tokens.len(),
                    Logits::None => false,
                };
                if wanted {
                    meta[o[5] + sel] = row as i32;
                    sel += 1;
                }
                row += 1;
            }
        }
        // Padding rows write no KV and attend to nothing; padding sequences own one row.
        for r in rows..shape.rows {
            meta[o[2] + r] = -1;
            meta[o[3] + r] = -1;
        }
        for si in batch.len()..shape.seqs {
            meta[o[7] + si] = 1;
        }
        Self {
            shape,
            logit_rows,
            seqs: batch.len(),
            meta,
        }
    }
}

/// Device addresses of the metadata sections of a shape in the `meta` buffer.
#[derive(Debug, Clone, Copy)]
struct MetaPtrs {
    ids: DevicePtr,
    pos: DevicePtr,
    slot: DevicePtr,
    row_seq: DevicePtr,
    row_len: DevicePtr,
    sel: DevicePtr,
    first: DevicePtr,
    n: DevicePtr,
    tables: DevicePtr,
}

impl MetaPtrs {
    fn new(meta: &Buffer<i32>, shape: &Shape) -> Self {
        let o = shape.offsets();
        Self {
            ids: meta.at(o[0]),
            pos: meta.at(o[1]),
            slot: meta.at(o[2]),
            row_seq: meta.at(o[3]),
            row_len: meta.at(o[4]),
            sel: meta.at(o[5]),
            first: meta.at(o[6]),
            n: meta.at(o[7]),
            tables: meta.at(o[8]),
        }
    }
}

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
    pub verdicts: Buffer<i32>,
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
            verdicts: alloc!(i32, 2 * seqs, "acceptance results"),
            meta: alloc!(i32, meta_ints, "step metadata"),
            chunk_table: alloc!(u64, chunks.max(1), "the KV chunk table"),
        })
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
            w.rows = w.rows.min(h);
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
        if self.mode == OutputMode::Logits {
            return Ok(());
        }
        gpu.argmax_rows(
            b.logits.ptr(),
            self.head_rows,
            self.head_rows,
            s.logit_rows,
            b.top_tok.ptr(),
            b.top_prob.ptr(),
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
