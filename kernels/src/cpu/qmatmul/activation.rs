//! The input rows quantized to 8 bits once per product, in the layout the kernels read.
//!
//! Each row is quantized on its own (so a row's codes never depend on the other rows), per
//! block of 256 values for the k-quants and per 32 for Q8_0/Q5_0: scale `d = max|x| / 127`,
//! code `round(x / d)` (nearest, ties to even). Sums of codes, which the kernels need to take
//! the weights' offsets and minimums back out, are computed here once.

use super::QuantFormat;

/// 64 bytes, aligned so that a row of codes starts on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// Quantized input rows: per row, `k` codes and per-block planes.
pub(super) struct Activations {
    m: usize,
    k: usize,
    /// Row stride of `codes`, in bytes: `k` rounded up to whole lines.
    stride: usize,
    codes: Vec<Line>,
    /// One scale per block (256 codes for the k-quants, 32 otherwise).
    scales: Vec<f32>,
    /// k-quants: the sum of each 16 consecutive codes.
    sums16: Vec<i16>,
    /// Q6_K: 32 × the sum of each 16 codes (the weights are stored as `q + 32`).
    fix16: Vec<i32>,
    /// Q4_K: the sums of the two 32-code halves of each 64 codes, as two i16 in one i32
    /// (first half low), to multiply by the minimums of two sub-blocks at once.
    sum32_pairs: Vec<i32>,
    /// Q8_0 / Q5_0: the weights' offset (128 / 16, which makes them unsigned) × the sum of the
    /// block's 32 codes.
    fix32: Vec<i32>,
}

