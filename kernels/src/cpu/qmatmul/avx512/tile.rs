//! Loading a tile: 16 weight rows' block bytes transposed so that each vector holds one
//! 32-bit word of every row, and prefetching the next tile.

// Loops index fixed arrays of registers by lane, as the arithmetic is written.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::LANES;

/// Sixteen weight rows: where each starts, and the same as byte offsets from the first; and
/// the bytes of the next tile, to prefetch.
pub(super) struct Tile {
    pub(super) cols: [*const u8; LANES],
    pub(super) offsets: __m512i,
    pub(super) prefetch: *const u8,
    pub(super) prefetch_step: usize,
    pub(super) prefetch_end: *const u8,
}

/// `[0, 1, …, 15]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn lane_index() -> __m512i {
    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

impl Tile {
    /// Prefetches the next tile's share for block `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn prefetch(&self, b: usize) {
        let start = self.prefetch.wrapping_add(b * self.prefetch_step);
        let mut at = start;
        while at < self.prefetch_end && at < start.wrapping_add(self.prefetch_step) {
            // A hint: it never faults (and `at` lies within the matrix anyway).
            _mm_prefetch::<_MM_HINT_T1>(at.cast());
            at = at.wrapping_add(64);
        }
    }

    /// Lane `c`: the 32-bit word at byte `at` of column `c`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn gather(&self, at: usize) -> __m512i {
        // SAFETY: the caller passes an offset whose 4 bytes lie within each column's row.
        unsafe { _mm512_i32gather_epi32::<1>(self.offsets, self.cols[0].add(at).cast()) }
    }

    /// Vector `t`, lane `c`: the 32-bit word `t` of the 64 bytes at `at` of column `c`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn words16(&self, at: usize) -> [__m512i; 16] {
        let mut rows = [_mm512_setzero_si512(); 16];
        for c in 0..LANES {
            // SAFETY: the caller passes an offset whose 64 bytes lie within each column's row.
            rows[c] = unsafe { _mm512_loadu_si512(self.cols[c].add(at).cast()) };
        }
        transpose16(rows)
    }

    /// As [`Tile::words16`] for 32 bytes: vectors 0..8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn words8(&self, at: usize) -> [__m512i; 16] {
        let mut rows = [_mm512_setzero_si512(); 16];
        for c in 0..LANES {
            // SAFETY: the caller passes an offset whose 32 bytes lie within each column's row.
            let v = unsafe { _mm256_loadu_si256(self.cols[c].add(at).cast()) };
            rows[c] = _mm512_zextsi256_si512(v);
        }
        transpose16(rows)
    }

    /// As [`Tile::words16`] for 16 bytes: vectors 0..4.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn words4(&self, at: usize) -> [__m512i; 4] {
        // z[G], 128-bit lane L: the 4 words of column 4G + L.
        let mut z = [_mm512_setzero_si512(); 4];
        for g in 0..4 {
            let c = &self.cols[4 * g..4 * g + 4];
            // SAFETY: the caller passes an offset whose 16 bytes lie within each column's row.
            unsafe {
                let v = _mm512_castsi128_si512(_mm_loadu_si128(c[0].add(at).cast()));
                let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(c[1].add(at).cast()));
                let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(c[2].add(at).cast()));
                z[g] = _mm512_inserti32x4::<3>(v, _mm_loadu_si128(c[3].add(at).cast()));
            }
        }
        let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
        let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
        let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
        let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
        // u[s], lane L, word G: word s of column 4G + L; reorder to word 4G + L.
        let u = [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ];
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut out = u;
        for i in 0..4 {
            out[i] = _mm512_permutexvar_epi32(idx, u[i]);
        }
        out
    }
}

/// Transposes a 16 × 16 matrix of 32-bit words: `out[t]` word `c` = `rows[c]` word `t`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let zero = _mm512_setzero_si512();
    let mut t = [zero; 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4G + s], 128-bit lane L: word 4L + s of rows 4G..4G+4.
    let mut u = [zero; 16];
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    let mut o = [zero; 16];
    for s in 0..4 {
        let a = _mm512_shuffle_i32x4::<0x44>(u[s], u[4 + s]);
        let b = _mm512_shuffle_i32x4::<0xee>(u[s], u[4 + s]);
        let c = _mm512_shuffle_i32x4::<0x44>(u[8 + s], u[12 + s]);
        let d = _mm512_shuffle_i32x4::<0xee>(u[8 + s], u[12 + s]);
        o[s] = _mm512_shuffle_i32x4::<0x88>(a, c);
        o[4 + s] = _mm512_shuffle_i32x4::<0xdd>(a, c);
        o[8 + s] = _mm512_shuffle_i32x4::<0x88>(b, d);
        o[12 + s] = _mm512_shuffle_i32x4::<0xdd>(b, d);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_16_by_16_words() {
        if !super::super::is_available() {
            return;
        }
        let m: Vec<i32> = (0..256).collect();
        // SAFETY: the features were checked above.
        unsafe {
            let rows = std::array::from_fn(|c| _mm512_loadu_si512(m[16 * c..].as_ptr().cast()));
            let out = transpose16(rows);
            for (t, v) in out.iter().enumerate() {
                let mut lanes = [0i32; 16];
                _mm512_storeu_si512(lanes.as_mut_ptr().cast(), *v);
                for (c, &l) in lanes.iter().enumerate() {
                    assert_eq!(l, m[16 * c + t], "word {t} of row {c}");
                }
            }
        }
    }
}
