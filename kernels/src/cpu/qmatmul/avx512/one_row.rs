//! The k-quants for a single input row (decode): four weight rows at a time (the rest one at a
//! time), SIMD lanes along `k`. (Correct for any number of rows, but from two rows on
//! the tiles are faster: measured 1.6× at 2 rows, 2.3× at 4.)

// Loops index fixed arrays by row, as the arithmetic is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::cpu::qmatmul::avx2::load_f16;
use crate::cpu::qmatmul::avx2::{sum4, Prefetch, RowPtrs};
use crate::cpu::qmatmul::format::q4k_scales_mins;
use crate::cpu::qmatmul::format::{Q4K_BYTES, Q6K_BYTES, QK_K};
use crate::cpu::qmatmul::{step, step_min, MAX_ROWS};
use crate::cpu::qmatmul::{OutPtr, QuantFormat, QuantMatrix};

/// i16 lane `8c + i` (i < 4) takes the scale of `vpdpbusd` result `a`'s 128-bit chunk `c`,
/// lanes `8c + 4..8c + 8` that of result `b`'s chunk `c` (the order `vpackssdw a, b` leaves
/// them in). Q4_K: `a`, `b` cover 64 weights each, two 32-weight sub-blocks per result.
const Q4K_SCALES: [[i16; 32]; 2] = [
    [
        0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 1, 1, 3, 3,
        3, 3,
    ],
    [
        4, 4, 4, 4, 6, 6, 6, 6, 4, 4, 4, 4, 6, 6, 6, 6, 5, 5, 5, 5, 7, 7, 7, 7, 5, 5, 5, 5, 7, 7,
        7, 7,
    ],
];
/// Q6_K: `a` covers weights `128h..128h + 64`, `b` the next 64; one scale per chunk.
const Q6K_SCALES: [[i16; 32]; 2] = [
    [
        0, 0, 0, 0, 4, 4, 4, 4, 1, 1, 1, 1, 5, 5, 5, 5, 2, 2, 2, 2, 6, 6, 6, 6, 3, 3, 3, 3, 7, 7,
        7, 7,
    ],
    [
        8, 8, 8, 8, 12, 12, 12, 12, 9, 9, 9, 9, 13, 13, 13, 13, 10, 10, 10, 10, 14, 14, 14, 14, 11,
        11, 11, 11, 15, 15, 15, 15,
    ],
];

/// Computes output columns `cols` for every input row.
///
/// # Safety
/// As for [`super::matmul_cols`], with a k-quant matrix.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn matmul_cols(w: &QuantMatrix, p: &RowPtrs, cols: Range<usize>, out: OutPtr) {
    let nb = w.cols() / QK_K;
    let q4 = w.format() == QuantFormat::Q4K;
    let tables = if q4 { &Q4K_SCALES } else { &Q6K_SCALES };
    // SAFETY: 64 readable bytes each.
    let idx = unsafe {
        [
            _mm512_loadu_si512(tables[0].as_ptr().cast()),
            _mm512_loadu_si512(tables[1].as_ptr().cast()),
        ]
    };
    let mut j = cols.start;
    if p.m == 1 {
        // Four weight rows at a time: one reduction of their four block totals, and the float
        // steps of the four outputs in one vector (each lane the recurrence of one output),
        // the next four rows prefetched a share per block (Q6_K: 13-15 % off its one-row
        // products, BENCHMARKS.md, session 32).
        while j + 4 <= cols.end {
            // SAFETY: rows `j..j + 4` lie within the matrix; the input row holds every block.
            let acc = unsafe {
                if q4 {
                    q4k_four(w, p, j, idx)
                } else {
                    q6k_four(w, p, j, idx)
                }
            };
            for (c, v) in acc.into_iter().enumerate() {
                // SAFETY: row 0, `j + c` in the caller's range.
                unsafe { out.write(0, j + c, v) };
            }
            j += 4;
        }
    }
    for j in j..cols.end {
        let mut acc = [0f32; MAX_ROWS];
        for b in 0..nb {
            // SAFETY: block `b` of row `j` lies within the data (validated matrix, `j` in
            // range), and the rows' planes hold block `b` (`k = nb · 256`).
            unsafe {
                if q4 {
                    let blk = w.data().as_ptr().add((j * nb + b) * Q4K_BYTES);
                    let (q, s, mins) = q4k_decode(blk, idx);
                    let (d, dmin) = (load_f16(blk), load_f16(blk.add(2)));
                    for r in 0..p.m {
                        let sums = _mm256_loadu_si256(p.sums16[r].add(16 * b).cast());
                        let t = hsum(scaled_dot(&q, s, p.codes[r].add(b * QK_K)));
                        let mt = hsum(_mm256_madd_epi16(sums, mins));
                        let dx = *p.scales[r].add(b);
                        acc[r] = step_min(step(acc[r], t, d, dx), mt, dmin, dx);
                    }
                } else {
                    let blk = w.data().as_ptr().add((j * nb + b) * Q6K_BYTES);
                    let (q, s, sc) = q6k_decode(blk, idx);
                    let d = load_f16(blk.add(208));
                    for r in 0..p.m {
                        let sums = _mm256_loadu_si256(p.sums16[r].add(16 * b).cast());
                        // The values are q + 32: take 32 · Σ scale · (sum of 16 codes) out.
                        let fix = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sums, sc));
                        let isum = scaled_dot(&q, s, p.codes[r].add(b * QK_K));
                        let t = hsum(_mm256_sub_epi32(isum, fix));
                        acc[r] = step(acc[r], t, d, *p.scales[r].add(b));
                    }
                }
            }
        }
        for r in 0..p.m {
            // SAFETY: row `r < m`, `j` in the caller's range.
            unsafe { out.write(r, j, acc[r]) };
        }
    }
}

