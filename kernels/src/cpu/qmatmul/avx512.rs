//! AVX-512 kernels (F, BW, VL, VNNI): 16 output columns side by side.
//!
//! The weights are stored row after row, so the kernels take a *tile* of 16 weight rows and
//! transpose each block's bytes once (shared by all input rows): vector `W[g]` then holds, in
//! lane `c`, the 4 values of group `g` (weights `4g..4g+4` of the block) of weight row
//! `j + c`. A row's 4 codes of the group are broadcast, and one `vpdpbusd` adds 4 products to
//! each of the 16 columns. A lane thus sums a whole sub-block of one column before its scale
//! is applied (one `vpmulld` per sub-block for 16 columns), where the layout along `k` needs a
//! scale multiply per 64 weights and row; the float work per block is one vector for 16
//! columns. Columns that run past the range repeat its first row and are not stored.
//!
//! Each lane computes exactly the recurrence of the module doc ([`super::step`]), so the
//! results are bit-identical to the scalar kernel's.

// Loops index fixed arrays of registers by lane, row or group, as the arithmetic is written;
// they unroll into straight-line code.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

mod one_row;
mod tile;

use self::tile::{lane_index, Tile};
use super::activation::Activations;
use super::avx2::RowPtrs;
use super::format::{Q4K_BYTES, Q5_0_BYTES, Q6K_BYTES, Q8_0_BYTES, QK32, QK_K};
use super::{OutPtr, QuantFormat, QuantMatrix};

/// Columns per tile.
const LANES: usize = 16;
/// Input rows whose sums stay in registers together.
const ROW_GROUP: usize = 8;

/// Whether this CPU has every feature the kernels use.
pub(super) fn is_available() -> bool {
    super::avx2::is_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Computes output columns `cols` (weight rows) for every input row.
///
/// # Safety
/// The CPU must have the features of [`is_available`], `cols` must lie within the matrix and
/// `out` must be the `[a.rows(), w.rows()]` output.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn matmul_cols(
    w: &QuantMatrix,
    a: &Activations,
    cols: Range<usize>,
    out: OutPtr,
) {
    let p = RowPtrs::new(a);
    if p.m == 1 && matches!(w.format(), QuantFormat::Q4K | QuantFormat::Q6K) {
        // One row of a k-quant: the tile's transposition costs more than it saves; four weight
        // rows at a time with the next four prefetched stream from memory better. Same results
        // (module doc).
        // SAFETY: forwarded from the caller.
        unsafe { one_row::matmul_cols(w, &p, cols, out) };
        return;
    }
    let row_bytes = w.cols() / w.format().block_len() * w.format().block_bytes();
    let mut j = cols.start;
    while j < cols.end {
        let nc = LANES.min(cols.end - j);
        // Lanes past the range read column `j` again (valid memory; results not stored).
        let first = w.data()[j * row_bytes..].as_ptr();
        let mut tile_cols = [first; LANES];
        for c in 1..nc {
            tile_cols[c] = first.wrapping_add(c * row_bytes);
        }
        // The next tile's rows are contiguous: fetch them into L2 while this one computes, a
        // share per block (16 rows read in step defeat the hardware prefetcher; measured 2.5×
        // slower from DRAM without this).
        let next = (j + nc).min(cols.end);
        let next_len = (cols.end.min(next + LANES) - next) * row_bytes;
        let blocks = w.cols() / w.format().block_len();
        let tile = Tile {
            prefetch: w.data().as_ptr().wrapping_add(next * row_bytes),
            prefetch_step: next_len.div_ceil(blocks * 64) * 64,
            prefetch_end: w.data().as_ptr().wrapping_add(next * row_bytes + next_len),
            cols: tile_cols,
            offsets: _mm512_mullo_epi32(
                _mm512_maskz_mov_epi32(((1u32 << nc) - 1) as u16, lane_index()),
                _mm512_set1_epi32(row_bytes as i32),
            ),
        };
        let mut acc = [_mm512_setzero_ps(); super::MAX_ROWS];
        // SAFETY (all four): the tile's columns are rows of the matrix, `p` holds its inputs.
        unsafe {
            match w.format() {
                QuantFormat::Q4K => q4k(&tile, w.cols() / QK_K, &p, &mut acc),
                QuantFormat::Q6K => q6k(&tile, w.cols() / QK_K, &p, &mut acc),
                QuantFormat::Q8_0 => q8_0(&tile, w.cols() / QK32, &p, &mut acc),
                QuantFormat::Q5_0 => q5_0(&tile, w.cols() / QK32, &p, &mut acc),
            }
        }
        let mask = ((1u32 << nc) - 1) as u16;
        for r in 0..p.m {
            // SAFETY: row `r < m`, columns `j..j + nc` within the caller's range.
            unsafe { _mm512_mask_storeu_ps(out.at(r, j), mask, acc[r]) };
        }
        j += nc;
    }
}

