//! Which kernel takes a product: the defaults (measured on the 1.5B's shapes), their
//! environment variables, and the [`Gpu`] settings that tests and benchmarks switch.

use std::sync::atomic::Ordering;

use super::{ops, qdot, Gpu, MatmulKernel, WeightFormat};

/// The fewest rows the 8-bit-activation products take on the tensor cores by default: on the
/// 1.5B's shapes (H100, BENCHMARKS.md, session 20) dp4a was faster up to 5 rows a product and
/// int8 mma from 8 (and for prefill).
pub const DOT_MMA_FROM: usize = 8;

/// The fewest rows a Q4_K product at least [`DOTC_MIN_COLS`] wide (the width the lane-per-column
/// kernels take, `SPECD_DOTC_MIN_COLS`; the 1.5B's gate and up products, 17,920 columns) takes
/// on the tensor cores by default, past what the lane-per-column
/// kernels take ([`DOTC_MAX_ROWS`]). At 5 rows on an H100 (BENCHMARKS.md, session 30) int8 mma
/// took the gate and up product in 21.7 µs against 29.0 for dp4a's 8-row kernel, while it lost
/// on the narrow products (12.3 against 9.1 µs), the Q6_K down product (38.3 / 17.8) and the
/// Q6_K head (301 / 256): those keep dp4a below [`DOT_MMA_FROM`].
pub const DOT_MMA_WIDE_FROM: usize = 5;

/// The fewest rows the 8-bit-activation products take in the tiled GEMM by default (qgemm.cu:
/// 32 columns by 32 or 64 rows a CTA, the next stage's loads in flight while the tensor cores
/// work), the rows of prefill and of large batches; fewer take int8 mma or dp4a. On the 1.5B's
/// shapes (H100, BENCHMARKS.md, session 22) a forward of 32 rows took 10.6 ms through it
/// against 6.5 through int8 mma, 64 rows the same (11.3 / 11.0), 128 rows 13.3 against 19.3.
pub const DOT_GEMM_FROM: usize = 64;

/// The shortest k for which the dp4a products (up to 7 rows) take two warps an output column by
/// default, each walking half of every 8 blocks: every k. On the 1.5B's shapes (H100,
/// BENCHMARKS.md, session 22) a decode step took 1.446 ms with every product split, 1.484 with
/// only the down projections (k = 8,960) and 1.545 with none; five rows 2.49 / 2.62 / 2.81.
pub const DOT_SPLIT_FROM_K: usize = 0;

/// The fewest output columns for which one row of a Q4_K product takes the lane-per-column
/// kernel by default: on the 1.5B's shapes (H100, session 20) it gained 4 % of a decode step
/// on the gate and up products (17,920 columns) and lost on the narrow ones (1,536 and 2,048
/// columns: 48 to 64 CTAs of 32 columns do not fill the GPU).
pub const DOTC_MIN_COLS: usize = 8192;

/// The most rows a product wide enough for the lane-per-column kernels ([`DOTC_MIN_COLS`],
/// [`DOTC_Q6K_MIN_COLS`]) takes through them by default (`dotc_q4k` for one row of Q4_K,
/// `dotc_{q4k,q6k}_r{1,2,4}` otherwise: each weight block decoded once for all the rows; more
/// rows take the kernels of a warp per column). On the 1.5B's shapes (H100, BENCHMARKS.md,
/// session 26) they took 5–7 % off 2, 3 and 4 verification rows and added 10 % to 5 rows and
/// 27 % to 8 (the 8-row kernel holds 128 registers a thread and spills).
pub const DOTC_MAX_ROWS: usize = 4;

/// The most rows a pass of the lane-per-column kernels takes by default (1, 2, 4 or 8): 8, one
/// pass for every row count they take by default. With fewer, a product of more rows walks its
/// columns' weights in several passes (`SPECD_DOTC_PASS_ROWS=4` with `SPECD_DOTC_MAX_ROWS=8`:
/// five verification rows in passes of 4 and 1, instead of the 8-row kernel that spills or
/// the warp-per-column one). Measured on an H100 (BENCHMARKS.md, session 30) it lost: 5 rows
/// 2.72 ms against 2.59, 8 rows 3.59 against 3.06; int8 mma took those rows of the gate and up
/// products instead ([`DOT_MMA_WIDE_FROM`]).
pub const DOTC_PASS_ROWS: usize = 8;

