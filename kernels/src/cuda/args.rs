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
    /// Every format, in the order of their index.
    pub const ALL: [WeightFormat; 5] = [Self::Bf16, Self::Q4K, Self::Q6K, Self::Q8_0, Self::Q5_0];

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

    /// Whether products over this format go through the 8-bit-activation kernels (qdot.cu,
    /// [`MatmulKernel::Dot`]) when `auto` chooses.
    pub const fn has_dot(self) -> bool {
        matches!(self, Self::Q4K | Self::Q6K)
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
    /// Room for x's 8-bit copy, [`q8_bytes`]`(rows, w.cols)` bytes, which the products of
    /// [`MatmulKernel::Dot`] write with [`crate::cuda::Gpu::quantize_rows`] and then read; or
    /// x's copy already made there (`xq_ready`). 0 where no product of this call needs one
    /// (a `Dot` product then fails with the missing buffer named).
    pub xq: DevicePtr,
    /// Whether `xq` already holds x's 8-bit copy (the parts of one matrix share it).
    pub xq_ready: bool,
    pub y: DevicePtr,
    /// f32 per output column, or 0 for none.
    pub bias: DevicePtr,
    pub rows: usize,
    pub ldy: usize,
}

/// Bytes of the 8-bit copy of `rows` rows of `k` activations: the int8 values, then 8 bytes a
/// 32-value chunk (its scale and the sums of its two halves of 16; qdot.cu's `XChunk`).
pub const fn q8_bytes(rows: usize, k: usize) -> usize {
    rows * k + rows * (k / 32) * 8
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
    /// Where a row's splits (rows seeing more than 256 positions) may run as CTAs of their own;
    /// `None`, or a launch of more rows than it holds: one CTA works through a row's splits.
    /// The result is the same bit for bit either way.
    pub splits: Option<AttentionScratch>,
    /// `[rows, n_heads · head_dim]` bf16.
    pub out: DevicePtr,
}

/// Scratch for attention rows split over several CTAs: their partial results and, per row and
/// head, a counter of the splits done (zeros between launches: the last split resets it).
#[derive(Debug, Clone, Copy)]
pub struct AttentionScratch {
    /// f32, `partial_floats` of them.
    pub partials: DevicePtr,
    pub partial_floats: usize,
    /// u32, zeroed, `counter_len` of them.
    pub counters: DevicePtr,
    pub counter_len: usize,
}

impl AttentionScratch {
    /// Most rows a launch splits over CTAs (decode and verification steps); longer launches
    /// (prompts) have CTAs enough without.
    pub const MAX_ROWS: usize = 64;
    /// Most splits of one row (kernels/cuda/attention.cu's MAX_SPLITS).
    pub const MAX_SPLITS: usize = 16;
    /// Positions one split covers at least (one round of the kernel's 8 warps).
    pub const SPLIT_POSITIONS: usize = 256;

    /// Floats of partial results for `rows` rows (at most [`Self::MAX_ROWS`]) of `n_heads`
    /// heads of `head_dim`.
    pub fn floats(rows: usize, n_heads: usize, head_dim: usize) -> usize {
        rows.min(Self::MAX_ROWS) * n_heads * Self::MAX_SPLITS * (2 + head_dim)
    }

    /// Counters for `rows` rows (at most [`Self::MAX_ROWS`]) of `n_heads` heads.
    pub fn counters(rows: usize, n_heads: usize) -> usize {
        rows.min(Self::MAX_ROWS) * n_heads
    }