/// The f16 in the low (`HIGH = false`) or high half of each 32-bit lane, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn halves<const HIGH: bool>(v: __m512i) -> __m512 {
    let v = if HIGH { _mm512_srli_epi32::<16>(v) } else { v };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

/// `acc + T · (d · dx)` per lane: [`super::step`] for 16 columns.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn step(acc: __m512, t: __m512i, d: __m512, dx: f32) -> __m512 {
    _mm512_add_ps(
        acc,
        _mm512_mul_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(d, _mm512_set1_ps(dx))),
    )
}

/// A decoded k-quant block of 16 columns.
struct KBlock {
    /// Q6_K: group `g` holds weights `4g..4g+4` of each column, unsigned. Q4_K: words 0..32
    /// hold the packed nibbles (word `8G + u`: groups `16G + u` low, `16G + 8 + u` high).
    w: [__m512i; 64],
    /// Per sub-block (8 of 32 weights for Q4_K, 16 of 16 for Q6_K): the 16 columns' scales.
    sc: [__m512i; 16],
}

/// The exact block totals `T` of `R` input rows against a k-quant block whose sub-blocks have
/// `SUB` groups: `Σ_j sc_j · (fix_j + Σ_(g in j) W[g] · x[4g..4g+4])`, `fix_j` the row's
/// `fix` value for sub-block `j` (or 0 when `fix` is null).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn k_totals<const R: usize, const SUB: usize, const NIBBLES: bool>(
    blk: &KBlock,
    x: [*const i8; R],
    fix: [*const i32; R],
) -> [__m512i; R] {
    let zero = _mm512_setzero_si512();
    let nib = _mm512_set1_epi8(0x0f);
    // Few rows leave the chains of dependent `vpdpbusd` too few to fill the pipeline: split
    // each sub-block's sum over `CHAINS` partial sums (integer, so the total is the same).
    let chains = (4 / R).clamp(1, SUB);
    let mut t = [zero; R];
    for j in 0..64 / SUB {
        let mut p = [[zero; 4]; R];
        if !fix[0].is_null() {
            for r in 0..R {
                // SAFETY: the caller passes `64 / SUB` values per row.
                p[r][0] = _mm512_set1_epi32(-unsafe { *fix[r].add(j) });
            }
        }
        for u in 0..SUB {
            let g = j * SUB + u;
            let wg = if NIBBLES {
                let v = blk.w[8 * (g / 16) + g % 8];
                let v = if g % 16 < 8 {
                    v
                } else {
                    _mm512_srli_epi16::<4>(v)
                };
                _mm512_and_si512(v, nib)
            } else {
                blk.w[g]
            };
            for r in 0..R {
                // SAFETY: the caller passes 256 codes per row.
                let xg = unsafe { x[r].add(4 * g).cast::<i32>().read_unaligned() };
                let c = u % chains;
                p[r][c] = _mm512_dpbusd_epi32(p[r][c], wg, _mm512_set1_epi32(xg));
            }
        }
        for r in 0..R {
            let mut s = p[r][0];
            for c in 1..chains {
                s = _mm512_add_epi32(s, p[r][c]);
            }
            t[r] = _mm512_add_epi32(t[r], _mm512_mullo_epi32(s, blk.sc[j]));
        }
    }
    t
}

