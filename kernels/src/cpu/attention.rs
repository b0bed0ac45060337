//! Causal multi-head attention of new tokens over a KV cache.

use std::ops::Range;

pub use half::bf16;

use super::{axpy, dot_widened as dot};

/// Runs a closure over index ranges that together cover `0..n`, possibly on several threads.
/// The engine plugs in the thread pool its matrix products already use, so that attention
/// does not wake a second pool on the same cores.
pub trait ParallelFor: Sync {
    /// Calls `f` on disjoint ranges covering `0..n` and returns when all calls are done.
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync));
}

/// Everything on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl ParallelFor for Serial {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        f(0..n)
    }
}

/// The output buffer, shared by threads that write disjoint heads of it.
struct SharedOut(*mut f32);
// SAFETY: every thread writes only the rows of the index range it was given, ranges are
// disjoint, and the caller outlives all of them (`for_each_range` returns when they finish).
unsafe impl Sync for SharedOut {}

/// The head layout of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Each query sees only the last `window` positions, itself included.
    pub sliding_window: Option<usize>,
}

/// An element of a KV cache: f32, or bf16 (half the memory; widened exactly to f32 as read, so
/// attention over bf16 keys and values gives the bits it gives over their f32 widenings).
pub trait KvElem: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
}

impl KvElem for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl KvElem for bf16 {
    /// bf16 is the top half of an f32: a shift, which vectorizes.
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// A sequence's cached keys and values as runs of consecutive token rows (one run for a
/// contiguous cache, one per block for a paged one). Each row is `n_kv_heads * head_dim`
/// elements.
#[derive(Debug, Clone, Copy)]
pub struct KvChunks<'a, T = f32> {
    pub keys: &'a [&'a [T]],
    pub values: &'a [&'a [T]],
}

/// Computes attention for `n` new query rows of one sequence whose first new token sits at
/// position `start`; the cache must already hold keys and values for positions `0..start + n`.
///
/// `q` is `[n, n_heads * head_dim]`; the result is written to `out` of the same shape.
pub fn attention<T: KvElem>(
    q: &[f32],
    start: usize,
    kv: KvChunks<'_, T>,
    shape: AttentionShape,
    out: &mut [f32],
    par: &dyn ParallelFor,
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

    let head = Head {
        q,
        kv,
        start,
        q_row,
        kv_row,
        head_dim,
        n_heads,
        group,
        scale,
        sliding_window,
        chunk_starts: &chunk_starts,
    };
    let simd = Simd::detect();
    let work = |idx: usize, o: &mut [f32]| head.run(simd, idx, o);
    // Parallel only when there is enough work to pay for waking the pool.
    let cost = n * n_heads * (start + n) * head_dim;
    if cost <= 1 << 18 {
        for (idx, o) in out.chunks_mut(head_dim).enumerate() {
            work(idx, o);
        }
        return;
    }
    let shared = SharedOut(out.as_mut_ptr());
    let shared = &shared;
    par.for_each_range(n * n_heads, &|range: Range<usize>| {
        for idx in range {
            // SAFETY: `idx < n * n_heads`, so the row lies inside `out`; see `SharedOut`.
            let o =
                unsafe { std::slice::from_raw_parts_mut(shared.0.add(idx * head_dim), head_dim) };
            work(idx, o);
        }
    });
}

/// One query head of one new row: everything [`attention`] shares between them.
struct Head<'a, T> {
    q: &'a [f32],
    kv: KvChunks<'a, T>,
    start: usize,
    q_row: usize,
    kv_row: usize,
    head_dim: usize,
    n_heads: usize,
    group: usize,
    scale: f32,
    sliding_window: Option<usize>,
    chunk_starts: &'a [usize],
}

/// The widest vector instructions this CPU has for the attention loops. The same code is
/// compiled for each: lane-wise multiplies and adds (never fused) in the same order, so every
/// width gives the same bits as the portable build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

