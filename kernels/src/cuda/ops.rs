//! The kernels of `kernels/cuda`, loaded once per GPU, and one launch function each.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::{DevicePtr, Gpu, GpuError, GpuResult};

// Fat binaries from build.rs: sm_90 machine code, and PTX for newer GPUs' drivers to compile.
const MATMUL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/matmul.fatbin"));
const NORM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/norm.fatbin"));
const ROPE_KV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rope_kv.fatbin"));
const ATTENTION: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/attention.fatbin"));
const SAMPLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sample.fatbin"));

/// How a weight matrix is stored on the GPU: bf16, or GGUF blocks kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    Bf16,
    Q4K,
    Q6K,
    Q8_0,
    Q5_0,
}

impl WeightFormat {
    /// Weights per block (8 for bf16: the kernels read 8 at a time).
    pub const fn block_len(self) -> usize {
        match self {
            Self::Bf16 => 8,
            Self::Q4K | Self::Q6K => 256,
            Self::Q8_0 | Self::Q5_0 => 32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Bf16 => 16,
            Self::Q4K => 144,
            Self::Q6K => 210,
            Self::Q8_0 => 34,
            Self::Q5_0 => 22,
        }
    }

    /// Bytes of one row of `cols` weights.
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// Whether rows of `cols` weights can go through the kernels: whole blocks, and a multiple
    /// of 32 columns (the product's chunk).
    pub fn supports_cols(self, cols: usize) -> bool {
        cols.is_multiple_of(32) && cols.is_multiple_of(self.block_len())
    }

    fn index(self) -> usize {
        match self {
            Self::Bf16 => 0,
            Self::Q4K => 1,
            Self::Q6K => 2,
            Self::Q8_0 => 3,
            Self::Q5_0 => 4,
        }
    }
}

/// A weight matrix `[rows, cols]` in device memory.
#[derive(Debug, Clone, Copy)]
pub struct WeightView {
    pub format: WeightFormat,
    pub ptr: DevicePtr,
    pub rows: usize,
    pub cols: usize,
}

impl WeightView {
    fn row_bytes(&self) -> u64 {
        self.format.row_bytes(self.cols) as u64
    }
}

/// `y[rows, w.rows] (row stride ldy) = x[rows, w.cols] · wᵀ + bias`; x is bf16, y f32.
#[derive(Debug, Clone, Copy)]
pub struct MatmulArgs {
    pub w: WeightView,
    /// bf16 `[rows, w.cols]`.
    pub x: DevicePtr,
    pub y: DevicePtr,
    /// f32 per output column, or 0 for none.
    pub bias: DevicePtr,
    pub rows: usize,
    pub ldy: usize,
}

/// Where a paged KV pool keeps its blocks: a device array of chunk addresses, each chunk
/// holding `chunk_blocks` blocks of `[layer][keys | values][16 slots][kv_dim]` bf16.
#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    pub chunks: DevicePtr,
    pub chunk_blocks: usize,
    pub n_layers: usize,
    pub kv_dim: usize,
}

/// Rotary embedding of a step's query and key rows and the KV write (see rope_kv.cu).
#[derive(Debug, Clone, Copy)]
pub struct RopeArgs {
    /// `[rows, (n_heads + 2 n_kv) head_dim]` f32; queries rotated in place.
    pub qkv: DevicePtr,
    pub rows: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// `(cos, sin)` pairs, `[positions][head_dim / 2]`.
    pub cos_sin: DevicePtr,
    /// Position of each row (i32).
    pub pos: DevicePtr,
    /// Pool slot of each row (block · 16 + offset; negative: padding), i32.
    pub slot: DevicePtr,
    pub interleaved: bool,
    pub kv: KvLayout,
    pub layer: usize,
}