/// One input row against weight rows `j..j + 4` of a k-quant of `block_bytes`-byte blocks, lane
/// `c` of the result for row `j + c`: walks the blocks with the next four rows prefetched a
/// share per block, and `step` folds block `b` of the four rows into the four outputs (given
/// the four rows' block `b`, the input's 256 codes and 16-code sums of that block, its scale
/// `dx` in every lane, and the outputs so far).
///
/// # Safety
/// Rows `j..j + 4` lie within `w`, and `p`'s row 0 holds every block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn four_rows(
    w: &QuantMatrix,
    p: &RowPtrs,
    j: usize,
    block_bytes: usize,
    mut step: impl FnMut([*const u8; 4], *const i8, __m256i, __m128, __m128) -> __m128,
) -> [f32; 4] {
    let nb = w.cols() / QK_K;
    let first = w.data().as_ptr().wrapping_add(j * nb * block_bytes);
    let next = Prefetch::new(first, 4 * nb * block_bytes, nb, w.data());
    let mut acc = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: block `b` of rows `j..j + 4` lies within the data, the input row's planes
        // hold block `b` (the caller's contract).
        unsafe {
            next.block(b);
            let blks = std::array::from_fn(|c| first.add((c * nb + b) * block_bytes));
            let x = p.codes[0].add(b * QK_K);
            let sums = _mm256_loadu_si256(p.sums16[0].add(16 * b).cast());
            let dx = _mm_set1_ps(*p.scales[0].add(b));
            acc = step(blks, x, sums, dx, acc);
        }
    }
    let mut out = [0f32; 4];
    // SAFETY: four floats.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

/// Q4_K, one input row, weight rows `j..j + 4`: [`step`] then [`step_min`] per block for each
/// output, lane `c` for row `j + c`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_four(w: &QuantMatrix, p: &RowPtrs, j: usize, idx: [__m512i; 2]) -> [f32; 4] {
    // Bytes 0–1 of each 32-bit lane (d) to the low 8 bytes, bytes 2–3 (dmin) to the high 8.
    let halves = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    let block = |blks: [*const u8; 4], x, sums, dx, acc| {
        let mut t = [_mm256_setzero_si256(); 4];
        let mut m = t;
        let mut dd = _mm_setzero_si128();
        for (c, &blk) in blks.iter().enumerate() {
            // SAFETY: `four_rows` passes whole blocks and 256 codes.
            unsafe {
                let (q, s, mins) = q4k_decode(blk, idx);
                t[c] = scaled_dot(&q, s, x);
                m[c] = _mm256_madd_epi16(sums, mins);
                dd = insert32(dd, c, blk.cast::<i32>().read_unaligned());
            }
        }
        let dd = _mm_shuffle_epi8(dd, halves);
        let (d, dmin) = (_mm_cvtph_ps(dd), _mm_cvtph_ps(_mm_srli_si128::<8>(dd)));
        // acc + T · (d · dx), then − M · (dmin · dx)
        let tf = _mm_cvtepi32_ps(sum4(t));
        let acc = _mm_add_ps(acc, _mm_mul_ps(tf, _mm_mul_ps(d, dx)));
        let mf = _mm_cvtepi32_ps(sum4(m));
        _mm_sub_ps(acc, _mm_mul_ps(mf, _mm_mul_ps(dmin, dx)))
    };
    // SAFETY: forwarded from the caller.
    unsafe { four_rows(w, p, j, Q4K_BYTES, block) }
}

/// Q6_K, one input row, weight rows `j..j + 4`: [`step`] per block for each output, lane `c`
/// for row `j + c`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k_four(w: &QuantMatrix, p: &RowPtrs, j: usize, idx: [__m512i; 2]) -> [f32; 4] {
    let block = |blks: [*const u8; 4], x, sums, dx, acc| {
        let mut t = [_mm256_setzero_si256(); 4];
        let mut d = [0f32; 4];
        for (c, &blk) in blks.iter().enumerate() {
            // SAFETY: `four_rows` passes whole blocks and 256 codes.
            unsafe {
                let (q, s, sc) = q6k_decode(blk, idx);
                // The values are q + 32: take 32 · Σ scale · (sum of 16 codes) out.
                let fix = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sums, sc));
                t[c] = _mm256_sub_epi32(scaled_dot(&q, s, x), fix);
                d[c] = load_f16(blk.add(208));
            }
        }
        // SAFETY: four floats.
        let d = unsafe { _mm_loadu_ps(d.as_ptr()) };
        let tf = _mm_cvtepi32_ps(sum4(t));
        _mm_add_ps(acc, _mm_mul_ps(tf, _mm_mul_ps(d, dx)))
    };
    // SAFETY: forwarded from the caller.
    unsafe { four_rows(w, p, j, Q6K_BYTES, block) }
}

