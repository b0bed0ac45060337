//! Products of a few input rows with a ggml-quantized weight matrix (Q4_K, Q6_K, Q8_0, Q5_0),
//! for decode and speculative verification (1 to [`MAX_ROWS`] rows).
//!
//! Each weight block is read and decoded once per call and then dotted with the block's codes
//! of all input rows, so that `m` rows cost little more than one while the product is bound by
//! memory traffic. The input rows are quantized to 8 bits once, up front (per 256 values for the
//! k-quants, per 32 for Q8_0/Q5_0); the dot products within a block are exact integer sums.
//!
//! **Batch invariance.** Every kernel computes, for each (input row, weight row, block), the
//! block's exact integer dot product `T` (and for Q4_K the exact minimum term `M`), then folds
//! it into the output with one fixed float recurrence, block after block:
//! `acc = acc + (T as f32) · (d · dx)` (Q4_K then `acc = acc − (M as f32) · (dmin · dx)`), where
//! `d`, `dmin` are the weight block's scales and `dx` the input block's. No step depends on the
//! number of rows, on the other rows, on how the work is split over threads, or on the kernel:
//! a row's outputs are bit-identical alone or in a batch, and the scalar, AVX2 and AVX-512
//! kernels give bit-identical results. Speculative greedy decoding then accepts exactly the
//! tokens one-row decoding would produce.
//!
//! **Kernels.** [`QuantKernel::detect`] picks the fastest this CPU runs:
//! - AVX-512 (VNNI): 16 weight rows at a time, their blocks transposed so that SIMD lanes are
//!   output columns; the codes of each input row are broadcast and one `vpdpbusd` feeds 16
//!   outputs. Sub-block scales then cost one multiply per sub-block for 16 columns, and the
//!   transposition is shared by all input rows. A single row of a k-quant (plain decode) takes
//!   a one-weight-row-at-a-time kernel instead, which streams better from memory.
//! - AVX2: lanes along `k` (`maddubs`/`madd`). Block totals are reduced and folded four at a
//!   time (four weight rows for one input row, or 1–3 for the k-quants; four input rows for
//!   more); a k-quant block is decoded a half at a time into registers and multiplied into up to
//!   four input rows at once.
//! - Scalar: the reference, and the path on other CPUs.
//!
//! All of them read each weight block once per call. For speed, the ranges `par` hands out
//! should be multiples of 16 weight rows (the AVX-512 tile); any split gives the same results.

mod activation;
#[cfg(target_arch = "x86_64")]
mod avx2;
// The AVX-512 intrinsics are stable since Rust 1.89, the workspace's declared minimum.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod avx512;
mod format;
mod scalar;

use std::fmt;
use std::ops::Range;

use self::activation::Activations;
pub use self::format::f16_to_f32;
use super::ParallelFor;

/// Most input rows one call takes.
pub const MAX_ROWS: usize = 16;

/// A ggml block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 4-bit k-quant: 256 weights in 144 bytes.
    Q4K,
    /// 6-bit k-quant: 256 weights in 210 bytes.
    Q6K,
    /// 8-bit: 32 weights in 34 bytes.
    Q8_0,
    /// 5-bit: 32 weights in 22 bytes.
    Q5_0,
}

/// Why bytes cannot be viewed as a quantized matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantMatrixError {
    /// The row length is not a positive multiple of the format's block length.
    Cols {
        format: QuantFormat,
        cols: usize,
        block_len: usize,
    },
    /// The byte count does not match `rows · cols / block_len · block_bytes`.
    DataLen {
        format: QuantFormat,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
}

impl fmt::Display for QuantMatrixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cols {
                format,
                cols,
                block_len,
            } => write!(
                f,
                "{format:?} matrix: cols = {cols} must be a positive multiple of the block \
                 length {block_len}"
            ),
            Self::DataLen {
                format,
                rows,
                cols,
                expected,
                actual,
            } => write!(
                f,
                "{format:?} matrix of {rows}x{cols}: expected {expected} bytes, got {actual}"
            ),
        }
    }
}

impl std::error::Error for QuantMatrixError {}

/// A `[rows, cols]` weight matrix stored as ggml blocks, row after row (the GGUF layout): the
/// product computes `x · Wᵀ`, `rows` outputs from `cols` inputs.
#[derive(Debug, Clone, Copy)]
pub struct QuantMatrix<'a> {
    format: QuantFormat,
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> QuantMatrix<'a> {
    /// Views `data` as a matrix of `format`, checking that `cols` is a whole number of blocks
    /// and that `data` holds exactly `rows` rows of them.
    pub fn new(
        format: QuantFormat,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantMatrixError> {
        let block_len = format.block_len();
        if cols == 0 || !cols.is_multiple_of(block_len) {
            return Err(QuantMatrixError::Cols {
                format,
                cols,
                block_len,
            });
        }
        let expected = rows
            .checked_mul(cols / block_len)
            .and_then(|b| b.checked_mul(format.block_bytes()));
        if expected != Some(data.len()) {
            return Err(QuantMatrixError::DataLen {
                format,
                rows,
                cols,
                expected: expected.unwrap_or(usize::MAX),
                actual: data.len(),
            });
        }
        Ok(Self {
            format,
            data,
            rows,
            cols,
        })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// The raw blocks.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Number of rows (outputs of the product).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs of the product).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Decodes row `j` into `out` (`cols` values).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.rows, "dequantize_row: row {j} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let (bytes, len) = (self.format.block_bytes(), self.format.block_len());
        let row_bytes = self.cols / len * bytes;
        let row = &self.data[j * row_bytes..(j + 1) * row_bytes];
        for (blk, o) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(len)) {
            format::dequantize_block(self.format, blk, o);
        }
    }
}

