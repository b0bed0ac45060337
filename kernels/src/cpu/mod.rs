//! CPU reference kernels over `f32` slices.

mod attention;
mod dense;
mod exp;
pub mod qmatmul;
mod rope;
pub mod sample;

pub use attention::{
    attention, attention_batch, bf16, AttentionRows, AttentionShape, KvChunks, KvElem, ParallelFor,
    Serial,
};
pub use dense::dense_matmul;
pub use exp::{exp, silu_mul, silu_mul_rows};
pub use qmatmul::{quant_matmul, QuantFormat, QuantKernel, QuantMatrix, QuantMatrixError};
pub use rope::{apply_rope, rope_tables, RopeTables};

/// Root-mean-square normalization of each row of `x` (rows as long as `weight`), scaled by
/// `weight`: `out = x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert!(
        x.len() == out.len() && x.len().is_multiple_of(d),
        "rms_norm: shape mismatch"
    );
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot(row, row) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// `dst += src`.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_assign: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Dot product with several independent accumulators so that it vectorizes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Two scoped threads splitting the range in halves: the kernels' tests of a split.
#[cfg(test)]
pub(crate) struct Halves;

#[cfg(test)]
impl ParallelFor for Halves {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        std::thread::scope(|s| {
            s.spawn(|| f(0..n / 2));
            s.spawn(|| f(n / 2..n));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5, 0.0, 4.0];
        let w = [1.0f32, 0.5, 2.0];
        let mut out = [0f32; 6];
        rms_norm(&x, &w, 1e-5, &mut out);
        for r in 0..2 {
            let row = &x[r * 3..r * 3 + 3];
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 3.0;
            for i in 0..3 {
                let want = row[i] / (ms + 1e-5).sqrt() * w[i];
                assert!((out[r * 3 + i] - want).abs() < 1e-6);
            }
        }
    }
}