/// Paged attention of query rows over their sequences' cached keys and values.
#[derive(Debug, Clone, Copy)]
pub struct AttentionArgs {
    /// Query rows (f32), `q_stride` floats apart; head h at `h · head_dim`.
    pub q: DevicePtr,
    pub q_stride: usize,
    pub kv: KvLayout,
    pub layer: usize,
    /// Sequence of each row (index into `tables`; negative: padding), i32.
    pub row_seq: DevicePtr,
    /// Cached positions each row sees (`pos + 1` for causal attention), i32.
    pub row_kv_len: DevicePtr,
    /// Block tables, `table_width` block ids per sequence, i32.
    pub tables: DevicePtr,
    pub table_width: usize,
    pub rows: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Only the last `window` positions are seen (0: all).
    pub window: usize,
    /// `[rows, n_heads · head_dim]` bf16.
    pub out: DevicePtr,
}

/// Speculative rejection sampling (see sample.cu).
#[derive(Debug, Clone, Copy)]
pub struct RejectionArgs {
    /// Target probabilities `[rows, vocab]`.
    pub p: DevicePtr,
    pub vocab: usize,
    /// Draft probabilities `[rows, vocab]`, or 0 when every sequence's drafts are one-hot.
    pub q: DevicePtr,
    pub ids: DevicePtr,
    pub first: DevicePtr,
    pub n: DevicePtr,
    pub qrow: DevicePtr,
    pub u: DevicePtr,
    pub ustride: usize,
    pub seqs: usize,
    /// `[seqs][2]` i32: drafts kept, token drawn.
    pub out: DevicePtr,
}

/// Which row-product kernel `matmul_rows` launches: a tensor-core tile shape, or the CUDA-core
/// kernel. `SPECD_MATMUL` picks one by name (`16x8`, `simple`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    /// Tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate): `cols` output columns per
    /// CTA, `warps` warps splitting K.
    TensorCore { cols: u32, warps: u32 },
    /// CUDA cores, a warp per output column.
    Simple,
}

impl MatmulKernel {
    /// Every kernel built into the module.
    pub const ALL: [MatmulKernel; 6] = [
        MatmulKernel::TensorCore { cols: 8, warps: 8 },
        MatmulKernel::TensorCore { cols: 16, warps: 8 },
        MatmulKernel::TensorCore { cols: 32, warps: 8 },
        MatmulKernel::TensorCore { cols: 16, warps: 4 },
        MatmulKernel::TensorCore { cols: 32, warps: 4 },
        MatmulKernel::Simple,
    ];

    /// The default: 8 columns per CTA of 8 warps, the fastest tile shape on the 1.5B shape and
    /// the one of the best 7B-shape step measured (BENCHMARKS.md, GPU runs 1 and 2).
    pub const DEFAULT: MatmulKernel = MatmulKernel::TensorCore { cols: 8, warps: 8 };

    /// The name `SPECD_MATMUL` takes and the kernels carry (`16x8`, `simple`).
    pub fn name(self) -> String {
        match self {
            MatmulKernel::TensorCore { cols, warps } => format!("{cols}x{warps}"),
            MatmulKernel::Simple => "simple".into(),
        }
    }

    /// The kernel called `name`, if built.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    fn grid(self, n: usize) -> LaunchConfig {
        let (cols, threads) = match self {
            MatmulKernel::TensorCore { cols, warps } => (cols as usize, warps * 32),
            MatmulKernel::Simple => (8, 256),
        };
        grid(n.div_ceil(cols), threads)
    }
}

pub(super) fn kernel_index(k: MatmulKernel) -> usize {
    MatmulKernel::ALL
        .iter()
        .position(|&x| x == k)
        .expect("every kernel is in ALL")
}

const FORMATS: [&str; 5] = ["bf16", "q4k", "q6k", "q8_0", "q5_0"];