/// Runs `rows::<R>(first_row)` over the input rows in groups of at most [`ROW_GROUP`].
macro_rules! row_groups {
    ($m:expr, $rows:ident ( $($arg:expr),* )) => {{
        let mut r0 = 0;
        while r0 < $m {
            let n = ROW_GROUP.min($m - r0);
            match n {
                1 => $rows::<1>(r0, $($arg),*),
                2 => $rows::<2>(r0, $($arg),*),
                3 => $rows::<3>(r0, $($arg),*),
                4 => $rows::<4>(r0, $($arg),*),
                5 => $rows::<5>(r0, $($arg),*),
                6 => $rows::<6>(r0, $($arg),*),
                7 => $rows::<7>(r0, $($arg),*),
                _ => $rows::<8>(r0, $($arg),*),
            }
            r0 += n;
        }
    }};
}

/// Q4_K: decodes block `b` of the tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_decode(tile: &Tile, b: usize, blk: &mut KBlock) -> (__m512, __m512, [__m512i; 4]) {
    let at = b * Q4K_BYTES;
    // SAFETY: the 144 bytes of block `b` lie within each column's row.
    let (v0, v1, v2) = unsafe {
        (
            tile.words16(at),
            tile.words16(at + 64),
            tile.words4(at + 128),
        )
    };
    // Words: 0 = d | dmin, 1..4 = packed scales and minimums, 4..36 = the nibbles.
    let (a, bm, c) = (v0[1], v0[2], v0[3]);
    // Byte i of a (scales 0–3) and bm (minimums 0–3) holds 6 bits, its top 2 bits the high
    // bits of scale / minimum 4 + i; byte i of c their low 4 bits (scale low, minimum high).
    let six = _mm512_set1_epi8(63);
    let low4 = _mm512_set1_epi8(0x0f);
    let hi2 = _mm512_set1_epi8(0x30);
    let sc_lo = _mm512_and_si512(a, six);
    let mn_lo = _mm512_and_si512(bm, six);
    let sc_hi = _mm512_or_si512(
        _mm512_and_si512(c, low4),
        _mm512_and_si512(_mm512_srli_epi32::<2>(a), hi2),
    );
    let mn_hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi32::<4>(c), low4),
        _mm512_and_si512(_mm512_srli_epi32::<2>(bm), hi2),
    );
    // Byte i of a 32-bit lane to the whole lane.
    let byte = |v: __m512i, i: u32| match i {
        0 => _mm512_and_si512(v, _mm512_set1_epi32(0xff)),
        1 => _mm512_and_si512(_mm512_srli_epi32::<8>(v), _mm512_set1_epi32(0xff)),
        2 => _mm512_and_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(0xff)),
        _ => _mm512_srli_epi32::<24>(v),
    };
    let mut min_pairs = [_mm512_setzero_si512(); 4];
    for i in 0..4u32 {
        blk.sc[i as usize] = byte(sc_lo, i);
        blk.sc[4 + i as usize] = byte(sc_hi, i);
    }
    // Minimums 2p and 2p + 1 as two i16 of one lane.
    let pair = |v: __m512i, i: u32| {
        let lo = byte(v, i);
        _mm512_or_si512(lo, _mm512_slli_epi32::<16>(byte(v, i + 1)))
    };
    min_pairs[0] = pair(mn_lo, 0);
    min_pairs[1] = pair(mn_lo, 2);
    min_pairs[2] = pair(mn_hi, 0);
    min_pairs[3] = pair(mn_hi, 2);
    for t in 0..32 {
        blk.w[t] = match t {
            0..12 => v0[4 + t],
            12..28 => v1[t - 12],
            _ => v2[t - 28],
        };
    }
    (halves::<false>(v0[0]), halves::<true>(v0[0]), min_pairs)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k(tile: &Tile, nb: usize, p: &RowPtrs, acc: &mut [__m512]) {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows<const R: usize>(
        r0: usize,
        (blk, d, dmin, min_pairs): (&KBlock, __m512, __m512, &[__m512i; 4]),
        b: usize,
        p: &RowPtrs,
        acc: &mut [__m512],
    ) {
        // SAFETY: rows `r0..r0 + R` exist; every plane holds block `b`.
        unsafe {
            let mut x = [std::ptr::null(); R];
            for r in 0..R {
                x[r] = p.codes[r0 + r].add(b * QK_K);
            }
            let t = k_totals::<R, 8, true>(blk, x, [std::ptr::null(); R]);
            for r in 0..R {
                let sums = p.sum32_pairs[r0 + r].add(4 * b);
                let mut mt = _mm512_setzero_si512();
                for i in 0..4 {
                    mt = _mm512_dpwssd_epi32(mt, min_pairs[i], _mm512_set1_epi32(*sums.add(i)));
                }
                let dx = *p.scales[r0 + r].add(b);
                let a = step(acc[r0 + r], t[r], d, dx);
                // acc − M · (dmin · dx)
                acc[r0 + r] = _mm512_sub_ps(
                    a,
                    _mm512_mul_ps(
                        _mm512_cvtepi32_ps(mt),
                        _mm512_mul_ps(dmin, _mm512_set1_ps(dx)),
                    ),
                );
            }
        }
    }
    let zero = _mm512_setzero_si512();
    let mut blk = KBlock {
        w: [zero; 64],
        sc: [zero; 16],
    };
    for b in 0..nb {
        // SAFETY: forwarded from the caller.
        unsafe {
            tile.prefetch(b);
            let (d, dmin, min_pairs) = q4k_decode(tile, b, &mut blk);
            row_groups!(p.m, rows((&blk, d, dmin, &min_pairs), b, p, acc));
        }
    }
}

