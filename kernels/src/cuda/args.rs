//! What the launches take: weight formats and views, the arguments of each kernel, and the
//! row-product kernels to choose from.

use super::DevicePtr;

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

    pub(super) fn index(self) -> usize {
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
    pub(super) fn row_bytes(&self) -> u64 {
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

    /// The default: 8 columns per CTA of 8 warps, the shape of GPU run 1 (the best 7B-shape
    /// step measured, 6.24 ms, with the SwiGLU as its own kernel as now) and the fastest
    /// tensor-core shape on the 1.5B shape in run 2 (BENCHMARKS.md). Run 2 timed the others
    /// only with the SwiGLU fused, which favoured wide tiles; sweep again (`specd bench --sweep`).
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

    /// CTAs and threads per CTA of a product with `n` output columns.
    pub(super) fn launch_shape(self, n: usize) -> (usize, u32) {
        let (cols, threads) = match self {
            MatmulKernel::TensorCore { cols, warps } => (cols as usize, warps * 32),
            MatmulKernel::Simple => (8, 256),
        };
        (n.div_ceil(cols), threads)
    }
}
