//! The 32-value formats (Q8_0, Q5_0) on AVX2. A block's exact total is one `maddubs` and one
//! `madd` per input row, so reducing it across the 8 lanes and folding it into its output cost
//! more than the product itself; both are done four totals at a time, as the k-quants do
//! ([`super::kquant`]): one input row takes four weight rows at a time (the next four
//! prefetched), lane `c` of its float step the output of weight row `j + c`; more rows take one
//! weight row at a time, lane `i` the output of input row `4g + i`. Bit-identical to the scalar
//! kernel.

// Loops index fixed arrays of registers by lane or row, as the arithmetic is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::{load_f16, sum4, write_lanes, Prefetch, RowPtrs};
use crate::cpu::qmatmul::format::{Q5_0_BYTES, Q8_0_BYTES, QK32};
use crate::cpu::qmatmul::{OutPtr, QuantFormat, QuantMatrix, MAX_ROWS};

/// Computes output columns `cols` (weight rows) of a Q8_0 or Q5_0 matrix for every input row.
///
/// # Safety
/// As for [`super::matmul_cols`], with a Q8_0 or Q5_0 matrix.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_cols(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    // SAFETY (all): forwarded from the caller.
    unsafe {
        match (w.format() == QuantFormat::Q8_0, p.m) {
            (true, 1) => columns::<true>(w, p, cols, out),
            (true, _) => row_lanes::<true>(w, p, cols, out),
            (false, 1) => columns::<false>(w, p, cols, out),
            (false, _) => row_lanes::<false>(w, p, cols, out),
        }
    }
}

/// A decoded block: Q8_0's values' magnitudes and the values (for their signs), or Q5_0's
/// values (offset 16 not removed) twice.
type Decoded = (__m256i, __m256i);

/// The bytes of one block.
const fn block_bytes(q8: bool) -> usize {
    if q8 {
        Q8_0_BYTES
    } else {
        Q5_0_BYTES
    }
}

/// The block at `blk`: its scale and values.
///
/// # Safety
/// `blk` points at a whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode<const Q8: bool>(blk: *const u8) -> (f32, Decoded) {
    // SAFETY: the caller passes a whole block.
    unsafe {
        if Q8 {
            let q = _mm256_loadu_si256(blk.add(2).cast());
            (load_f16(blk), (_mm256_abs_epi8(q), q))
        } else {
            let q = q5_0_values(blk);
            (load_f16(blk), (q, q))
        }
    }
}

/// Input row `r`'s total against decoded block `b`, spread over 8 lanes (Q5_0's offset taken
/// out of lane 0).
///
/// # Safety
/// Row `r` exists and holds block `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes<const Q8: bool>(q: Decoded, p: &RowPtrs, r: usize, b: usize) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    // SAFETY: the caller's contract.
    unsafe {
        let xv = _mm256_load_si256(p.codes[r].add(b * QK32).cast());
        if Q8 {
            // |q| · (x · sign q) = q · x, with an unsigned left operand.
            _mm256_madd_epi16(_mm256_maddubs_epi16(q.0, _mm256_sign_epi8(xv, q.1)), ones)
        } else {
            let raw = _mm256_madd_epi16(_mm256_maddubs_epi16(q.0, xv), ones);
            // The values are q + 16: take 16 · (sum of x) back out.
            _mm256_sub_epi32(
                raw,
                _mm256_setr_epi32(*p.fix32[r].add(b), 0, 0, 0, 0, 0, 0, 0),
            )
        }
    }
}

/// One input row against weight rows `cols`, four weight rows at a time (the rest by
/// [`row_lanes`]).
///
/// # Safety
/// As for [`matmul_cols`], with `p.m == 1`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn columns<const Q8: bool>(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK32;
    let bytes = block_bytes(Q8);
    let mut j = cols.start;
    while j + 4 <= cols.end {
        let first = w.data().as_ptr().wrapping_add(j * nb * bytes);
        let next = Prefetch::new(first, 4 * nb * bytes, nb, w.data());
        let mut acc = _mm_setzero_ps();
        for b in 0..nb {
            // SAFETY: block `b` of rows `j..j + 4` lies within the data, and the input row's
            // planes hold block `b` (the caller's contract).
            unsafe {
                next.block(b);
                let mut t = [_mm256_setzero_si256(); 4];
                let mut d = [0f32; 4];
                for c in 0..4 {
                    let (dc, q) = decode::<Q8>(first.add((c * nb + b) * bytes));
                    t[c] = lanes::<Q8>(q, p, 0, b);
                    d[c] = dc;
                }
                let d = _mm_setr_ps(d[0], d[1], d[2], d[3]);
                let dx = _mm_set1_ps(*p.scales[0].add(b));
                acc = fold(acc, t, _mm_mul_ps(d, dx));
            }
        }
        // SAFETY: row 0, `j..j + 4` in the caller's range.
        unsafe { write_lanes(out, acc, 4, |c| (0, j + c)) };
        j += 4;
    }
    if j < cols.end {
        // SAFETY: forwarded from the caller.
        unsafe { row_lanes::<Q8>(w, p, j..cols.end, out) };
    }
}

/// Every input row against weight rows `cols`, one weight row at a time, four input rows at a
/// time.
///
/// # Safety
/// As for [`matmul_cols`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_lanes<const Q8: bool>(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK32;
    let bytes = block_bytes(Q8);
    for j in cols {
        let mut acc = [_mm_setzero_ps(); MAX_ROWS / 4];
        for b in 0..nb {
            // SAFETY: block `b` of row `j` lies within the data, every row's planes hold
            // block `b` (the caller's contract).
            unsafe {
                let (d, q) = decode::<Q8>(w.data().as_ptr().add((j * nb + b) * bytes));
                let d = _mm_set1_ps(d);
                for g in 0..p.m.div_ceil(4) {
                    let mut t = [_mm256_setzero_si256(); 4];
                    let mut dx = [0f32; 4];
                    for i in 0..(p.m - 4 * g).min(4) {
                        t[i] = lanes::<Q8>(q, p, 4 * g + i, b);
                        dx[i] = *p.scales[4 * g + i].add(b);
                    }
                    let dx = _mm_setr_ps(dx[0], dx[1], dx[2], dx[3]);
                    acc[g] = fold(acc[g], t, _mm_mul_ps(d, dx));
                }
            }
        }
        for g in 0..p.m.div_ceil(4) {
            let rows = (p.m - 4 * g).min(4);
            // SAFETY: rows `4g + i < m`, `j` in the caller's range.
            unsafe { write_lanes(out, acc[g], rows, |i| (4 * g + i, j)) };
        }
    }
}

/// `acc + T · dd` for four totals at once, `T` the lane sums of `t` (exact integer sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fold(acc: __m128, t: [__m256i; 4], dd: __m128) -> __m128 {
    _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(sum4(t)), dd))
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