    /// Splits (CTAs per row and head) of a launch of `rows` rows of `n_heads` heads of
    /// `head_dim` whose rows see at most `max_positions` positions: 1 without scratch, for
    /// more than [`Self::MAX_ROWS`] rows, or where the scratch is too small.
    pub fn grid_splits(
        this: Option<&Self>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        max_positions: usize,
    ) -> usize {
        let fits = this.is_some_and(|s| {
            rows <= Self::MAX_ROWS
                && Self::floats(rows, n_heads, head_dim) <= s.partial_floats
                && Self::counters(rows, n_heads) <= s.counter_len
        });
        if !fits {
            return 1;
        }
        max_positions
            .div_ceil(Self::SPLIT_POSITIONS)
            .clamp(1, Self::MAX_SPLITS)
    }
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
/// kernel. `SPECD_MATMUL` picks one by name (`16x8`, `8x8u16`, `simple`, `auto`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    /// Tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), built as
    /// `matmul_<format>_<name>` (matmul.cu's MATMUL_SHAPES): `cols` output columns per CTA,
    /// `warps` warps splitting K, `unroll` chunks of 32 weights per row loaded ahead by each lane
    /// (more bytes in flight, more registers), `mtiles` 16-row tiles per pass over the weights;
    /// `persistent`: launched as as many CTAs as the GPU holds at once, each taking every
    /// grid-th tile of columns (else one CTA a tile).
    TensorCore {
        name: &'static str,
        cols: u32,
        warps: u32,
        unroll: u32,
        mtiles: u32,
        persistent: bool,
    },
    /// CUDA cores, a warp per output column.
    Simple,
    /// The prefill GEMM (gemm.cu): 64 x 64 output tiles through shared memory, quantized
    /// weights dequantized to bf16 first, a slice at a time, into the GPU's scratch
    /// ([`crate::cuda::Gpu::reserve_dequant_scratch`]; without one, quantized products take
    /// [`MatmulKernel::MANY_ROWS_IN_PLACE`]). It adds in the order of the 8-warp row kernels.
    Gemm,
    /// Products over 8-bit activations (qdot.cu): x quantized to int8 per 32 values, each
    /// 32-weight chunk's products summed exactly as integers and scaled once: dp4a with a warp
    /// per output column (up to [`crate::cuda::Gpu::dotc_max_rows`] rows of a matrix of at
    /// least [`crate::cuda::Gpu::dotc_min_cols`] columns: a lane per column) below
    /// [`crate::cuda::Gpu::dot_mma_from`] rows, int8 mma (16 columns by 8 rows an instruction)
    /// from there and, for those wide Q4_K matrices, from
    /// [`crate::cuda::Gpu::dot_mma_wide_from`] rows, and a tiled int8 GEMM (qgemm.cu) from [`crate::cuda::Gpu::dot_gemm_from`]
    /// rows (prefill). Any number of rows gives the same bits. Built for the formats of [`WeightFormat::has_dot`]; chosen for another format it
    /// takes `auto`'s choice for it.
    Dot,
    /// Per product, by its shape, format and rows: [`MatmulKernel::Dot`] for every number of
    /// rows where the format has it (Q4_K, Q6_K); otherwise for up to [`MatmulKernel::FEW_ROWS`] rows
    /// (decode, verification) [`MatmulKernel::NARROW`] (bf16) or
    /// [`MatmulKernel::NARROW_QUANTIZED`] when the matrix has a side of at most
    /// [`MatmulKernel::NARROW_MAX`], else [`MatmulKernel::WIDE`]; for more rows (prefill, wide
    /// verification batches) [`MatmulKernel::Gemm`]. Those split K over 8 warps in the same
    /// order (matmul.cu, gemm.cu), and `Dot` keeps one order for every number of rows, so the
    /// choice never changes a result: a row is bit-identical in decode, verification and
    /// prefill.
    Auto,
}

const fn tc(name: &'static str, cols: u32, warps: u32, unroll: u32, mtiles: u32) -> MatmulKernel {
    MatmulKernel::TensorCore {
        name,
        cols,
        warps,
        unroll,
        mtiles,
        persistent: false,
    }
}

impl MatmulKernel {
    /// Every row kernel built into the module (matmul.cu's MATMUL_SHAPES, in their order).
    pub const ALL: [MatmulKernel; 13] = [
        tc("8x8", 8, 8, 4, 4),
        tc("16x8", 16, 8, 4, 4),
        tc("32x8", 32, 8, 2, 2),
        tc("16x4", 16, 4, 4, 4),
        tc("32x4", 32, 4, 4, 2),
        tc("8x8u8", 8, 8, 8, 2),
        tc("8x8u16", 8, 8, 16, 2),
        tc("16x8u8", 16, 8, 8, 2),
        tc("8x4u16", 8, 4, 16, 2),
        tc("32x8m4", 32, 8, 2, 4),
        // The 8x8 tile with its weights staged through shared memory in slabs of 32 chunks.
        tc("8x8s", 8, 8, 4, 2),
        // The same with 4 buffers (3 slabs in flight while one computes; bf16 2) and a
        // persistent grid.
        MatmulKernel::TensorCore {
            name: "8x8p",
            cols: 8,
            warps: 8,
            unroll: 4,
            mtiles: 2,
            persistent: true,
        },
        MatmulKernel::Simple,
    ];

