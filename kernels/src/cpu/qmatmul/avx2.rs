//! AVX2 kernels (with FMA and F16C): `maddubs` (u8 × i8 pairs to i16) and `madd` (i16 pairs to
//! i32, times the sub-block scales) for the integer dot products.
//!
//! Per output column (weight row) and block: the block is decoded once into registers, then
//! for each input row its codes are multiplied in, the lanes summed to the block's exact
//! integer total and folded into the row's output with [`step`]. The k-quants ([`kquant`])
//! reduce and fold four totals at a time.

// Loops index fixed arrays of registers by lane, row or group, as the arithmetic is written;
// they unroll into straight-line code.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::activation::Activations;
use super::format::{Q5_0_BYTES, Q8_0_BYTES, QK32};
use super::{step, OutPtr, QuantFormat, QuantMatrix, MAX_ROWS};

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
            QuantFormat::Q8_0 => q8_0(w, &rows, cols, out),
            QuantFormat::Q5_0 => q5_0(w, &rows, cols, out),
        }
    }
}

/// Raw pointers to each input row's planes, so that the inner loops index without checks.
pub(super) struct RowPtrs {
    pub m: usize,
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

/// Sum of the 8 lanes (exact, wrapping never happens for our magnitudes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Writes every row's accumulator for column `j`.
#[inline]
unsafe fn store(out: OutPtr, j: usize, acc: &[f32; MAX_ROWS], m: usize) {
    for r in 0..m {
        // SAFETY: `r < m`, `j` in the caller's range (the caller's contract).
        unsafe { out.write(r, j, acc[r]) };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK32;
    let ones = _mm256_set1_epi16(1);
    for j in cols {
        let mut acc = [0f32; MAX_ROWS];
        for b in 0..nb {
            // SAFETY: as in `q4k`.
            unsafe {
                let blk = w.data().as_ptr().add((j * nb + b) * Q8_0_BYTES);
                let d = load_f16(blk);
                let q = _mm256_loadu_si256(blk.add(2).cast());
                let aq = _mm256_abs_epi8(q);
                for r in 0..p.m {
                    let xv = _mm256_load_si256(p.codes[r].add(b * QK32).cast());
                    // |q| · (x · sign q) = q · x, with an unsigned left operand.
                    let prod = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(xv, q));
                    let t = hsum_i32(_mm256_madd_epi16(prod, ones));
                    acc[r] = step(acc[r], t, d, *p.scales[r].add(b));
                }
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { store(out, j, &acc, p.m) };
    }
}

/// The 32 5-bit values of a Q5_0 block (offset 16 not removed).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_values(blk: *const u8) -> __m256i {
    // SAFETY: the caller passes a whole block.
    let (qh, qs) = unsafe {
        (
            blk.add(2).cast::<i32>().read_unaligned(),
            _mm_loadu_si128(blk.add(6).cast()),
        )
    };
    let low4 = _mm256_set1_epi8(0x0f);
    let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), low4);
    // Byte i gets byte i/8 of qh, then tests its bit i%8.
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), spread);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK32;
    let ones = _mm256_set1_epi16(1);
    for j in cols {
        let mut acc = [0f32; MAX_ROWS];
        for b in 0..nb {
            // SAFETY: as in `q4k`.
            unsafe {
                let blk = w.data().as_ptr().add((j * nb + b) * Q5_0_BYTES);
                let d = load_f16(blk);
                let q = q5_0_values(blk);
                for r in 0..p.m {
                    let xv = _mm256_load_si256(p.codes[r].add(b * QK32).cast());
                    let raw = hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), ones));
                    // The values are q + 16: take 16 · (sum of x) back out.
                    let t = raw - *p.fix32[r].add(b);
                    acc[r] = step(acc[r], t, d, *p.scales[r].add(b));
                }
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { store(out, j, &acc, p.m) };
    }
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