pub(super) struct Kernels {
    /// By (kernel, format index).
    matmul: std::collections::HashMap<(MatmulKernel, usize), CudaFunction>,
    embed_rows: CudaFunction,
    dequantize_rows: CudaFunction,
    add_rms_norm: CudaFunction,
    silu_mul: CudaFunction,
    gather_rows: CudaFunction,
    rope_store_kv: CudaFunction,
    /// For head dims 64 and 128 (fully unrolled), and any other.
    paged_attention: [CudaFunction; 3],
    argmax_rows: CudaFunction,
    accept_greedy: CudaFunction,
    softmax_rows: CudaFunction,
    rejection_sample: CudaFunction,
}

impl Kernels {
    pub(super) fn load(ctx: &Arc<CudaContext>) -> GpuResult<Self> {
        let module = |bin: &[u8]| {
            ctx.load_module(Ptx::from_binary(bin.to_vec()))
                .map_err(GpuError::driver(
                    "loading specd's kernels (is the driver new enough?)",
                ))
        };
        let (mm, norm, rope, att, sample) = (
            module(MATMUL)?,
            module(NORM)?,
            module(ROPE_KV)?,
            module(ATTENTION)?,
            module(SAMPLE)?,
        );
        let f = |m: &Arc<cudarc::driver::CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(GpuError::driver("finding a kernel in specd's PTX"))
        };
        let mut matmul = std::collections::HashMap::new();
        for kernel in MatmulKernel::ALL {
            for (fi, fmt) in FORMATS.iter().enumerate() {
                let name = format!("matmul_{fmt}_{}", kernel.name());
                matmul.insert((kernel, fi), f(&mm, &name)?);
            }
        }
        Ok(Self {
            matmul,
            embed_rows: f(&mm, "embed_rows")?,
            dequantize_rows: f(&mm, "dequantize_rows")?,
            add_rms_norm: f(&norm, "add_rms_norm")?,
            silu_mul: f(&norm, "silu_mul")?,
            gather_rows: f(&norm, "gather_rows")?,
            rope_store_kv: f(&rope, "rope_store_kv")?,
            paged_attention: [
                f(&att, "paged_attention_64")?,
                f(&att, "paged_attention_128")?,
                f(&att, "paged_attention")?,
            ],
            argmax_rows: f(&sample, "argmax_rows")?,
            accept_greedy: f(&sample, "accept_greedy")?,
            softmax_rows: f(&sample, "softmax_rows")?,
            rejection_sample: f(&sample, "rejection_sample")?,
        })
    }
}

fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launched(r: Result<(), cudarc::driver::DriverError>) -> GpuResult<()> {
    r.map_err(GpuError::driver("launching a kernel"))
}

/// Blocks for a grid-stride loop over `n` elements.
fn stride_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 4096)
}

fn i(v: usize) -> i32 {
    i32::try_from(v).expect("a size that fits the kernels' 32-bit indices")
}

impl Gpu {
    /// `y = x · wᵀ + bias` for any number of rows (batch-invariant; see matmul.cu), with the
    /// GPU's default kernel.
    pub fn matmul_rows(&self, a: &MatmulArgs) -> GpuResult<()> {
        self.matmul_rows_with(self.matmul_kernel(), a)
    }

    /// [`Gpu::matmul_rows`] with a chosen kernel.
    pub fn matmul_rows_with(&self, kernel: MatmulKernel, a: &MatmulArgs) -> GpuResult<()> {
        if a.rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().matmul[&(kernel, a.w.format.index())];
        let (stream, f) = self.function(f);
        let (w, rb, x, y, bias) = (a.w.ptr, a.w.row_bytes(), a.x, a.y, a.bias);
        let (rows, n, k, ldy) = (i(a.rows), i(a.w.rows), i(a.w.cols), i(a.ldy));
        let mut b = stream.launch_builder(&f);
        b.arg(&w).arg(&rb).arg(&x).arg(&y).arg(&bias);
        b.arg(&rows).arg(&n).arg(&k).arg(&ldy);
        // SAFETY: the argument list matches the kernel's signature; the buffers are the caller's.
        launched(unsafe { b.launch(kernel.grid(a.w.rows)) }.map(|_| ()))
    }