    /// What `SPECD_MATMUL` and `specd bench --sweep` choose from: [`MatmulKernel::Auto`], every
    /// row kernel, the GEMM and the 8-bit-activation kernels.
    pub const CHOICES: [MatmulKernel; 16] = {
        let mut c = [MatmulKernel::Auto; 16];
        let mut i = 0;
        while i < Self::ALL.len() {
            c[i + 1] = Self::ALL[i];
            i += 1;
        }
        c[Self::ALL.len() + 1] = MatmulKernel::Gemm;
        c[Self::ALL.len() + 2] = MatmulKernel::Dot;
        c
    };

    /// The default. GPU runs 3–6 (BENCHMARKS.md) swept every kernel over whole models: 8
    /// columns per CTA of 8 warps with 8 chunks ahead was fastest on the 1.5B shape (hidden
    /// 1536: a short K is one round of loads per warp, and few columns need narrow CTAs to fill
    /// the GPU), 32 columns of 8 warps on the 7B shape (hidden 3584); `auto` gives each model
    /// its winner, by the smaller side of each matrix.
    pub const DEFAULT: MatmulKernel = MatmulKernel::Auto;
    /// [`MatmulKernel::Auto`]'s choice for bf16 matrices with a side of at most
    /// [`MatmulKernel::NARROW_MAX`].
    pub const NARROW: MatmulKernel = Self::ALL[5];
    /// [`MatmulKernel::Auto`]'s choice for quantized matrices with a side of at most
    /// [`MatmulKernel::NARROW_MAX`]: 8x8p, whose staged copies read GGUF blocks in whole
    /// 16-byte pieces, three slabs ahead, in a persistent grid. On the real 1.5B Q4_K_M (H100,
    /// session 18) a decode step took 2.46 ms with 8x8s (one CTA a tile, one slab ahead)
    /// against 3.03 ms with 8x8u8 and 3.06 ms with 8x8, and Nsight Compute found 8x8s reading
    /// 250–810 GB/s of the H100's 3,350 (session 19, BENCHMARKS.md); not yet measured on bf16
    /// weights, which keep [`MatmulKernel::NARROW`].
    pub const NARROW_QUANTIZED: MatmulKernel = Self::ALL[11];
    /// The widest side [`MatmulKernel::NARROW`] is chosen for.
    pub const NARROW_MAX: usize = 2048;
    /// [`MatmulKernel::Auto`]'s choice for the others.
    pub const WIDE: MatmulKernel = Self::ALL[2];
    /// The most rows [`MatmulKernel::Auto`] treats as decode or verification.
    pub const FEW_ROWS: usize = 32;
    /// [`MatmulKernel::Auto`]'s choice for more rows (prefill, wide verification batches).
    pub const MANY_ROWS: MatmulKernel = MatmulKernel::Gemm;
    /// The row kernel for many rows where the GEMM cannot run (quantized weights and no
    /// dequantization scratch): 64 rows per pass, the fastest 128-token prefill on both shapes
    /// in GPU run 6.
    pub const MANY_ROWS_IN_PLACE: MatmulKernel = Self::ALL[9];

    /// The built kernel that runs a product of `rows` rows, `n` output columns and `k` inputs
    /// of weights stored as `format`.
    pub fn resolve(self, rows: usize, n: usize, k: usize, format: WeightFormat) -> MatmulKernel {
        match self {
            MatmulKernel::Auto | MatmulKernel::Dot if format.has_dot() => MatmulKernel::Dot,
            MatmulKernel::Dot => MatmulKernel::Auto.resolve(rows, n, k, format),
            MatmulKernel::Auto if rows > Self::FEW_ROWS => Self::MANY_ROWS,
            MatmulKernel::Auto if n.min(k) <= Self::NARROW_MAX => match format {
                WeightFormat::Bf16 => Self::NARROW,
                _ => Self::NARROW_QUANTIZED,
            },
            MatmulKernel::Auto => Self::WIDE,
            other => other,
        }
    }

    /// Whether two kernels give bit-identical results on weights of `format`: what they
    /// resolve to adds in the same order (tensor-core kernels with the same number of warps
    /// splitting K, the GEMM with those of 8 warps; the 8-bit-activation kernels among
    /// themselves).
    pub fn same_order(self, other: MatmulKernel, format: WeightFormat) -> bool {
        #[derive(PartialEq)]
        enum Order {
            Warps(u32),
            Dot,
        }
        let order = |k: MatmulKernel| match k.resolve(1, 1, 256, format) {
            MatmulKernel::Dot => Some(Order::Dot),
            MatmulKernel::TensorCore { warps, .. } => Some(Order::Warps(warps)),
            MatmulKernel::Gemm => Some(Order::Warps(8)),
            MatmulKernel::Simple | MatmulKernel::Auto => None,
        };
        self == other || (order(self).is_some() && order(self) == order(other))
    }

