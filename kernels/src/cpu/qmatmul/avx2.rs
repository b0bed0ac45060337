//! AVX2 kernels (with FMA and F16C): `maddubs` (u8 × i8 pairs to i16) and `madd` (i16 pairs to
//! i32, times the sub-block scales) for the integer dot products.
//!
//! Per weight row and block: the block is decoded into registers (a k-quant's again for each
//! group of four input rows past the first), each input row's codes are multiplied in, and the
//! block's exact integer totals are summed across lanes and folded into the outputs with
//! [`super::step`]'s recurrence four at a time: the k-quants in [`kquant`], Q8_0 and Q5_0 in
//! [`blocks32`]. Here: what both share.

use std::arch::x86_64::*;
use std::ops::Range;

use super::activation::Activations;
use super::{OutPtr, QuantFormat, QuantMatrix, MAX_ROWS};

mod blocks32;
mod kquant;

/// Whether this CPU has every feature the kernels use.
pub(super) fn is_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Computes output columns `cols` (weight rows) for every input row.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`is_available`]), `cols` must lie within the matrix
/// and `out` must be the `[a.rows(), w.rows()]` output.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_cols(
    w: &QuantMatrix,
    a: &Activations,
    cols: Range<usize>,
    out: OutPtr,
) {
    let rows = RowPtrs::new(a);
    // SAFETY (all four): forwarded from the caller.
    unsafe {
        match w.format() {
            QuantFormat::Q4K | QuantFormat::Q6K => kquant::matmul_cols(w, &rows, cols, out),
            QuantFormat::Q8_0 | QuantFormat::Q5_0 => blocks32::matmul_cols(w, &rows, cols, out),
        }
    }
}

/// Raw pointers to each input row's planes, so that the inner loops index without checks.
pub(super) struct RowPtrs {
    pub m: usize,
    /// Each row's codes, 64-byte aligned with a stride of a multiple of 64 bytes (`Activations`):
    /// the kernels load 32 codes at offsets that are multiples of 32 with aligned loads.
    pub codes: [*const i8; MAX_ROWS],
    pub scales: [*const f32; MAX_ROWS],
    pub sums16: [*const i16; MAX_ROWS],
    pub fix16: [*const i32; MAX_ROWS],
    pub sum32_pairs: [*const i32; MAX_ROWS],
    pub fix32: [*const i32; MAX_ROWS],
}

impl RowPtrs {
    pub(super) fn new(a: &Activations) -> Self {
        let null = [std::ptr::null(); MAX_ROWS];
        let mut p = Self {
            m: a.rows(),
            codes: null,
            scales: [std::ptr::null(); MAX_ROWS],
            sums16: [std::ptr::null(); MAX_ROWS],
            fix16: [std::ptr::null(); MAX_ROWS],
            sum32_pairs: [std::ptr::null(); MAX_ROWS],
            fix32: [std::ptr::null(); MAX_ROWS],
        };
        for r in 0..a.rows() {
            p.codes[r] = a.codes(r).as_ptr();
            p.scales[r] = a.scales(r).as_ptr();
            p.sums16[r] = a.sums16(r).as_ptr();
            p.fix16[r] = a.fix16(r).as_ptr();
            p.sum32_pairs[r] = a.sum32_pairs(r).as_ptr();
            p.fix32[r] = a.fix32(r).as_ptr();
        }
        p
    }
}

/// The little-endian half at `p`, as `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f16(p: *const u8) -> f32 {
    // SAFETY: the caller passes a pointer to two readable bytes.
    let h = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// The bytes after a group of rows read in step, fetched a share per block: four rows read in
/// step defeat the hardware prefetcher (measured 3× slower from memory without this on AVX-512
/// Xeons; fetching each row a few blocks ahead instead was no better).
pub(super) struct Prefetch {
    start: *const u8,
    end: *const u8,
    step: usize,
}

impl Prefetch {
    /// The `len` bytes after `group` (which is `len` bytes long) that lie within `data`, in
    /// `blocks` shares.
    pub(super) fn new(group: *const u8, len: usize, blocks: usize, data: &[u8]) -> Self {
        let start = group.wrapping_add(len);
        let data_end = data.as_ptr_range().end;
        let end = if start < data_end {
            start.wrapping_add(len.min(data_end as usize - start as usize))
        } else {
            start
        };
        Self {
            start,
            end,
            step: len.div_ceil(blocks * 64) * 64,
        }
    }

    /// Fetches share `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn block(&self, b: usize) {
        let mut at = self.start.wrapping_add(b * self.step);
        let stop = at.wrapping_add(self.step);
        while at < self.end && at < stop {
            // A hint: it never faults (and `at` lies within the matrix anyway).
            _mm_prefetch::<_MM_HINT_T0>(at.cast());
            at = at.wrapping_add(64);
        }
    }
}

/// The lane sums of four vectors: `[Σ v0, Σ v1, Σ v2, Σ v3]` (exact integer sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sum4(v: [__m256i; 4]) -> __m128i {
    let s = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s))
}

/// Writes `n` lanes of `v` to the outputs `at(lane)` gives (row, column).
///
/// # Safety
/// Every `at(lane)` for `lane < n ≤ 4` lies within the output.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn write_lanes(
    out: OutPtr,
    v: __m128,
    n: usize,
    at: impl Fn(usize) -> (usize, usize),
) {
    let mut lanes = [0f32; 4];
    // SAFETY: four floats; the outputs by the caller's contract.
    unsafe {
        _mm_storeu_ps(lanes.as_mut_ptr(), v);
        for (i, &v) in lanes.iter().enumerate().take(n) {
            let (r, j) = at(i);
            out.write(r, j, v);
        }
    }
}