/// The fewest output columns for which a Q6_K product takes the lane-per-column kernels
/// (`dotc_q6k_r{1,2,4}`) by default: of the 1.5B's Q6_K matrices only the head (151,936
/// columns), not its down and value projections (1,536 and 256: too few CTAs of 32 columns).
/// On an H100 (session 26) the head through them took ~1 % off a decode step.
pub const DOTC_Q6K_MIN_COLS: usize = 65_536;

/// The most rows a CTA of the dp4a kernels takes of a product narrower than the lane-per-column
/// kernels take (the 1.5B's q, k, v, o and down products) by default (`SPECD_DOT_WARP_ROWS`):
/// more rows spread over CTAs of their own (the grid's y), so that a verification batch's few
/// columns fill more of the GPU (at 5 rows those products' launches filled 0.58 of a wave). On
/// an H100 (BENCHMARKS.md, session 31, the 1.5B's shapes) 4 took 5 rows from 2.28 to 2.21 ms and
/// 6 rows from 2.42–2.47 to 2.37; 2 and 1 lost (5 rows 2.33 and 2.42 ms). Up to 4 rows nothing
/// changes.
pub const DOT_WARP_ROWS: usize = 4;

/// The fewest rows from which such a narrow product's dp4a kernels take two columns a warp by
/// default (`SPECD_DOT_WARP_PAIR_FROM`; `usize::MAX`: never): each row's activations then come
/// from L1 once for two columns (at 5 rows the down product read 10 bytes of activations from L1
/// for each byte of weights, L1 74 % busy). On an H100 (session 31), with 4 rows a CTA: 5 rows
/// 2.14 ms against 2.28 (−6 %), 6 rows 2.19 against 2.42–2.47 (−10 %); from 3 rows it cost
/// 1–2 % at 3 and 4 rows.
pub const DOT_WARP_PAIR_FROM: usize = 5;