    /// The name `SPECD_MATMUL` takes and the kernels carry (`16x8`, `8x8u8`, `32x8m4`, `simple`,
    /// `gemm`, `auto`): `{cols}x{warps}`, then `u{unroll}` for the deeper unrolled shapes and
    /// `m{mtiles}` for the taller one.
    pub fn name(self) -> String {
        match self {
            MatmulKernel::TensorCore { name, .. } => name.into(),
            MatmulKernel::Simple => "simple".into(),
            MatmulKernel::Gemm => "gemm".into(),
            MatmulKernel::Dot => "dot".into(),
            MatmulKernel::Auto => "auto".into(),
        }
    }

    /// The kernel called `name`, if built (or `auto`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::CHOICES.into_iter().find(|k| k.name() == name)
    }

    /// CTAs and threads per CTA of a row product with `n` output columns, where the GPU holds
    /// `resident` CTAs of this kernel at once (a persistent kernel's grid).
    pub(super) fn launch_shape(self, n: usize, resident: usize) -> (usize, u32) {
        let (cols, threads, persistent) = match self {
            MatmulKernel::TensorCore {
                cols,
                warps,
                persistent,
                ..
            } => (cols as usize, warps * 32, persistent),
            MatmulKernel::Simple => (8, 256, false),
            MatmulKernel::Gemm | MatmulKernel::Dot | MatmulKernel::Auto => {
                unreachable!("launched on their own")
            }
        };
        let tiles = n.div_ceil(cols);
        let blocks = if persistent {
            tiles.min(resident.max(1))
        } else {
            tiles
        };
        (blocks, threads)
    }

    /// Whether the kernel is launched as a persistent grid.
    pub fn persistent(self) -> bool {
        matches!(
            self,
            MatmulKernel::TensorCore {
                persistent: true,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{MatmulKernel, WeightFormat};

    #[test]
    fn auto_gives_few_rows_by_the_matrix_side_and_format_and_many_rows_to_the_gemm() {
        let auto = MatmulKernel::Auto;
        let (bf16, q4k, q6k, q8) = (
            WeightFormat::Bf16,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
            WeightFormat::Q8_0,
        );
        // The 1.5B's products (hidden 1,536) and the 7B's (hidden 3,584).
        assert_eq!(auto.resolve(1, 17_920, 1536, bf16), MatmulKernel::NARROW);
        assert_eq!(auto.resolve(5, 151_936, 1536, bf16), MatmulKernel::NARROW);
        assert_eq!(
            auto.resolve(5, 151_936, 1536, q8),
            MatmulKernel::NARROW_QUANTIZED
        );
        assert_eq!(MatmulKernel::NARROW_QUANTIZED.name(), "8x8p");
        assert!(MatmulKernel::NARROW_QUANTIZED.persistent());
        assert_eq!(auto.resolve(1, 18_944, 3584, bf16), MatmulKernel::WIDE);
        assert_eq!(auto.resolve(1, 18_944, 3584, q8), MatmulKernel::WIDE);
        assert_eq!(auto.resolve(64, 17_920, 1536, q8), MatmulKernel::Gemm);
        // Q4_K and Q6_K go through the 8-bit-activation kernels for every number of rows.
        for rows in [1, 5, 64, 2048] {
            assert_eq!(auto.resolve(rows, 17_920, 1536, q4k), MatmulKernel::Dot);
            assert_eq!(auto.resolve(rows, 151_936, 1536, q6k), MatmulKernel::Dot);
        }
        // Chosen for a format without them, `dot` is `auto`.
        assert_eq!(
            MatmulKernel::Dot.resolve(1, 17_920, 1536, q8),
            MatmulKernel::NARROW_QUANTIZED
        );
        // Every choice of `auto` adds in one order per format, so switching never changes a bit.
        for format in [bf16, q4k, q6k, q8] {
            let first = auto.resolve(1, 17_920, 1536, format);
            for (rows, n, k) in [(1, 18_944, 3584), (64, 2048, 1536), (5, 151_936, 1536)] {
                let kernel = auto.resolve(rows, n, k, format);
                assert!(kernel.same_order(first, format), "{}", kernel.name());
            }
        }
        assert!(!MatmulKernel::Dot.same_order(MatmulKernel::NARROW_QUANTIZED, q4k));
        assert!(MatmulKernel::Dot.same_order(MatmulKernel::NARROW_QUANTIZED, q8));
        assert!(MatmulKernel::from_name("dot") == Some(MatmulKernel::Dot));
    }
}