/// Round to nearest, ties to even, for |v| < 2²²: adding 1.5·2²³ leaves no fraction bits.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Quantizes one block: writes the codes, returns the scale. Written so that it vectorizes:
/// `max |x|` as the maximum of the bit patterns without sign (order-preserving for floats).
#[inline(always)]
fn quantize_block(x: &[f32], codes: &mut [i8]) -> f32 {
    let bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    let amax = f32::from_bits(bits);
    if bits == 0 || !amax.is_finite() {
        codes.fill(0);
        // Non-finite inputs give non-finite outputs rather than silently zero.
        return if bits == 0 { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / amax;
    for (c, &v) in codes.iter_mut().zip(x) {
        // SAFETY: |v · inv| <= 127 (plus rounding): finite and within i32.
        *c = unsafe { round_small(v * inv).to_int_unchecked::<i32>() } as i8;
    }
    amax / 127.0
}

#[inline(always)]
fn sum(codes: &[i8]) -> i32 {
    codes.iter().map(|&c| i32::from(c)).sum()
}

/// Row `r`'s codes.
fn row_mut(lines: &mut [Line], stride: usize, r: usize, k: usize) -> &mut [i8] {
    // SAFETY: `Line` is 64 plain bytes; row `r`'s `k <= stride` codes lie within them.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<i8>().add(r * stride), k) }
}

impl Activations {
    /// Quantizes the `x.len() / k` rows of `x` for a product with weights of `format`. With
    /// `avx2`, the same arithmetic is compiled for AVX2 (the CPU must have it): the codes are
    /// bit-identical either way.
    pub(super) fn quantize(format: QuantFormat, x: &[f32], k: usize, avx2: bool) -> Self {
        let m = x.len() / k;
        let stride = k.div_ceil(64) * 64;
        let mut a = Self {
            m,
            k,
            stride,
            codes: vec![Line([0; 64]); m * stride / 64],
            scales: vec![0f32; m * k / format.block_len()],
            sums16: Vec::new(),
            fix16: Vec::new(),
            sum32_pairs: Vec::new(),
            fix32: Vec::new(),
        };
        match format {
            QuantFormat::Q4K => {
                a.sums16 = vec![0; m * k / 16];
                a.sum32_pairs = vec![0; m * k / 64];
            }
            QuantFormat::Q6K => {
                a.sums16 = vec![0; m * k / 16];
                a.fix16 = vec![0; m * k / 16];
            }
            QuantFormat::Q8_0 | QuantFormat::Q5_0 => a.fix32 = vec![0; m * k / 32],
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the caller checked that the CPU has AVX2.
            unsafe { a.fill_avx2(format, x) };
            return a;
        }
        let _ = avx2;
        a.fill(format, x);
        a
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_avx2(&mut self, format: QuantFormat, x: &[f32]) {
        self.fill(format, x)
    }

    #[inline(always)]
    fn fill(&mut self, format: QuantFormat, x: &[f32]) {
        let (k, block) = (self.k, format.block_len());
        let offset = if format == QuantFormat::Q8_0 { 128 } else { 16 };
        for (r, xr) in x.chunks_exact(k).enumerate() {
            let row = row_mut(&mut self.codes, self.stride, r, k);
            let scales = &mut self.scales[r * k / block..(r + 1) * k / block];
            for ((xb, cb), s) in xr
                .chunks_exact(block)
                .zip(row.chunks_exact_mut(block))
                .zip(scales)
            {
                *s = quantize_block(xb, cb);
            }
            let row = &*row;
            if !self.sums16.is_empty() {
                let sums = &mut self.sums16[r * k / 16..(r + 1) * k / 16];
                for (s, c) in sums.iter_mut().zip(row.chunks_exact(16)) {
                    *s = sum(c) as i16;
                }
            }
            if !self.fix16.is_empty() {
                let fix = &mut self.fix16[r * k / 16..(r + 1) * k / 16];
                for (f, c) in fix.iter_mut().zip(row.chunks_exact(16)) {
                    *f = 32 * sum(c);
                }
            }
            if !self.sum32_pairs.is_empty() {
                let pairs = &mut self.sum32_pairs[r * k / 64..(r + 1) * k / 64];
                for (p, c) in pairs.iter_mut().zip(row.chunks_exact(64)) {
                    let (lo, hi) = (sum(&c[..32]), sum(&c[32..]));
                    *p = (lo & 0xffff) | (hi << 16);
                }
            }
            if !self.fix32.is_empty() {
                let fix = &mut self.fix32[r * k / 32..(r + 1) * k / 32];
                for (f, c) in fix.iter_mut().zip(row.chunks_exact(32)) {
                    *f = offset * sum(c);
                }
            }
        }
    }

    /// Number of rows.
    pub(super) fn rows(&self) -> usize {
        self.m
    }

    /// Row `r`'s `k` codes (64-byte aligned).
    #[inline]
    pub(super) fn codes(&self, r: usize) -> &[i8] {
        assert!(r < self.m);
        // SAFETY: row `r` lies within `codes` (`m` rows of `stride >= k` bytes).
        unsafe {
            std::slice::from_raw_parts(
                self.codes.as_ptr().cast::<i8>().add(r * self.stride),
                self.k,
            )
        }
    }

    /// Row `r`'s block scales.
    #[inline]
    pub(super) fn scales(&self, r: usize) -> &[f32] {
        row_of(&self.scales, self.m, r)
    }

    /// Row `r`'s sums of 16 codes (k-quants; empty otherwise).
    #[inline]
    pub(super) fn sums16(&self, r: usize) -> &[i16] {
        row_of(&self.sums16, self.m, r)
    }

    /// Row `r`'s 32 × sums of 16 codes (Q6_K; empty otherwise).
    #[inline]
    pub(super) fn fix16(&self, r: usize) -> &[i32] {
        row_of(&self.fix16, self.m, r)
    }

    /// Row `r`'s pairs of sums of 32 codes (Q4_K; empty otherwise).
    #[inline]
    pub(super) fn sum32_pairs(&self, r: usize) -> &[i32] {
        row_of(&self.sum32_pairs, self.m, r)
    }

    /// Row `r`'s offset × sums of 32 codes (Q8_0/Q5_0; empty otherwise).
    #[inline]
    pub(super) fn fix32(&self, r: usize) -> &[i32] {
        row_of(&self.fix32, self.m, r)
    }
}

/// Row `r` of a plane holding `m` equal rows.
fn row_of<T>(plane: &[T], m: usize, r: usize) -> &[T] {
    let per_row = plane.len() / m;
    &plane[r * per_row..(r + 1) * per_row]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reconstruct_input_within_half_a_step() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for format in [QuantFormat::Q4K, QuantFormat::Q8_0] {
            let a = Activations::quantize(format, &x, 256, false);
            assert_eq!(a.rows(), 2);
            let block = format.block_len();
            for r in 0..2 {
                let (codes, scales) = (a.codes(r), a.scales(r));
                for i in 0..256 {
                    let d = scales[i / block];
                    let v = x[r * 256 + i];
                    assert!((f32::from(codes[i]) * d - v).abs() <= d * 0.5001, "{v}");
                }
            }
        }
    }

    #[test]
    fn sums_match_codes() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = Activations::quantize(QuantFormat::Q6K, &x, 256, false);
        let c = a.codes(0);
        for i in 0..16 {
            let want = sum(&c[16 * i..16 * i + 16]);
            assert_eq!(i32::from(a.sums16(0)[i]), want);
            assert_eq!(a.fix16(0)[i], 32 * want);
        }
        let a = Activations::quantize(QuantFormat::Q4K, &x, 256, false);
        let c = a.codes(0);
        for i in 0..4 {
            let (lo, hi) = (
                sum(&c[64 * i..64 * i + 32]),
                sum(&c[64 * i + 32..64 * i + 64]),
            );
            let p = a.sum32_pairs(0)[i];
            assert_eq!((i32::from(p as i16), p >> 16), (lo, hi));
        }
        let a = Activations::quantize(QuantFormat::Q5_0, &x, 256, false);
        let c = a.codes(0);
        for i in 0..8 {
            assert_eq!(a.fix32(0)[i], 16 * sum(&c[32 * i..32 * i + 32]));
        }
    }
}
