//! Dense `f32` matrix products for a few rows, one dot product per output element.

use super::{dot, ParallelFor};

/// The output buffer, shared by threads that write disjoint columns of it.
struct SharedOut(*mut f32);
// SAFETY: every thread writes only the output columns of the weight-row range it was given,
// ranges are disjoint, and the buffer outlives all of them (`for_each_range` returns when they
// finish).
unsafe impl Sync for SharedOut {}

/// `out[r * n + j] = x[r] · w[j]` for `m = x.len() / k` input rows and `n = w.len() / k` weight
/// rows, split over weight rows with `par`.
///
/// Every output element is one [`dot`] of two rows, so a row's result is bit-identical whatever
/// the other rows of `x` are and however the work is split: speculative verification of k
/// tokens then yields exactly the logits k single-token steps would.
pub fn dense_matmul(w: &[f32], x: &[f32], k: usize, out: &mut [f32], par: &dyn ParallelFor) {
    assert!(
        k > 0 && w.len().is_multiple_of(k) && x.len().is_multiple_of(k),
        "dense_matmul: shape mismatch"
    );
    let (n, m) = (w.len() / k, x.len() / k);
    assert_eq!(out.len(), m * n, "dense_matmul: output shape");
    let shared = SharedOut(out.as_mut_ptr());
    par.for_each_range(n, &|range| {
        let shared = &shared;
        for j in range {
            let wr = &w[j * k..(j + 1) * k];
            for r in 0..m {
                let v = dot(&x[r * k..(r + 1) * k], wr);
                // SAFETY: `r * n + j < m * n = out.len()`, and column `j` belongs to this
                // range only.
                unsafe { *shared.0.add(r * n + j) = v };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Halves, Serial};

    #[test]
    fn rows_match_a_naive_product_and_do_not_depend_on_the_batch() {
        let (n, k) = (37, 19);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..5 * k)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let mut out = vec![0f32; 5 * n];
        dense_matmul(&w, &x, k, &mut out, &Halves);
        for r in 0..5 {
            for j in 0..n {
                let naive: f32 = (0..k).map(|i| x[r * k + i] * w[j * k + i]).sum();
                assert!((out[r * n + j] - naive).abs() < 1e-4);
            }
            let mut alone = vec![0f32; n];
            dense_matmul(&w, &x[r * k..(r + 1) * k], k, &mut alone, &Serial);
            assert_eq!(alone, out[r * n..(r + 1) * n]);
        }
    }
}
