//! Causal multi-head attention of new tokens over a KV cache.

use rayon::prelude::*;

use super::{axpy, dot};

/// The head layout of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Each query sees only the last `window` positions, itself included.
    pub sliding_window: Option<usize>,
}

/// A sequence's cached keys and values as runs of consecutive token rows (one run for a
/// contiguous cache, one per block for a paged one). Each row is `n_kv_heads * head_dim` floats.
#[derive(Debug, Clone, Copy)]
pub struct KvChunks<'a> {
    pub keys: &'a [&'a [f32]],
    pub values: &'a [&'a [f32]],
}

/// Computes attention for `n` new query rows of one sequence whose first new token sits at
/// position `start`; the cache must already hold keys and values for positions `0..start + n`.
///
/// `q` is `[n, n_heads * head_dim]`; the result is written to `out` of the same shape.
pub fn attention(
    q: &[f32],
    start: usize,
    kv: KvChunks<'_>,
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        sliding_window,
    } = shape;
    let q_row = n_heads * head_dim;
    let kv_row = n_kv_heads * head_dim;
    let n = q.len() / q_row;
    assert_eq!(out.len(), q.len(), "attention: output shape");
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Map a position to (chunk, row within chunk).
    let mut chunk_starts = Vec::with_capacity(kv.keys.len());
    let mut total = 0;
    for k in kv.keys {
        chunk_starts.push(total);
        total += k.len() / kv_row;
    }
    assert!(
        total >= start + n,
        "attention: cache holds {total} rows, need {}",
        start + n
    );

    let work = |(idx, o): (usize, &mut [f32])| {
        let (t, h) = (idx / n_heads, idx % n_heads);
        let pos = start + t;
        let lo = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qh = &q[t * q_row + h * head_dim..t * q_row + (h + 1) * head_dim];
        let kvh = h / group;
        let mut scores = Vec::with_capacity(pos + 1 - lo);
        let mut max = f32::NEG_INFINITY;
        for (c, keys) in kv.keys.iter().enumerate() {
            let first = chunk_starts[c];
            let rows = keys.len() / kv_row;
            for r in first.max(lo)..(first + rows).min(pos + 1) {
                let krow = &keys[(r - first) * kv_row + kvh * head_dim..][..head_dim];
                let s = dot(qh, krow) * scale;
                max = max.max(s);
                scores.push(s);
            }
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        let mut i = 0;
        for (c, values) in kv.values.iter().enumerate() {
            let first = chunk_starts[c];
            let rows = values.len() / kv_row;
            for r in first.max(lo)..(first + rows).min(pos + 1) {
                let vrow = &values[(r - first) * kv_row + kvh * head_dim..][..head_dim];
                axpy(o, scores[i] * inv, vrow);
                i += 1;
            }
        }
    };
    // Parallel only when there is enough work to pay for waking the pool.
    let cost = n * n_heads * (start + n) * head_dim;
    if cost > 1 << 18 {
        out.par_chunks_mut(head_dim).enumerate().for_each(work);
    } else {
        out.chunks_mut(head_dim).enumerate().for_each(work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward reference: softmax(q k^T / sqrt(d) + mask) v, one head at a time.
    fn naive(q: &[f32], k: &[f32], v: &[f32], start: usize, s: AttentionShape) -> Vec<f32> {
        let d = s.head_dim;
        let n = q.len() / (s.n_heads * d);
        let mut out = vec![0f32; q.len()];
        for t in 0..n {
            let pos = start + t;
            for h in 0..s.n_heads {
                let kh = h / (s.n_heads / s.n_kv_heads);
                let qv = &q[(t * s.n_heads + h) * d..][..d];
                let lo = s.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let sc: Vec<f64> = (lo..=pos)
                    .map(|j| {
                        let kv = &k[(j * s.n_kv_heads + kh) * d..][..d];
                        qv.iter().zip(kv).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (i, j) in (lo..=pos).enumerate() {
                    let vv = &v[(j * s.n_kv_heads + kh) * d..][..d];
                    for x in 0..d {
                        out[(t * s.n_heads + h) * d + x] += (e[i] / z * vv[x] as f64) as f32;
                    }
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn chunked_cache_matches_naive_attention() {
        for window in [None, Some(3)] {
            let s = AttentionShape {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 8,
                sliding_window: window,
            };
            let (start, n) = (5, 3);
            let kv_row = s.n_kv_heads * s.head_dim;
            let k = data((start + n) * kv_row, 1);
            let v = data((start + n) * kv_row, 2);
            let q = data(n * s.n_heads * s.head_dim, 3);
            let want = naive(&q, &k, &v, start, s);
            // the same cache split into uneven chunks
            let splits = [0, 2 * kv_row, 3 * kv_row, 8 * kv_row];
            let keys: Vec<&[f32]> = splits.windows(2).map(|w| &k[w[0]..w[1]]).collect();
            let values: Vec<&[f32]> = splits.windows(2).map(|w| &v[w[0]..w[1]]).collect();
            let mut out = vec![0f32; q.len()];
            attention(
                &q,
                start,
                KvChunks {
                    keys: &keys,
                    values: &values,
                },
                s,
                &mut out,
            );
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