/// Q6_K: decodes block `b` of the tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k_decode(tile: &Tile, b: usize, blk: &mut KBlock) -> __m512 {
    let at = b * Q6K_BYTES;
    // SAFETY: the 210 bytes of block `b` lie within each column's row (the half `d` is the
    // high half of the word at 206).
    let (ql0, ql1, qh, sc, dw) = unsafe {
        (
            tile.words16(at),
            tile.words16(at + 64),
            tile.words16(at + 128),
            tile.words4(at + 192),
            tile.gather(at + 206),
        )
    };
    for i in 0..16 {
        // Scale bytes are signed.
        let v = _mm512_sllv_epi32(sc[i / 4], _mm512_set1_epi32(24 - 8 * (i % 4) as i32));
        blk.sc[i] = _mm512_srai_epi32::<24>(v);
    }
    let nib = _mm512_set1_epi8(0x0f);
    let hi2 = _mm512_set1_epi8(0x30);
    let and = _mm512_and_si512;
    for h in 0..2 {
        for u in 0..8 {
            let (a, bq) = if h == 0 {
                (ql0[u], ql0[8 + u])
            } else {
                (ql1[u], ql1[8 + u])
            };
            let hb = qh[8 * h + u];
            let g = 32 * h + u;
            blk.w[g] = _mm512_or_si512(and(a, nib), and(_mm512_slli_epi32::<4>(hb), hi2));
            blk.w[g + 8] = _mm512_or_si512(and(bq, nib), and(_mm512_slli_epi32::<2>(hb), hi2));
            blk.w[g + 16] = _mm512_or_si512(and(_mm512_srli_epi32::<4>(a), nib), and(hb, hi2));
            blk.w[g + 24] = _mm512_or_si512(
                and(_mm512_srli_epi32::<4>(bq), nib),
                and(_mm512_srli_epi32::<2>(hb), hi2),
            );
        }
    }
    halves::<true>(dw)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6k(tile: &Tile, nb: usize, p: &RowPtrs, acc: &mut [__m512]) {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows<const R: usize>(
        r0: usize,
        blk: &KBlock,
        d: __m512,
        b: usize,
        p: &RowPtrs,
        acc: &mut [__m512],
    ) {
        // SAFETY: rows `r0..r0 + R` exist; every plane holds block `b`.
        unsafe {
            let (mut x, mut fix) = ([std::ptr::null(); R], [std::ptr::null(); R]);
            for r in 0..R {
                x[r] = p.codes[r0 + r].add(b * QK_K);
                // The values are q + 32: each sub-block starts at -32 · (sum of its codes).
                fix[r] = p.fix16[r0 + r].add(16 * b);
            }
            let t = k_totals::<R, 4, false>(blk, x, fix);
            for r in 0..R {
                acc[r0 + r] = step(acc[r0 + r], t[r], d, *p.scales[r0 + r].add(b));
            }
        }
    }
    let zero = _mm512_setzero_si512();
    let mut blk = KBlock {
        w: [zero; 64],
        sc: [zero; 16],
    };
    for b in 0..nb {
        // SAFETY: forwarded from the caller.
        unsafe {
            tile.prefetch(b);
            let d = q6k_decode(tile, b, &mut blk);
            row_groups!(p.m, rows(&blk, d, b, p, acc));
        }
    }
}

