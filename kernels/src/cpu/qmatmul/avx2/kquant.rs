//! The k-quants (Q4_K, Q6_K) on AVX2: lanes along `k`, `maddubs` (u8 × i8 pairs to i16) and
//! `madd` (i16 pairs times the sub-block scales to i32) for each block's exact integer dot
//! product.
//!
//! A block is decoded a quarter at a time (2 parts of 32 values and their scales, 4 registers),
//! and each part is multiplied into every input row of a pass (up to 8) at once, so that the
//! decoded values stay in registers and only the input codes are read per row. Reducing each
//! (input row, weight row, block) total across the 8 lanes and folding it into its output is
//! done four totals at a time:
//! - one input row (decode): four weight rows at a time, the next four prefetched a share per
//!   block, lane `c` of a float step the output of weight row `j + c`;
//! - more rows (short drafts, verification, prefill): one weight row at a time, lane `i` of a
//!   float step the output of input row `r0 + 4q + i`; up to 8 rows (a verification's k + 1)
//!   in one pass over the weight row, its outputs in registers throughout; more in passes of 8
//!   and one of the rest.
//!
//! Every lane runs [`super::super::step`]'s recurrence on the exact block totals, so the outputs
//! are the scalar kernel's bit for bit.

// Loops index fixed arrays of registers by lane, row or part, as the arithmetic is written;
// they unroll into straight-line code.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::{load_f16, sum4, write_lanes, Prefetch, RowPtrs};
use crate::cpu::qmatmul::format::{q4k_scales_mins, Q4K_BYTES, Q6K_BYTES, QK_K};
use crate::cpu::qmatmul::QuantMatrix;
use crate::cpu::qmatmul::{OutPtr, QuantFormat};

/// How far ahead of the block it reads [`row_pass`] fetches the weights, in bytes.
const AHEAD: usize = 1024;

/// Computes output columns `cols` (weight rows) of a k-quant matrix for every input row.
///
/// # Safety
/// As for [`super::matmul_cols`], with a Q4_K or Q6_K matrix.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_cols(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    // SAFETY (all): forwarded from the caller.
    unsafe {
        // One row (decode) four weight rows at a time; more one weight row at a time (2 and 3
        // rows measured faster that way too: BENCHMARKS.md, session 37).
        match (w.format() == QuantFormat::Q4K, p.m) {
            (true, 1) => columns::<true>(w, p, cols, out),
            (true, _) => row_lanes::<true>(w, p, cols, out),
            (false, 1) => columns::<false>(w, p, cols, out),
            (false, _) => row_lanes::<false>(w, p, cols, out),
        }
    }
}

/// The bytes of one block.
const fn block_bytes(q4: bool) -> usize {
    if q4 {
        Q4K_BYTES
    } else {
        Q6K_BYTES
    }
}

/// One input row (decode) against weight rows `cols`, four weight rows at a time (the rest by
/// [`row_lanes`]): lane `c` of the float step the output of weight row `j + c`.
///
/// # Safety
/// As for [`matmul_cols`], with `p.m == 1`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn columns<const Q4: bool>(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK_K;
    let bytes = block_bytes(Q4);
    let mut j = cols.start;
    while j + 4 <= cols.end {
        let first = w.data().as_ptr().wrapping_add(j * nb * bytes);
        let next = Prefetch::new(first, 4 * nb * bytes, nb, w.data());
        let mut acc = _mm_setzero_ps();
        for b in 0..nb {
            // SAFETY: block `b` of rows `j..j + 4` lies within the data, and the row's planes
            // hold block `b` (the caller's contract).
            unsafe {
                next.block(b);
                let mut t = [_mm256_setzero_si256(); 4];
                let mut m = t;
                let mut d = _mm_setzero_ps();
                let mut dmin = d;
                for c in 0..4 {
                    let blk = first.add((c * nb + b) * bytes);
                    let ([tc], [mc]) = totals::<Q4, 1>(blk, p, 0, b);
                    (t[c], m[c]) = (tc, mc);
                    let (dc, dminc) = scales::<Q4>(blk);
                    d = insert_lane(d, c, dc);
                    dmin = insert_lane(dmin, c, dminc);
                }
                let dx = _mm_set1_ps(*p.scales[0].add(b));
                acc = fold::<Q4>(acc, sum4(t), sum4(m), _mm_mul_ps(d, dx), dmin, dx);
            }
        }
        // SAFETY: row 0 exists, `j..j + 4` in the caller's range.
        unsafe { write_lanes(out, acc, 4, |c| (0, j + c)) };
        j += 4;
    }
    if j < cols.end {
        // SAFETY: forwarded from the caller.
        unsafe { row_lanes::<Q4>(w, p, j..cols.end, out) };
    }
}