    /// `out[r] = w[ids[r]]` as f32, for `rows` ids (embedding lookup; a negative id gives zeros).
    pub fn embed_rows(
        &self,
        w: &WeightView,
        ids: DevicePtr,
        rows: usize,
        out: DevicePtr,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().embed_rows);
        let (fmt, ptr, rb, k) = (w.format.index() as i32, w.ptr, w.row_bytes(), i(w.cols));
        let mut b = stream.launch_builder(&f);
        b.arg(&fmt).arg(&ptr).arg(&rb).arg(&ids).arg(&k).arg(&out);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(rows, 128)) }.map(|_| ()))
    }

    /// All rows of `w` dequantized to bf16 into `out` (`[rows, cols]`).
    pub fn dequantize(&self, w: &WeightView, out: DevicePtr) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().dequantize_rows);
        let (fmt, ptr, rb, rows, k) = (
            w.format.index() as i32,
            w.ptr,
            w.row_bytes(),
            i(w.rows),
            i(w.cols),
        );
        let mut b = stream.launch_builder(&f);
        b.arg(&fmt).arg(&ptr).arg(&rb).arg(&rows).arg(&k).arg(&out);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(stride_blocks(w.rows * w.cols / 8), 256)) }.map(|_| ()))
    }

    /// For each of `rows` rows of width `d`: `x += delta` (when `delta` is not 0), then
    /// `out = bf16(rms_norm(x) · weight)`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        x: DevicePtr,
        delta: DevicePtr,
        weight: DevicePtr,
        eps: f32,
        out: DevicePtr,
        d: usize,
        rows: usize,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().add_rms_norm);
        let dd = i(d);
        let mut b = stream.launch_builder(&f);
        b.arg(&x)
            .arg(&delta)
            .arg(&weight)
            .arg(&eps)
            .arg(&out)
            .arg(&dd);
        let threads = if d >= 2048 { 1024 } else { 256 };
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(rows, threads)) }.map(|_| ()))
    }

    /// `out[r, i] = bf16(silu(gu[r, i]) · gu[r, inter + i])`.
    pub fn silu_mul(
        &self,
        gu: DevicePtr,
        out: DevicePtr,
        inter: usize,
        rows: usize,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().silu_mul);
        let (n, r) = (i(inter), i(rows));
        let mut b = stream.launch_builder(&f);
        b.arg(&gu).arg(&out).arg(&n).arg(&r);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(stride_blocks(inter * rows), 256)) }.map(|_| ()))
    }

    /// `dst[j] = src[sel[j]]` for `rows` selected rows of `d` bf16 values.
    pub fn gather_rows(
        &self,
        src: DevicePtr,
        sel: DevicePtr,
        d: usize,
        rows: usize,
        dst: DevicePtr,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().gather_rows);
        let dd = i(d);
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&sel).arg(&dd).arg(&dst);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(rows, 256)) }.map(|_| ()))
    }

    /// Rotary embedding of the step's rows and the paged KV write of one layer.
    pub fn rope_store_kv(&self, a: &RopeArgs) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().rope_store_kv);
        let (nh, nkv, hd) = (i(a.n_heads), i(a.n_kv), i(a.head_dim));
        let inter = i32::from(a.interleaved);
        let (cb, layer, nl) = (i(a.kv.chunk_blocks), i(a.layer), i(a.kv.n_layers));
        let mut b = stream.launch_builder(&f);
        b.arg(&a.qkv)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&a.cos_sin)
            .arg(&a.pos)
            .arg(&a.slot);
        b.arg(&inter)
            .arg(&a.kv.chunks)
            .arg(&cb)
            .arg(&layer)
            .arg(&nl);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(a.rows, 128)) }.map(|_| ()))
    }

    /// Paged attention for a ragged batch of query rows.
    pub fn paged_attention(&self, a: &AttentionArgs) -> GpuResult<()> {
        assert!(
            a.head_dim <= 256 && a.head_dim.is_multiple_of(8),
            "head_dim must be a multiple of 8 up to 256"
        );
        let which = match a.head_dim {
            64 => 0,
            128 => 1,
            _ => 2,
        };
        let (stream, f) = self.function(&self.kernels().paged_attention[which]);
        let (qs, cb, layer, nl) = (
            i(a.q_stride),
            i(a.kv.chunk_blocks),
            i(a.layer),
            i(a.kv.n_layers),
        );
        let (tw, nh, nkv, hd, win) = (
            i(a.table_width),
            i(a.n_heads),
            i(a.n_kv),
            i(a.head_dim),
            i(a.window),
        );
        let mut b = stream.launch_builder(&f);
        b.arg(&a.q)
            .arg(&qs)
            .arg(&a.kv.chunks)
            .arg(&cb)
            .arg(&layer)
            .arg(&nl);
        b.arg(&a.row_seq).arg(&a.row_kv_len).arg(&a.tables).arg(&tw);
        b.arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&a.scale)
            .arg(&win)
            .arg(&a.out);
        let cfg = LaunchConfig {
            grid_dim: (a.rows.max(1) as u32, a.n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above.
        launched(unsafe { b.launch(cfg) }.map(|_| ()))
    }

    /// `tok[r]` = argmax of logits row r (lowest index on ties), `prob[r]` its softmax
    /// probability; `ld` floats between rows.
    pub fn argmax_rows(
        &self,
        logits: DevicePtr,
        vocab: usize,
        ld: usize,
        rows: usize,
        tok: DevicePtr,
        prob: DevicePtr,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().argmax_rows);
        let (v, l) = (i(vocab), i(ld));
        let mut b = stream.launch_builder(&f);
        b.arg(&logits).arg(&v).arg(&l).arg(&tok).arg(&prob);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(rows, 1024)) }.map(|_| ()))
    }

    /// Greedy acceptance of `seqs` sequences' drafts against the target's choices.
    pub fn accept_greedy(
        &self,
        argmax: DevicePtr,
        ids: DevicePtr,
        first: DevicePtr,
        n: DevicePtr,
        seqs: usize,
        out: DevicePtr,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().accept_greedy);
        let s = i(seqs);
        let mut b = stream.launch_builder(&f);
        b.arg(&argmax)
            .arg(&ids)
            .arg(&first)
            .arg(&n)
            .arg(&s)
            .arg(&out);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(seqs.div_ceil(128), 128)) }.map(|_| ()))
    }

    /// `probs[r] = softmax(logits[r] / temperature)`.
    pub fn softmax_rows(
        &self,
        logits: DevicePtr,
        vocab: usize,
        ld: usize,
        inv_temp: f32,
        rows: usize,
        probs: DevicePtr,
    ) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().softmax_rows);
        let (v, l) = (i(vocab), i(ld));
        let mut b = stream.launch_builder(&f);
        b.arg(&logits).arg(&v).arg(&l).arg(&inv_temp).arg(&probs);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(rows, 1024)) }.map(|_| ()))
    }

    /// Speculative rejection sampling, one CTA per sequence.
    pub fn rejection_sample(&self, a: &RejectionArgs) -> GpuResult<()> {
        let (stream, f) = self.function(&self.kernels().rejection_sample);
        let (v, us) = (i(a.vocab), i(a.ustride));
        let mut b = stream.launch_builder(&f);
        b.arg(&a.p)
            .arg(&v)
            .arg(&a.q)
            .arg(&a.ids)
            .arg(&a.first)
            .arg(&a.n);
        b.arg(&a.qrow).arg(&a.u).arg(&us).arg(&a.out);
        // SAFETY: as above.
        launched(unsafe { b.launch(grid(a.seqs, 1024)) }.map(|_| ()))
    }
}