/// The 32-weight formats: `T = -fix + Σ_g W[g] · x[4g..4g+4]` per row, then [`step`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block32_rows(w: &[__m512i; 8], d: __m512, b: usize, p: &RowPtrs, acc: &mut [__m512]) {
    for r in 0..p.m {
        // SAFETY: every row's planes hold block `b`.
        unsafe {
            let x = p.codes[r].add(b * QK32);
            let mut t = _mm512_set1_epi32(-*p.fix32[r].add(b));
            for g in 0..8 {
                let xg = x.add(4 * g).cast::<i32>().read_unaligned();
                t = _mm512_dpbusd_epi32(t, w[g], _mm512_set1_epi32(xg));
            }
            acc[r] = step(acc[r], t, d, *p.scales[r].add(b));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0(tile: &Tile, nb: usize, p: &RowPtrs, acc: &mut [__m512]) {
    let flip = _mm512_set1_epi8(-128);
    for b in 0..nb {
        tile.prefetch(b);
        let at = b * Q8_0_BYTES;
        // SAFETY: the 34 bytes of block `b` lie within each column's row.
        let (q, dw) = unsafe { (tile.words8(at + 2), tile.gather(at)) };
        // The values + 128, unsigned; the rows' lanes start at -128 · (sum of codes).
        let mut w = [_mm512_setzero_si512(); 8];
        for g in 0..8 {
            w[g] = _mm512_xor_si512(q[g], flip);
        }
        // SAFETY: forwarded from the caller.
        unsafe { block32_rows(&w, halves::<false>(dw), b, p, acc) };
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q5_0(tile: &Tile, nb: usize, p: &RowPtrs, acc: &mut [__m512]) {
    let nib = _mm512_set1_epi8(0x0f);
    let four = _mm512_set1_epi32(0x0f);
    let spread = _mm512_set1_epi32(0x0020_4081);
    let ones = _mm512_set1_epi32(0x0101_0101);
    for b in 0..nb {
        tile.prefetch(b);
        let at = b * Q5_0_BYTES;
        // SAFETY: the 22 bytes of block `b` lie within each column's row.
        let (qs, dw, qh) = unsafe { (tile.words4(at + 6), tile.gather(at), tile.gather(at + 2)) };
        // Bit i of qh is the fifth bit of weight i: 4 bits to bit 4 of 4 bytes.
        let fifth = |shift: i32| {
            let bits = _mm512_and_si512(_mm512_srlv_epi32(qh, _mm512_set1_epi32(shift)), four);
            let bytes = _mm512_and_si512(_mm512_mullo_epi32(bits, spread), ones);
            _mm512_slli_epi32::<4>(bytes)
        };
        let mut w = [_mm512_setzero_si512(); 8];
        for t in 0..4 {
            w[t] = _mm512_or_si512(_mm512_and_si512(qs[t], nib), fifth(4 * t as i32));
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(qs[t]), nib);
            w[4 + t] = _mm512_or_si512(hi, fifth(16 + 4 * t as i32));
        }
        // SAFETY: forwarded from the caller.
        unsafe { block32_rows(&w, halves::<false>(dw), b, p, acc) };
    }
}
