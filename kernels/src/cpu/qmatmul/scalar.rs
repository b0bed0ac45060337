//! Portable kernels: the reference the SIMD kernels are tested against, and the path on CPUs
//! without AVX2.
//!
//! Each weight block is decoded once, then dotted with the block's codes of every input row:
//! exact integer block totals, folded into each output by [`step`] in block order.

use std::ops::Range;

use super::activation::Activations;
use super::format::{
    q4k_scales_mins, q4k_unpack, q5_0_unpack, q6k_unpack, read_f16, Q4K_BYTES, Q5_0_BYTES,
    Q6K_BYTES, Q8_0_BYTES, QK32, QK_K,
};
use super::{step, step_min, OutPtr, QuantFormat, QuantMatrix, MAX_ROWS};

/// Computes output columns `cols` (weight rows) for every input row.
pub(super) fn matmul_cols(w: &QuantMatrix, a: &Activations, cols: Range<usize>, out: OutPtr) {
    match w.format() {
        QuantFormat::Q4K => q4k(w, a, cols, out),
        QuantFormat::Q6K => q6k(w, a, cols, out),
        QuantFormat::Q8_0 => q8_0(w, a, cols, out),
        QuantFormat::Q5_0 => q5_0(w, a, cols, out),
    }
}

fn dot_i32(q: &[u8], x: &[i8]) -> i32 {
    q.iter()
        .zip(x)
        .map(|(&q, &x)| i32::from(q) * i32::from(x))
        .sum()
}

/// Runs `block_sum(b, block_bytes, r, acc)` for every block `b` of weight row `j` and every input
/// row `r`, then writes the accumulated sums.
fn for_each_col(
    w: &QuantMatrix,
    m: usize,
    cols: Range<usize>,
    out: OutPtr,
    mut block: impl FnMut(usize, &[u8], &mut [f32]),
) {
    let bytes = w.format().block_bytes();
    let row_bytes = w.cols() / w.format().block_len() * bytes;
    for j in cols {
        let mut acc = [0f32; MAX_ROWS];
        let row = &w.data()[j * row_bytes..(j + 1) * row_bytes];
        for (b, blk) in row.chunks_exact(bytes).enumerate() {
            block(b, blk, &mut acc[..m]);
        }
        for (r, &v) in acc[..m].iter().enumerate() {
            // SAFETY: `r < m` and `j` is in this call's column range.
            unsafe { out.write(r, j, v) };
        }
    }
}

fn q4k(w: &QuantMatrix, a: &Activations, cols: Range<usize>, out: OutPtr) {
    debug_assert_eq!(w.format().block_bytes(), Q4K_BYTES);
    let mut q = [0u8; QK_K];
    for_each_col(w, a.rows(), cols, out, |b, blk, acc| {
        let (d, dmin) = (read_f16(blk, 0), read_f16(blk, 2));
        let (sc, mn) = q4k_scales_mins(&blk[4..16]);
        q4k_unpack(&blk[16..144], &mut q);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = &a.codes(r)[b * QK_K..(b + 1) * QK_K];
            let (mut t, mut mt) = (0i32, 0i32);
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                t += i32::from(sc[j]) * dot_i32(&q[32 * j..32 * j + 32], xs);
                mt += i32::from(mn[j]) * xs.iter().map(|&v| i32::from(v)).sum::<i32>();
            }
            let dx = a.scales(r)[b];
            *acc = step_min(step(*acc, t, d, dx), mt, dmin, dx);
        }
    });
}

fn q6k(w: &QuantMatrix, a: &Activations, cols: Range<usize>, out: OutPtr) {
    debug_assert_eq!(w.format().block_bytes(), Q6K_BYTES);
    let mut q = [0u8; QK_K];
    for_each_col(w, a.rows(), cols, out, |b, blk, acc| {
        let d = read_f16(blk, 208);
        q6k_unpack(blk, &mut q);
        let sc = &blk[192..208];
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = &a.codes(r)[b * QK_K..(b + 1) * QK_K];
            let mut t = 0i32;
            for i in 0..16 {
                let xs = &x[16 * i..16 * i + 16];
                // The values are q + 32: take 32 · (sum of x) back out.
                let sum: i32 = xs.iter().map(|&v| i32::from(v)).sum();
                t += i32::from(sc[i] as i8) * (dot_i32(&q[16 * i..16 * i + 16], xs) - 32 * sum);
            }
            *acc = step(*acc, t, d, a.scales(r)[b]);
        }
    });
}

fn q8_0(w: &QuantMatrix, a: &Activations, cols: Range<usize>, out: OutPtr) {
    debug_assert_eq!(w.format().block_bytes(), Q8_0_BYTES);
    for_each_col(w, a.rows(), cols, out, |b, blk, acc| {
        let d = read_f16(blk, 0);
        let q = &blk[2..34];
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = &a.codes(r)[b * QK32..(b + 1) * QK32];
            let t: i32 = q
                .iter()
                .zip(x)
                .map(|(&q, &x)| i32::from(q as i8) * i32::from(x))
                .sum();
            *acc = step(*acc, t, d, a.scales(r)[b]);
        }
    });
}

fn q5_0(w: &QuantMatrix, a: &Activations, cols: Range<usize>, out: OutPtr) {
    debug_assert_eq!(w.format().block_bytes(), Q5_0_BYTES);
    let mut q = [0u8; QK32];
    for_each_col(w, a.rows(), cols, out, |b, blk, acc| {
        let d = read_f16(blk, 0);
        q5_0_unpack(blk, &mut q);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = &a.codes(r)[b * QK32..(b + 1) * QK32];
            let t: i32 = q
                .iter()
                .zip(x)
                .map(|(&q, &x)| (i32::from(q) - 16) * i32::from(x))
                .sum();
            *acc = step(*acc, t, d, a.scales(r)[b]);
        }
    });
}