/// Every input row against weight rows `cols`, one weight row at a time, up to 8 input rows
/// (a verification's k + 1) in one pass over the row's blocks ([`row_pass`]); more (prefill,
/// a long verification) in passes of 8 and a last of the rest, each decoding the row's blocks
/// again (from L1 after the first).
///
/// # Safety
/// As for [`matmul_cols`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_lanes<const Q4: bool>(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    for j in cols {
        for r0 in (0..p.m).step_by(8) {
            // SAFETY (the passes): forwarded from the caller; rows `r0..r0 + L` exist.
            unsafe {
                match p.m - r0 {
                    1 => row_pass::<Q4, 1>(w, p, j, r0, out),
                    2 => row_pass::<Q4, 2>(w, p, j, r0, out),
                    3 => row_pass::<Q4, 3>(w, p, j, r0, out),
                    4 => row_pass::<Q4, 4>(w, p, j, r0, out),
                    5 => row_pass::<Q4, 5>(w, p, j, r0, out),
                    6 => row_pass::<Q4, 6>(w, p, j, r0, out),
                    7 => row_pass::<Q4, 7>(w, p, j, r0, out),
                    _ => row_pass::<Q4, 8>(w, p, j, r0, out),
                }
            }
        }
    }
}

/// Input rows `r0..r0 + L` (`L ≤ 8`) against weight row `j` in one pass over its blocks, the
/// outputs in two float steps held in registers (lane `i` of step `q` for row `r0 + 4q + i`),
/// then written.
///
/// # Safety
/// As for [`matmul_cols`], with rows `r0..r0 + L` and weight row `j` in range.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_pass<const Q4: bool, const L: usize>(
    w: &QuantMatrix,
    p: &RowPtrs,
    j: usize,
    r0: usize,
    out: OutPtr,
) {
    let nb = w.cols() / QK_K;
    let bytes = block_bytes(Q4);
    let mut acc = [_mm_setzero_ps(); 2];
    for b in 0..nb {
        // SAFETY: block `b` of row `j` lies within the data, every row's planes hold block `b`
        // (the caller's contract).
        unsafe {
            let blk = w.data().as_ptr().add((j * nb + b) * bytes);
            // The blocks ahead: a hint, which never faults.
            for line in 0..bytes.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(AHEAD + 64 * line).cast());
            }
            let (d, dmin) = scales::<Q4>(blk);
            acc = rows_step::<Q4, L>(acc, blk, d, dmin, p, r0, b);
        }
    }
    for q in 0..L.div_ceil(4) {
        let rows = (L - 4 * q).min(4);
        // SAFETY: rows `r0 + 4q + i < r0 + L`, `j` in range.
        unsafe { write_lanes(out, acc[q], rows, |i| (r0 + 4 * q + i, j)) };
    }
}

/// Block `b` of one weight row (at `blk`, scales `d`, `dmin`) folded into the outputs of input
/// rows `r0..r0 + L` (`L ≤ 8`, in one pass over the decoded block; lane `i` of `acc[i / 4]` for
/// row `r0 + i`; lanes from `L` on are never written out, and `acc[1]` comes back as it was
/// for `L ≤ 4`).
///
/// # Safety
/// `blk` points at a whole block; rows `r0..r0 + L` exist and hold block `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_step<const Q4: bool, const L: usize>(
    acc: [__m128; 2],
    blk: *const u8,
    d: f32,
    dmin: f32,
    p: &RowPtrs,
    r0: usize,
    b: usize,
) -> [__m128; 2] {
    let mut t = [_mm256_setzero_si256(); 8];
    let mut m = t;
    let mut dx = [_mm_setzero_ps(); 2];
    // SAFETY: the caller's contract.
    unsafe {
        let (tl, ml) = totals::<Q4, L>(blk, p, r0, b);
        for i in 0..L {
            (t[i], m[i]) = (tl[i], ml[i]);
            dx[i / 4] = insert_lane(dx[i / 4], i % 4, *p.scales[r0 + i].add(b));
        }
    }
    let mut out = acc;
    for q in 0..L.div_ceil(4) {
        let (tq, mq) = (
            [t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]],
            [m[4 * q], m[4 * q + 1], m[4 * q + 2], m[4 * q + 3]],
        );
        let dd = _mm_mul_ps(_mm_set1_ps(d), dx[q]);
        out[q] = fold::<Q4>(acc[q], sum4(tq), sum4(mq), dd, _mm_set1_ps(dmin), dx[q]);
    }
    out
}