impl<T: KvElem> Head<'_, T> {
    /// Writes head `idx % n_heads` of new row `idx / n_heads` into `o`.
    fn run(&self, simd: Simd, idx: usize, o: &mut [f32]) {
        match simd {
            Simd::Portable => self.compute(idx, o),
            // SAFETY: `Simd::detect` found the features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.compute_avx2(idx, o) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.compute_avx512(idx, o) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn compute_avx2(&self, idx: usize, o: &mut [f32]) {
        self.compute(idx, o)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn compute_avx512(&self, idx: usize, o: &mut [f32]) {
        self.compute(idx, o)
    }

    #[inline(always)]
    fn compute(&self, idx: usize, o: &mut [f32]) {
        let (head_dim, kv_row) = (self.head_dim, self.kv_row);
        let (t, h) = (idx / self.n_heads, idx % self.n_heads);
        let pos = self.start + t;
        let lo = self
            .sliding_window
            .map_or(0, |w| (pos + 1).saturating_sub(w));
        let qh = &self.q[t * self.q_row + h * head_dim..t * self.q_row + (h + 1) * head_dim];
        let kvh = h / self.group;
        let mut scores = Vec::with_capacity(pos + 1 - lo);
        let mut max = f32::NEG_INFINITY;
        for (c, keys) in self.kv.keys.iter().enumerate() {
            let first = self.chunk_starts[c];
            let rows = keys.len() / kv_row;
            for r in first.max(lo)..(first + rows).min(pos + 1) {
                let krow = &keys[(r - first) * kv_row + kvh * head_dim..][..head_dim];
                let s = dot(qh, krow) * self.scale;
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
        for (c, values) in self.kv.values.iter().enumerate() {
            let first = self.chunk_starts[c];
            let rows = values.len() / kv_row;
            for r in first.max(lo)..(first + rows).min(pos + 1) {
                let vrow = &values[(r - first) * kv_row + kvh * head_dim..][..head_dim];
                axpy(o, scores[i] * inv, vrow);
                i += 1;
            }
        }
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

    /// Two scoped threads splitting the range in halves.
    struct Threads;
    impl ParallelFor for Threads {
        fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
            std::thread::scope(|s| {
                s.spawn(|| f(0..n / 2));
                s.spawn(|| f(n / 2..n));
            });
        }
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
                for par in [&Serial as &dyn ParallelFor, &Threads] {
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

    /// The vectorized builds of the per-head loop give the portable build's bits exactly.
    #[test]
    fn every_instruction_set_gives_the_portable_bits() {
        let mut widths = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
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
            let (n_heads, n_kv_heads) = (12, 2);
            let (q_row, kv_row) = (n_heads * head_dim, n_kv_heads * head_dim);
            let k = data((start + n) * kv_row, 4);
            let v = data((start + n) * kv_row, 5);
            let q = data(n * q_row, 6);
            let keys = [&k[..]];
            let values = [&v[..]];
            let head = Head {
                q: &q,
                kv: KvChunks {
                    keys: &keys,
                    values: &values,
                },
                start,
                q_row,
                kv_row,
                head_dim,
                n_heads,
                group: n_heads / n_kv_heads,
                scale: 1.0 / (head_dim as f32).sqrt(),
                sliding_window: None,
                chunk_starts: &[0],
            };
            let run = |simd| {
                let mut out = vec![0f32; n * q_row];
                for (idx, o) in out.chunks_mut(head_dim).enumerate() {
                    head.run(simd, idx, o);
                }
                out.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
            };
            let want = run(Simd::Portable);
            for &w in &widths[1..] {
                assert_eq!(
                    run(w),
                    want,
                    "{w:?}, start {start}, {n} rows, head_dim {head_dim}"
                );
            }
        }
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
        for par in [&Serial as &dyn ParallelFor, &Threads] {
            let want = run(&q, (&k32, &v32), split, (start, s), par);
            let got = run(&q, (&k16, &v16), split, (start, s), par);
            assert_eq!(got, want);
        }
    }
}
