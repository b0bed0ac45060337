//! The ggml block layouts, byte for byte as GGUF files store them, and their scalar decoding.
//!
//! - Q4_K, 256 weights in 144 bytes: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
//!   Sub-block `j` (32 weights) has a 6-bit scale `sc_j` and min `m_j`; weight = `d·sc_j·q −
//!   dmin·m_j`. Byte `i` of the `qs` group `g` (32 bytes) holds weight `64g + i` in its low
//!   nibble and weight `64g + 32 + i` in its high nibble.
//! - Q6_K, 256 weights in 210 bytes: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`;
//!   weight = `d·scale[i/16]·(q − 32)`, `q` a 6-bit value split over `ql` and `qh`.
//! - Q8_0, 32 weights in 34 bytes: `d: f16, qs: [i8; 32]`; weight = `d·q`.
//! - Q5_0, 32 weights in 22 bytes: `d: f16, qh: u32, qs: [u8; 16]`; weight = `d·(q − 16)` with
//!   the low nibble of `qs[i]` for weight `i`, the high nibble for `i + 16`, bit `i` of `qh` the
//!   fifth bit of weight `i`.

use super::QuantFormat;

/// Weights in a k-quant super-block.
pub(super) const QK_K: usize = 256;
/// Weights in a Q8_0 or Q5_0 block.
pub(super) const QK32: usize = 32;

pub(super) const Q4K_BYTES: usize = 144;
pub(super) const Q6K_BYTES: usize = 210;
pub(super) const Q8_0_BYTES: usize = 34;
pub(super) const Q5_0_BYTES: usize = 22;

impl QuantFormat {
    /// Weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::Q4K | Self::Q6K => QK_K,
            Self::Q8_0 | Self::Q5_0 => QK32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => Q4K_BYTES,
            Self::Q6K => Q6K_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
            Self::Q5_0 => Q5_0_BYTES,
        }
    }
}

/// IEEE half precision bits to `f32` (exact: every half is an `f32`).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        // Subnormal: man · 2⁻²⁴, exact in f32.
        0 => sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
        31 => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The little-endian half at `b[off..off + 2]`, as `f32`.
#[inline]
pub(super) fn read_f16(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

/// The eight 6-bit scales and eight 6-bit mins packed in a Q4_K block's 12 `scales` bytes.
/// Bytes 0–3 hold scales 0–3 (and in bits 6–7 the high bits of scales 4–7), bytes 4–7 the mins
/// 0–3 (high bits of mins 4–7), bytes 8–11 the low nibbles of scales 4–7 and mins 4–7.
#[inline]
pub(super) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let sc_lo = a & 0x3f3f_3f3f;
    let mn_lo = b & 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | ((a >> 2) & 0x3030_3030);
    let mn_hi = ((c >> 4) & 0x0f0f_0f0f) | ((b >> 2) & 0x3030_3030);
    let join = |lo: u32, hi: u32| (u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes();
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}

/// The 256 4-bit values of a Q4_K block's `qs`, in weight order.
#[inline]
pub(super) fn q4k_unpack(qs: &[u8], q: &mut [u8; QK_K]) {
    for g in 0..4 {
        for i in 0..32 {
            let b = qs[32 * g + i];
            q[64 * g + i] = b & 0x0f;
            q[64 * g + 32 + i] = b >> 4;
        }
    }
}

/// The 256 6-bit values (0..=63, offset 32 not removed) of a Q6_K block, in weight order.
#[inline]
pub(super) fn q6k_unpack(block: &[u8], q: &mut [u8; QK_K]) {
    let (ql, qh) = (&block[..128], &block[128..192]);
    for half in 0..2 {
        let (ql, qh, q) = (&ql[64 * half..], &qh[32 * half..], &mut q[128 * half..]);
        for l in 0..32 {
            let h = qh[l];
            q[l] = (ql[l] & 0x0f) | ((h & 3) << 4);
            q[l + 32] = (ql[l + 32] & 0x0f) | (((h >> 2) & 3) << 4);
            q[l + 64] = (ql[l] >> 4) | (((h >> 4) & 3) << 4);
            q[l + 96] = (ql[l + 32] >> 4) | ((h >> 6) << 4);
        }
    }
}

/// The 32 5-bit values (0..=31, offset 16 not removed) of a Q5_0 block, in weight order.
#[inline]
pub(super) fn q5_0_unpack(block: &[u8], q: &mut [u8; QK32]) {
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let qs = &block[6..22];
    for i in 0..16 {
        q[i] = (qs[i] & 0x0f) | ((((qh >> i) & 1) as u8) << 4);
        q[i + 16] = (qs[i] >> 4) | ((((qh >> (i + 16)) & 1) as u8) << 4);
    }
}

/// Decodes one block of `format` into `out` (`format.block_len()` values).
pub(super) fn dequantize_block(format: QuantFormat, block: &[u8], out: &mut [f32]) {
    match format {
        QuantFormat::Q4K => {
            let (d, dmin) = (read_f16(block, 0), read_f16(block, 2));
            let (sc, mn) = q4k_scales_mins(&block[4..16]);
            let mut q = [0u8; QK_K];
            q4k_unpack(&block[16..144], &mut q);
            for (i, (o, &q)) in out.iter_mut().zip(&q).enumerate() {
                let j = i / 32;
                *o = d * f32::from(sc[j]) * f32::from(q) - dmin * f32::from(mn[j]);
            }
        }
        QuantFormat::Q6K => {
            let d = read_f16(block, 208);
            let mut q = [0u8; QK_K];
            q6k_unpack(block, &mut q);
            for (i, (o, &q)) in out.iter_mut().zip(&q).enumerate() {
                let sc = block[192 + i / 16] as i8;
                *o = d * f32::from(sc) * f32::from(q as i8 - 32);
            }
        }
        QuantFormat::Q8_0 => {
            let d = read_f16(block, 0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = d * f32::from(q as i8);
            }
        }
        QuantFormat::Q5_0 => {
            let d = read_f16(block, 0);
            let mut q = [0u8; QK32];
            q5_0_unpack(block, &mut q);
            for (o, &q) in out.iter_mut().zip(&q) {
                *o = d * f32::from(q as i8 - 16);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    /// Every half against the CPU's own conversion, where it has one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_matches_hardware_for_all_values() {
        if !is_x86_feature_detected!("f16c") {
            return;
        }
        use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
        for h in 0..=u16::MAX {
            // SAFETY: f16c was detected above.
            let hw = unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h)))) };
            let ours = f16_to_f32(h);
            assert!(
                ours.to_bits() == hw.to_bits() || (ours.is_nan() && hw.is_nan()),
                "{h:#06x}: {ours} vs {hw}"
            );
        }
    }

    #[test]
    fn q4k_scales_match_bytewise_definition() {
        let s: [u8; 12] = [
            0xc1, 0x52, 0x7f, 0x03, 0x85, 0xe6, 0x47, 0x38, 0x9a, 0x2b, 0xfc, 0x0d,
        ];
        let (sc, mn) = q4k_scales_mins(&s);
        for j in 0..8 {
            let (want_sc, want_mn) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            assert_eq!((sc[j], mn[j]), (want_sc, want_mn), "sub-block {j}");
        }
    }
}
