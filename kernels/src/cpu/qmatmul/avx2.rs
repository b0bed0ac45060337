//! AVX2 kernels (with FMA and F16C): `maddubs` (u8 × i8 pairs to i16) and `madd` (i16 pairs to
//! i32, times the sub-block scales) for the integer dot products.
//!
//! Per output column (weight row) and block: the block is decoded once into registers, then
//! for each input row its codes are multiplied in, the lanes summed to the block's exact
//! integer total and folded into the row's output with [`step`].

// Loops index fixed arrays of registers by lane, row or group, as the arithmetic is written;
// they unroll into straight-line code.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::activation::Activations;
use super::format::{q4k_scales_mins, Q4K_BYTES, Q5_0_BYTES, Q6K_BYTES, Q8_0_BYTES, QK32, QK_K};
use super::{step, step_min, OutPtr, QuantFormat, QuantMatrix, MAX_ROWS};

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
            QuantFormat::Q4K => q4k(w, &rows, cols, out),
            QuantFormat::Q6K => q6k(w, &rows, cols, out),
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
unsafe fn q4k(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK_K;
    let low4 = _mm256_set1_epi8(0x0f);
    for j in cols {
        let mut acc = [0f32; MAX_ROWS];
        for b in 0..nb {
            // SAFETY: block `b` of row `j` lies within the data (validated matrix, `j < rows`),
            // and every row's planes hold block `b` (`k = nb · 256` codes per row).
            unsafe {
                let blk = w.data().as_ptr().add((j * nb + b) * Q4K_BYTES);
                let (d, dmin) = (load_f16(blk), load_f16(blk.add(2)));
                let (sc, mn) = q4k_scales_mins(std::slice::from_raw_parts(blk.add(4), 12));
                let mut scv = [_mm256_setzero_si256(); 8];
                for t in 0..8 {
                    scv[t] = _mm256_set1_epi16(i16::from(sc[t]));
                }
                let mn = _mm_loadl_epi64(mn.as_ptr().cast());
                // [m0, m0, m1, m1, …] against the sums of 16 codes.
                let minv = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
                let qs = blk.add(16);
                let mut q = [_mm256_setzero_si256(); 8];
                for g in 0..4 {
                    let v = _mm256_loadu_si256(qs.add(32 * g).cast());
                    q[2 * g] = _mm256_and_si256(v, low4);
                    q[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
                }
                for r in 0..p.m {
                    let x = p.codes[r].add(b * QK_K);
                    let mut isum = _mm256_setzero_si256();
                    for t in 0..8 {
                        let xv = _mm256_load_si256(x.add(32 * t).cast());
                        let prod = _mm256_maddubs_epi16(q[t], xv);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(prod, scv[t]));
                    }
                    let sums = _mm256_loadu_si256(p.sums16[r].add(b * 16).cast());
                    let mt = hsum_i32(_mm256_madd_epi16(sums, minv));
                    let dx = *p.scales[r].add(b);
                    acc[r] = step_min(step(acc[r], hsum_i32(isum), d, dx), mt, dmin, dx);
                }
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { store(out, j, &acc, p.m) };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK_K;
    let low4 = _mm256_set1_epi8(0x0f);
    let bits45 = _mm256_set1_epi8(0x30);
    // Scale `t` of a pair (i16 lanes 2t, 2t+1 of the scales) to the low and high 8 lanes.
    let pair = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3,
    );
    for j in cols {
        let mut acc = [0f32; MAX_ROWS];
        for b in 0..nb {
            // SAFETY: as in `q4k`.
            unsafe {
                let blk = w.data().as_ptr().add((j * nb + b) * Q6K_BYTES);
                let d = load_f16(blk.add(208));
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
                let mut sc16 = [0i32; 8];
                _mm256_storeu_si256(sc16.as_mut_ptr().cast(), sc);
                let mut scv = [_mm256_setzero_si256(); 8];
                for t in 0..8 {
                    scv[t] = _mm256_shuffle_epi8(_mm256_set1_epi32(sc16[t]), pair);
                }
                let mut q = [_mm256_setzero_si256(); 8];
                for h in 0..2 {
                    let l0 = _mm256_loadu_si256(blk.add(64 * h).cast());
                    let l1 = _mm256_loadu_si256(blk.add(64 * h + 32).cast());
                    let hb = _mm256_loadu_si256(blk.add(128 + 32 * h).cast());
                    let lo = |v| _mm256_and_si256(v, low4);
                    let hi = |v| _mm256_and_si256(v, bits45);
                    q[4 * h] = _mm256_or_si256(lo(l0), hi(_mm256_slli_epi16::<4>(hb)));
                    q[4 * h + 1] = _mm256_or_si256(lo(l1), hi(_mm256_slli_epi16::<2>(hb)));
                    q[4 * h + 2] = _mm256_or_si256(lo(_mm256_srli_epi16::<4>(l0)), hi(hb));
                    q[4 * h + 3] = _mm256_or_si256(
                        lo(_mm256_srli_epi16::<4>(l1)),
                        hi(_mm256_srli_epi16::<2>(hb)),
                    );
                }
                for r in 0..p.m {
                    let x = p.codes[r].add(b * QK_K);
                    let mut isum = _mm256_setzero_si256();
                    for t in 0..8 {
                        let xv = _mm256_load_si256(x.add(32 * t).cast());
                        let prod = _mm256_maddubs_epi16(q[t], xv);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(prod, scv[t]));
                    }
                    // The values are q + 32: take 32 · Σ scale · (sum of x) back out.
                    let sums = _mm256_loadu_si256(p.sums16[r].add(b * 16).cast());
                    let fix = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sums, sc));
                    let t = hsum_i32(_mm256_sub_epi32(isum, fix));
                    acc[r] = step(acc[r], t, d, *p.scales[r].add(b));
                }
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { store(out, j, &acc, p.m) };
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