/// Input rows `r0..r0 + L` against block `b` of one weight row (at `blk`): each row's total `T`
/// (Q6_K with the offset taken out) and, for Q4_K, its minimum term `M`, still spread over 8
/// lanes. The block is decoded a quarter at a time, each quarter multiplied into all `L` rows.
///
/// # Safety
/// `blk` points at a whole block; rows `r0..r0 + L` exist and hold block `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn totals<const Q4: bool, const L: usize>(
    blk: *const u8,
    p: &RowPtrs,
    r0: usize,
    b: usize,
) -> ([__m256i; L], [__m256i; L]) {
    let mut t = [_mm256_setzero_si256(); L];
    let mut m = t;
    // SAFETY: the caller's contract.
    unsafe {
        let (scales, extra) = if Q4 { q4k_scales(blk) } else { q6k_scales(blk) };
        // A quarter of the block at a time (2 parts of 32 values), one decode for all `L` rows.
        for h in 0..2 {
            for g in 0..2 {
                let (q, s) = if Q4 {
                    q4k_quarter(blk, &scales, h, g)
                } else {
                    q6k_quarter(blk, scales[0], h, g)
                };
                for i in 0..L {
                    let x = p.codes[r0 + i].add(b * QK_K + 128 * h);
                    for k in 0..2 {
                        // Q4_K's quarter g is values 64g..64g + 64 of the half; Q6_K's its
                        // parts g and g + 2.
                        let at = if Q4 {
                            64 * g + 32 * k
                        } else {
                            32 * (g + 2 * k)
                        };
                        let xv = _mm256_load_si256(x.add(at).cast());
                        let prod = _mm256_maddubs_epi16(q[k], xv);
                        t[i] = _mm256_add_epi32(t[i], _mm256_madd_epi16(prod, s[k]));
                    }
                }
            }
        }
        for i in 0..L {
            let sums = _mm256_loadu_si256(p.sums16[r0 + i].add(16 * b).cast());
            let e = _mm256_madd_epi16(sums, extra);
            if Q4 {
                m[i] = e;
            } else {
                // The values are q + 32: take 32 · Σ scale · (sum of 16 codes) back out.
                t[i] = _mm256_sub_epi32(t[i], _mm256_slli_epi32::<5>(e));
            }
        }
    }
    (t, m)
}

/// The float steps of four outputs: `acc + T · dd` (`dd = d · dx`), then for Q4_K
/// `− M · (dmin · dx)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fold<const Q4: bool>(
    acc: __m128,
    t: __m128i,
    m: __m128i,
    dd: __m128,
    dmin: __m128,
    dx: __m128,
) -> __m128 {
    let acc = _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(t), dd));
    if Q4 {
        _mm_sub_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(m), _mm_mul_ps(dmin, dx)))
    } else {
        acc
    }
}

/// The block's `d` and (Q4_K) `dmin`.
///
/// # Safety
/// `blk` points at a whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales<const Q4: bool>(blk: *const u8) -> (f32, f32) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if Q4 {
            (load_f16(blk), load_f16(blk.add(2)))
        } else {
            (load_f16(blk.add(208)), 0.0)
        }
    }
}

/// `v` with lane `i` (0..4) set to `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn insert_lane(v: __m128, i: usize, x: f32) -> __m128 {
    let x = _mm_set_ss(x);
    match i {
        0 => _mm_insert_ps::<0x00>(v, x),
        1 => _mm_insert_ps::<0x10>(v, x),
        2 => _mm_insert_ps::<0x20>(v, x),
        _ => _mm_insert_ps::<0x30>(v, x),
    }
}

/// Bytes `2t, 2t + 1` (i16 lane `t` of a 128-bit half) in every i16 lane of that half.
const SPLAT16: [[i8; 16]; 4] = {
    let mut out = [[0i8; 16]; 4];
    let mut t = 0;
    while t < 4 {
        let mut i = 0;
        while i < 8 {
            out[t][2 * i] = 2 * t as i8;
            out[t][2 * i + 1] = 2 * t as i8 + 1;
            i += 1;
        }
        t += 1;
    }
    out
};