/// `v` with 32-bit lane `c` (0..4) set to `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn insert32(v: __m128i, c: usize, x: i32) -> __m128i {
    match c {
        0 => _mm_insert_epi32::<0>(v, x),
        1 => _mm_insert_epi32::<1>(v, x),
        2 => _mm_insert_epi32::<2>(v, x),
        _ => _mm_insert_epi32::<3>(v, x),
    }
}

/// Four 64-weight parts against 256 codes: `vpdpbusd` pairs packed to 16 bits, times their
/// scales (`s`), summed to 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scaled_dot(q: &[__m512i; 4], s: [__m512i; 2], x: *const i8) -> __m256i {
    let zero = _mm512_setzero_si512();
    // SAFETY: the caller passes 256 readable, 64-byte aligned codes.
    let xv = |t: usize| unsafe { _mm512_load_si512(x.add(64 * t).cast()) };
    let d0 = _mm512_dpbusd_epi32(zero, q[0], xv(0));
    let d1 = _mm512_dpbusd_epi32(zero, q[1], xv(1));
    let d2 = _mm512_dpbusd_epi32(zero, q[2], xv(2));
    let d3 = _mm512_dpbusd_epi32(zero, q[3], xv(3));
    let isum = _mm512_dpwssd_epi32(zero, _mm512_packs_epi32(d0, d1), s[0]);
    let isum = _mm512_dpwssd_epi32(isum, _mm512_packs_epi32(d2, d3), s[1]);
    _mm256_add_epi32(
        _mm512_castsi512_si256(isum),
        _mm512_extracti64x4_epi64::<1>(isum),
    )
}

/// Sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Q4_K: the block's values in weight order, its scales in `scaled_dot`'s order, and its
/// minimums doubled (`[m0, m0, m1, m1, …]`, against the sums of 16 codes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_decode(blk: *const u8, idx: [__m512i; 2]) -> ([__m512i; 4], [__m512i; 2], __m256i) {
    // SAFETY: the caller passes a whole block.
    unsafe {
        let (sc, mn) = q4k_scales_mins(std::slice::from_raw_parts(blk.add(4), 12));
        let sc = _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast()));
        let sc = _mm512_castsi128_si512(sc);
        let s = [
            _mm512_permutexvar_epi16(idx[0], sc),
            _mm512_permutexvar_epi16(idx[1], sc),
        ];
        let mn = _mm_loadl_epi64(mn.as_ptr().cast());
        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
        let low4 = _mm512_set1_epi8(0x0f);
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let v = _mm512_loadu_si512(blk.add(16 + 64 * h).cast());
            let lo = _mm512_and_si512(v, low4);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4);
            // 128-bit chunks [lo0 lo1 hi0 hi1] and [lo2 lo3 hi2 hi3]: weights in order.
            q[2 * h] = _mm512_shuffle_i64x2::<0x44>(lo, hi);
            q[2 * h + 1] = _mm512_shuffle_i64x2::<0xee>(lo, hi);
        }
        (q, s, mins)
    }
}

/// Q6_K: the block's values (q + 32) in weight order, its scales in `scaled_dot`'s order,
/// and the 16 scales as i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k_decode(blk: *const u8, idx: [__m512i; 2]) -> ([__m512i; 4], [__m512i; 2], __m256i) {
    let low4 = _mm512_set1_epi8(0x0f);
    let bits45 = _mm512_set1_epi8(0x30);
    // Shifts of qh per 256-bit half: [q1 | q2] take bits 0–1 and 2–3 to 4–5, [q3 | q4]
    // bits 4–5 and 6–7.
    let shl = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let shr = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    // SAFETY: the caller passes a whole block.
    unsafe {
        let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
        let sc512 = _mm512_castsi256_si512(sc);
        let s = [
            _mm512_permutexvar_epi16(idx[0], sc512),
            _mm512_permutexvar_epi16(idx[1], sc512),
        ];
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let l = _mm512_loadu_si512(blk.add(64 * h).cast());
            let hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * h).cast()));
            let hi_a = _mm512_and_si512(_mm512_sllv_epi16(hb, shl), bits45);
            let hi_b = _mm512_and_si512(_mm512_srlv_epi16(hb, shr), bits45);
            // (a & b) | c
            q[2 * h] = _mm512_ternarylogic_epi32::<0xea>(l, low4, hi_a);
            q[2 * h + 1] = _mm512_ternarylogic_epi32::<0xea>(_mm512_srli_epi16::<4>(l), low4, hi_b);
        }
        (q, s, sc)
    }
}