/// An implementation of the product. All of them give bit-identical results (see the module
/// doc); they differ in speed only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantKernel {
    /// Portable Rust.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/BW/VL and VNNI (and the AVX2 set); needs Rust 1.89 or later.
    Avx512Vnni,
}

impl QuantKernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        [Self::Avx512Vnni, Self::Avx2]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Self::Scalar)
    }

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => avx2::is_available(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => avx512::is_available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512Vnni => false,
        }
    }
}

/// `out[r * n + j] = Σ_i x[r * k + i] · W[j, i]` for the `m = x.len() / k` rows of `x`
/// (`1 ..= MAX_ROWS`), `n = w.rows()`, `k = w.cols()`, with the fastest kernel of this CPU.
/// Work is split over ranges of weight rows with `par`.
///
/// Panics when `x` is not 1 to [`MAX_ROWS`] rows of `k` or `out` is not `m · n` long.
pub fn quant_matmul(w: &QuantMatrix, x: &[f32], out: &mut [f32], par: &dyn ParallelFor) {
    quant_matmul_with(QuantKernel::detect(), w, x, out, par)
}

/// [`quant_matmul`] with the portable kernel.
pub fn quant_matmul_scalar(w: &QuantMatrix, x: &[f32], out: &mut [f32], par: &dyn ParallelFor) {
    quant_matmul_with(QuantKernel::Scalar, w, x, out, par)
}

/// [`quant_matmul`] with the given kernel. Panics when the CPU does not run it.
pub fn quant_matmul_with(
    kernel: QuantKernel,
    w: &QuantMatrix,
    x: &[f32],
    out: &mut [f32],
    par: &dyn ParallelFor,
) {
    let (n, k) = (w.rows, w.cols);
    let m = x.len() / k;
    assert!(
        x.len().is_multiple_of(k) && (1..=MAX_ROWS).contains(&m),
        "quant_matmul: x has {} values, not 1 to {MAX_ROWS} rows of {k}",
        x.len()
    );
    assert_eq!(out.len(), m * n, "quant_matmul: out must be {m} x {n}");
    assert!(
        kernel.is_available(),
        "quant_matmul: this CPU lacks {kernel:?}"
    );
    let acts = Activations::quantize(w.format, x, k, kernel != QuantKernel::Scalar);
    let out = OutPtr {
        ptr: out.as_mut_ptr(),
        n,
    };
    let cols = |range: Range<usize>| {
        assert!(range.end <= n, "quant_matmul: range {range:?} beyond {n}");
        match kernel {
            QuantKernel::Scalar => scalar::matmul_cols(w, &acts, range, out),
            // SAFETY (both): `is_available` checked the CPU features above.
            #[cfg(target_arch = "x86_64")]
            QuantKernel::Avx2 => unsafe { avx2::matmul_cols(w, &acts, range, out) },
            #[cfg(target_arch = "x86_64")]
            QuantKernel::Avx512Vnni => unsafe { avx512::matmul_cols(w, &acts, range, out) },
            #[cfg(not(target_arch = "x86_64"))]
            QuantKernel::Avx2 | QuantKernel::Avx512Vnni => unreachable!(),
        }
    };
    par.for_each_range(n, &cols);
}

/// The float step of every kernel, per block: `acc + T · (d · dx)` (see the module doc).
#[inline(always)]
fn step(acc: f32, t: i32, d: f32, dx: f32) -> f32 {
    acc + t as f32 * (d * dx)
}

/// The Q4_K minimum step after [`step`]: `acc − M · (dmin · dx)`.
#[inline(always)]
fn step_min(acc: f32, mt: i32, dmin: f32, dx: f32) -> f32 {
    acc - mt as f32 * (dmin * dx)
}

/// The output `[m, n]`, shared by threads that write disjoint column ranges of it.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: each thread writes only the columns of the weight-row range it was given, ranges are
// disjoint, and the buffer outlives every thread (`for_each_range` returns when they finish).
unsafe impl Sync for OutPtr {}
// SAFETY: as for `Sync`.
unsafe impl Send for OutPtr {}

impl OutPtr {
    /// Where output `(r, j)` lives.
    ///
    /// # Safety
    /// As for [`OutPtr::write`].
    #[inline]
    unsafe fn at(self, r: usize, j: usize) -> *mut f32 {
        // SAFETY: in bounds of the `m · n` buffer by the caller's contract.
        unsafe { self.ptr.add(r * self.n + j) }
    }

    /// Writes output `(r, j)`.
    ///
    /// # Safety
    /// `r < m`, `j < n`, and `j` in the column range of the calling thread.
    #[inline]
    unsafe fn write(self, r: usize, j: usize, v: f32) {
        // SAFETY: in bounds of the `m · n` buffer by the caller's contract.
        unsafe { *self.ptr.add(r * self.n + j) = v }
    }
}
