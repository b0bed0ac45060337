use super::*;
use crate::cpu::Halves;

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
                    qv.iter().zip(kv).map(|(a, b)| (a * b) as f64).sum::<f64>() / (d as f64).sqrt()
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
fn chunked_cache_matches_naive_attention_serial_and_threaded() {
    // (start, n) small enough for the serial path, and large enough for the parallel one
    for (start, n, head_dim) in [(5, 3, 8), (200, 24, 64)] {
        for window in [None, Some(3), Some(120)] {
            let s = AttentionShape {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim,
                sliding_window: window,
            };
            let kv_row = s.n_kv_heads * s.head_dim;
            let k = data((start + n) * kv_row, 1);
            let v = data((start + n) * kv_row, 2);
            let q = data(n * s.n_heads * s.head_dim, 3);
            let want = naive(&q, &k, &v, start, s);
            // the same cache split into uneven chunks
            let splits = [0, 2 * kv_row, 3 * kv_row, (start + n) * kv_row];
            let keys: Vec<&[f32]> = splits.windows(2).map(|w| &k[w[0]..w[1]]).collect();
            let values: Vec<&[f32]> = splits.windows(2).map(|w| &v[w[0]..w[1]]).collect();
            for par in [&Serial as &dyn ParallelFor, &Halves] {
                let mut out = vec![0f32; q.len()];
                let kv = KvChunks {
                    keys: &keys,
                    values: &values,
                };
                attention(&q, start, kv, s, &mut out, par);
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
    }
}

/// The vectorized builds of the item loop give the portable build's bits exactly.
#[test]
fn every_instruction_set_gives_the_portable_bits() {
    let mut widths = vec![Simd::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            widths.push(Simd::Avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            widths.push(Simd::Avx512);
        }
    }
    assert!(
        widths.len() > 1 || !cfg!(target_arch = "x86_64"),
        "no AVX2 here to compare"
    );
    for (start, n, head_dim) in [(0, 5, 128), (300, 3, 128), (37, 2, 72), (7, 1, 13)] {
        let s = AttentionShape {
            n_heads: 12,
            n_kv_heads: 2,
            head_dim,
            sliding_window: None,
        };
        let (q_row, kv_row) = (s.n_heads * head_dim, s.n_kv_heads * head_dim);
        let k = data((start + n) * kv_row, 4);
        let v = data((start + n) * kv_row, 5);
        let q = data(n * q_row, 6);
        let narrow = |x: &[f32]| x.iter().map(|&a| bf16::from_f32(a)).collect::<Vec<_>>();
        let (k16, v16) = (narrow(&k), narrow(&v));
        for (f32_cache, want) in [
            (true, run_with(Simd::Portable, &q, (&k, &v), start, s)),
            (false, run_with(Simd::Portable, &q, (&k16, &v16), start, s)),
        ] {
            for &w in &widths[1..] {
                let got = if f32_cache {
                    run_with(w, &q, (&k, &v), start, s)
                } else {
                    run_with(w, &q, (&k16, &v16), start, s)
                };
                assert_eq!(
                    got, want,
                    "{w:?}, f32 cache {f32_cache}, start {start}, {n} rows, head_dim {head_dim}"
                );
            }
        }
    }
}

/// Attention of `q` over one contiguous cache with the given instruction set, as bits.
fn run_with<T: KvElem>(
    simd: Simd,
    q: &[f32],
    (k, v): (&[T], &[T]),
    start: usize,
    s: AttentionShape,
) -> Vec<u32> {
    let mut out = vec![0f32; q.len()];
    let (keys, values) = ([k], [v]);
    let seq = AttentionRows {
        q,
        q_stride: s.n_heads * s.head_dim,
        start,
        kv: KvChunks {
            keys: &keys,
            values: &values,
        },
        out: &mut out,
    };
    attention_with(simd, &mut [seq], s, &Serial);
    bits(&out)
}

/// One sequence's cache and queries for the batch tests.
struct Case {
    start: usize,
    n: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Queries inside wider rows (stride `q_row + 7`), as in a fused QKV product.
    q: Vec<f32>,
    /// Rows per cache chunk.
    split: usize,
}

impl Case {
    fn new(start: usize, n: usize, s: AttentionShape, seed: u32) -> Self {
        let kv_row = s.n_kv_heads * s.head_dim;
        let stride = s.n_heads * s.head_dim + 7;
        Self {
            start,
            n,
            k: data((start + n) * kv_row, seed),
            v: data((start + n) * kv_row, seed + 1),
            q: data(n * stride, seed + 2),
            split: 16,
        }
    }

    fn chunks(&self, s: AttentionShape) -> (Vec<&[f32]>, Vec<&[f32]>) {
        let step = self.split * s.n_kv_heads * s.head_dim;
        (self.k.chunks(step).collect(), self.v.chunks(step).collect())
    }

    /// Row `t`'s queries without the stride's padding.
    fn packed_q(&self, s: AttentionShape, rows: std::ops::Range<usize>) -> Vec<f32> {
        let (q_row, stride) = (s.n_heads * s.head_dim, s.n_heads * s.head_dim + 7);
        rows.flat_map(|t| self.q[t * stride..t * stride + q_row].iter().copied())
            .collect()
    }
}

/// A batch of sequences of different depths and row counts (1 to 19, so blocks of rows split
/// unevenly), strided queries, paged caches: each sequence's output is bit-identical to
/// attention over it alone, and each of its rows to a one-row call at that row's position (a
/// verification row equals the decode step that would have produced it).
#[test]
fn a_batch_gives_each_sequence_and_each_row_its_bits_alone() {
    for window in [None, Some(40)] {
        let s = AttentionShape {
            n_heads: 12,
            n_kv_heads: 2,
            head_dim: 64,
            sliding_window: window,
        };
        let q_row = s.n_heads * s.head_dim;
        let cases: Vec<Case> = [(0, 19), (130, 1), (57, 5), (300, 9), (3, 2)]
            .iter()
            .enumerate()
            .map(|(i, &(start, n))| Case::new(start, n, s, 10 * i as u32))
            .collect();
        let chunks: Vec<_> = cases.iter().map(|c| c.chunks(s)).collect();
        for par in [&Serial as &dyn ParallelFor, &Halves] {
            let mut outs: Vec<Vec<f32>> = cases.iter().map(|c| vec![0f32; c.n * q_row]).collect();
            let mut seqs: Vec<AttentionRows<'_>> = cases
                .iter()
                .zip(&chunks)
                .zip(outs.iter_mut())
                .map(|((c, (k, v)), out)| AttentionRows {
                    q: &c.q,
                    q_stride: q_row + 7,
                    start: c.start,
                    kv: KvChunks { keys: k, values: v },
                    out,
                })
                .collect();
            attention_batch(&mut seqs, s, par);
            for ((c, (k, v)), got) in cases.iter().zip(&chunks).zip(&outs) {
                let kv = KvChunks { keys: k, values: v };
                let mut alone = vec![0f32; c.n * q_row];
                attention(&c.packed_q(s, 0..c.n), c.start, kv, s, &mut alone, &Serial);
                assert_eq!(bits(got), bits(&alone), "start {}, {} rows", c.start, c.n);
                for t in 0..c.n {
                    let mut one = vec![0f32; q_row];
                    let q = c.packed_q(s, t..t + 1);
                    attention(&q, c.start + t, kv, s, &mut one, &Serial);
                    assert_eq!(
                        bits(&one),
                        bits(&got[t * q_row..(t + 1) * q_row]),
                        "start {}, row {t} of {}",
                        c.start,
                        c.n
                    );
                }
                let naive_out = naive(&c.packed_q(s, 0..c.n), &c.k, &c.v, c.start, s);
                for (a, b) in got.iter().zip(&naive_out) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Over bf16 keys and values, attention gives exactly its result over their f32 widenings
/// (serial and threaded).
#[test]
fn bf16_cache_gives_the_bits_of_its_f32_widening() {
    let s = AttentionShape {
        n_heads: 12,
        n_kv_heads: 2,
        head_dim: 128,
        sliding_window: None,
    };
    let (start, n) = (300, 5);
    let kv_row = s.n_kv_heads * s.head_dim;
    let k16: Vec<bf16> = data((start + n) * kv_row, 7)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let v16: Vec<bf16> = data((start + n) * kv_row, 8)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let (k32, v32): (Vec<f32>, Vec<f32>) = (
        k16.iter().map(|x| x.to_f32()).collect(),
        v16.iter().map(|x| x.to_f32()).collect(),
    );
    let q = data(n * s.n_heads * s.head_dim, 9);
    let split = 16 * kv_row;
    fn run<T: KvElem>(
        q: &[f32],
        (k, v): (&[T], &[T]),
        split: usize,
        (start, s): (usize, AttentionShape),
        par: &dyn ParallelFor,
    ) -> Vec<u32> {
        let mut out = vec![0f32; q.len()];
        let (keys, values) = ([&k[..split], &k[split..]], [&v[..split], &v[split..]]);
        let kv = KvChunks {
            keys: &keys,
            values: &values,
        };
        attention(q, start, kv, s, &mut out, par);
        out.iter().map(|x| x.to_bits()).collect()
    }
    for par in [&Serial as &dyn ParallelFor, &Halves] {
        let want = run(&q, (&k32, &v32), split, (start, s), par);
        let got = run(&q, (&k16, &v16), split, (start, s), par);
        assert_eq!(got, want);
    }
}