/// The number in the environment variable `name`, or `default` when unset or not a number.
pub(super) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Gpu {
    /// The row-product kernel `matmul_rows` uses (`SPECD_MATMUL=16x8`, `simple`, ... picks
    /// another; see [`MatmulKernel`]).
    pub fn matmul_kernel(&self) -> MatmulKernel {
        MatmulKernel::CHOICES[self.matmul_kernel.load(Ordering::Relaxed)]
    }

    /// Switches the row-product kernel (graphs captured before keep the old one).
    pub fn set_matmul_kernel(&self, k: MatmulKernel) {
        self.matmul_kernel
            .store(ops::kernel_index(k), Ordering::Relaxed);
    }

    /// The fewest rows the 8-bit-activation products take on the tensor cores (int8 mma) rather
    /// than dp4a (qdot.cu); both add in one order, so this changes speed only.
    pub fn dot_mma_from(&self) -> usize {
        self.dot_mma_from.load(Ordering::Relaxed).max(2)
    }

    /// The fewest rows a Q4_K product as wide as the lane-per-column kernels take
    /// ([`Gpu::dotc_min_cols`]) takes on the tensor cores (the same bits as dp4a).
    pub fn dot_mma_wide_from(&self) -> usize {
        self.dot_mma_wide_from.load(Ordering::Relaxed)
    }

    /// The fewest rows the 8-bit-activation products take in the tiled GEMM (qgemm.cu); the
    /// same bits as the other kernels.
    pub fn dot_gemm_from(&self) -> usize {
        self.dot_gemm_from.load(Ordering::Relaxed)
    }

    /// Sets [`Gpu::dot_gemm_from`] (graphs captured before keep the old choice).
    pub fn set_dot_gemm_from(&self, rows: usize) {
        self.dot_gemm_from.store(rows, Ordering::Relaxed);
    }

    /// Sets the shortest k for which the dp4a products take two warps a column (the same bits
    /// either way; graphs captured before keep the old choice).
    pub fn set_dot_split_from_k(&self, k: usize) {
        self.dot_split_from_k.store(k, Ordering::Relaxed);
    }

    /// Sets the tiled GEMM's rows a CTA in tiles of 32 (1 or 2; 0: by the grid's size, the
    /// default). The same bits either way; graphs captured before keep the old choice.
    pub fn set_dot_gemm_wm(&self, wm: usize) {
        self.dot_gemm_wm.store(wm, Ordering::Relaxed);
    }

    /// What picks the kernel of an 8-bit-activation product over weights of `format`.
    pub(super) fn dot_settings(&self, format: WeightFormat) -> qdot::DotSettings {
        qdot::DotSettings {
            mma_from: self.dot_mma_from(),
            mma_wide_from: match format {
                WeightFormat::Q4K => self.dot_mma_wide_from(),
                _ => usize::MAX,
            },
            gemm_from: self.dot_gemm_from(),
            dotc_min_cols: match format {
                WeightFormat::Q6K => self.dotc_q6k_min_cols(),
                _ => self.dotc_min_cols(),
            },
            dotc_max_rows: self.dotc_max_rows(),
            dotc_pass_rows: self.dotc_pass_rows(),
            split_from_k: self.dot_split_from_k.load(Ordering::Relaxed),
            warp_rows: self.dot_warp_rows.load(Ordering::Relaxed),
            warp_pair_from: self.dot_warp_pair_from.load(Ordering::Relaxed),
            gemm_wm: self.dot_gemm_wm.load(Ordering::Relaxed),
            sms: self.kernels().sms,
        }
    }

    /// The fewest output columns for which a Q4_K product (of at most [`Gpu::dotc_max_rows`]
    /// rows) takes the kernels with a lane per column rather than a warp per column (the same
    /// bits either way).
    pub fn dotc_min_cols(&self) -> usize {
        self.dotc_min_cols.load(Ordering::Relaxed)
    }

    /// Sets [`Gpu::dotc_min_cols`] (graphs captured before keep the old choice).
    pub fn set_dotc_min_cols(&self, cols: usize) {
        self.dotc_min_cols.store(cols, Ordering::Relaxed);
    }

    /// The fewest output columns for which a Q6_K product takes the kernels with a lane per
    /// column (the same bits either way).
    pub fn dotc_q6k_min_cols(&self) -> usize {
        self.dotc_q6k_min_cols.load(Ordering::Relaxed)
    }

    /// Sets [`Gpu::dotc_q6k_min_cols`] (graphs captured before keep the old choice).
    pub fn set_dotc_q6k_min_cols(&self, cols: usize) {
        self.dotc_q6k_min_cols.store(cols, Ordering::Relaxed);
    }

    /// The most rows (1 to 8) a product wide enough for the lane-per-column kernels
    /// ([`Gpu::dotc_min_cols`], [`Gpu::dotc_q6k_min_cols`]) takes through them (the same bits
    /// either way).
    pub fn dotc_max_rows(&self) -> usize {
        self.dotc_max_rows.load(Ordering::Relaxed).clamp(1, 8)
    }

    /// Sets [`Gpu::dotc_max_rows`] (graphs captured before keep the old choice).
    pub fn set_dotc_max_rows(&self, rows: usize) {
        self.dotc_max_rows.store(rows, Ordering::Relaxed);
    }

    /// The most rows (1, 2, 4 or 8) a pass of the lane-per-column kernels takes; more rows go
    /// through the columns' weights in several passes (the same bits either way).
    pub fn dotc_pass_rows(&self) -> usize {
        qdot::pass_rows(self.dotc_pass_rows.load(Ordering::Relaxed))
    }

    /// Sets [`Gpu::dotc_pass_rows`] (graphs captured before keep the old choice).
    pub fn set_dotc_pass_rows(&self, rows: usize) {
        self.dotc_pass_rows.store(rows, Ordering::Relaxed);
    }

    /// Sets [`Gpu::dot_mma_from`] (graphs captured before keep the old choice).
    pub fn set_dot_mma_from(&self, rows: usize) {
        self.dot_mma_from.store(rows, Ordering::Relaxed);
    }

    /// Sets [`Gpu::dot_mma_wide_from`] (graphs captured before keep the old choice).
    pub fn set_dot_mma_wide_from(&self, rows: usize) {
        self.dot_mma_wide_from.store(rows, Ordering::Relaxed);
    }

    /// Sets the most rows a CTA of the dp4a kernels takes of a product narrower than
    /// [`Gpu::dotc_min_cols`] ([`Gpu::dotc_q6k_min_cols`] for Q6_K): 1, 2, 4 or 8; more rows
    /// spread over CTAs of their own. The same bits either way; graphs captured before keep the
    /// old choice.
    pub fn set_dot_warp_rows(&self, rows: usize) {
        self.dot_warp_rows.store(rows, Ordering::Relaxed);
    }

    /// Sets the fewest rows from which such a narrow product's dp4a kernels with two warps a
    /// column take two columns a warp (4 or 8 rows a pass; `usize::MAX`: never). The same bits
    /// either way; graphs captured before keep the old choice.
    pub fn set_dot_warp_pair_from(&self, rows: usize) {
        self.dot_warp_pair_from.store(rows, Ordering::Relaxed);
    }
}