/// Q4_K: the 32-value scales of half `h` in i16 lanes 0–3 of both 128-bit halves of element
/// `h`, and the minimums doubled (`[m0, m0, m1, m1, …]`, against the sums of 16 codes).
///
/// # Safety
/// `blk` points at a whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_scales(blk: *const u8) -> ([__m256i; 2], __m256i) {
    // SAFETY: the caller passes a whole block.
    let (sc, mn) = q4k_scales_mins(unsafe { std::slice::from_raw_parts(blk.add(4), 12) });
    // SAFETY: 8 readable bytes each.
    let (sc, mn) = unsafe {
        (
            _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast())),
            _mm_loadl_epi64(mn.as_ptr().cast()),
        )
    };
    let halves = [
        _mm256_broadcastsi128_si256(sc),
        _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(sc, sc)),
    ];
    (halves, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn)))
}

/// Q4_K, quarter `g` of half `h` of the block (weights `128h + 64g..+ 64`): its 2 parts'
/// values and scales.
///
/// # Safety
/// `blk` points at a whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_quarter(
    blk: *const u8,
    scales: &[__m256i; 2],
    h: usize,
    g: usize,
) -> ([__m256i; 2], [__m256i; 2]) {
    let low4 = _mm256_set1_epi8(0x0f);
    // SAFETY: the caller passes a whole block; `SPLAT16` rows are 16 bytes.
    unsafe {
        let v = _mm256_loadu_si256(blk.add(16 + 64 * h + 32 * g).cast());
        let q = [
            _mm256_and_si256(v, low4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4),
        ];
        let mut s = q;
        for k in 0..2 {
            let pat = _mm_loadu_si128(SPLAT16[2 * g + k].as_ptr().cast());
            s[k] = _mm256_shuffle_epi8(scales[h], _mm256_broadcastsi128_si256(pat));
        }
        (q, s)
    }
}

/// Q6_K: the 16 scales as i16 (element 0, and again as the second value).
///
/// # Safety
/// `blk` points at a whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_scales(blk: *const u8) -> ([__m256i; 2], __m256i) {
    // SAFETY: the caller passes a whole block.
    let sc = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast())) };
    ([sc, sc], sc)
}

/// Q6_K, parts `g` and `g + 2` of half `h` of the block (weights `128h + 32g..+ 32` and
/// `128h + 32(g + 2)..+ 32`, the low and high nibbles of one 32-byte load of low bits): their
/// values (q + 32) and the scales of their two 16-value halves (low and high 8 i16 lanes).
///
/// # Safety
/// `blk` points at a whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_quarter(
    blk: *const u8,
    sc: __m256i,
    h: usize,
    g: usize,
) -> ([__m256i; 2], [__m256i; 2]) {
    let low4 = _mm256_set1_epi8(0x0f);
    let bits45 = _mm256_set1_epi8(0x30);
    // The scale pair of a part (i16 lanes 2t, 2t + 1) to the low and high 8 lanes.
    let pair = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3,
    );
    let mut s = [_mm256_setzero_si256(); 2];
    for k in 0..2 {
        let part = (4 * h + g + 2 * k) as i32;
        let both = _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(part));
        s[k] = _mm256_shuffle_epi8(both, pair);
    }
    // SAFETY: the caller passes a whole block.
    let (l, hb) = unsafe {
        (
            _mm256_loadu_si256(blk.add(64 * h + 32 * g).cast()),
            _mm256_loadu_si256(blk.add(128 + 32 * h).cast()),
        )
    };
    // Part g's high bits are bits 2g, 2g + 1 of each byte of `hb`, part g + 2's bits 2g + 4
    // and 2g + 5: each shifted to bits 4 and 5.
    let (hi_g, hi_g2) = if g == 0 {
        (_mm256_slli_epi16::<4>(hb), hb)
    } else {
        (_mm256_slli_epi16::<2>(hb), _mm256_srli_epi16::<2>(hb))
    };
    let q = [
        _mm256_or_si256(_mm256_and_si256(l, low4), _mm256_and_si256(hi_g, bits45)),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(l), low4),
            _mm256_and_si256(hi_g2, bits45),
        ),
    ];
    (q, s)
}
