//! The arithmetic of the attention loops, written once per instruction set in one fixed
//! order, so that every instruction set gives the portable build's bits.
//!
//! - A dot product `q · k` (and a plain sum) keeps sixteen lane sums over the 16-element
//!   chunks, in chunk order; the lanes are then added pairwise (lane `i + 8` onto `i`, then
//!   `i + 4`, `i + 2`, `i + 1`), and the tail past the last whole chunk is added in order.
//! - `exp` and the weighted sum of value rows are element-wise, so the compiler vectorizes the
//!   shared code and each lane does what the portable build does.
//!
//! Multiplies and adds are never fused (fusing measured no faster here: the loops are bound by
//! their loads, and the portable build would need a software FMA on CPUs without one).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::KvElem;

/// Positions per tile of the value pass (their value rows stay in cache for every row and head
/// of an item).
pub(super) const VALUE_TILE: usize = 64;

/// The reductions, per instruction set.
pub(super) trait Lanes {
    /// `q · k` in the order of the module doc.
    ///
    /// # Safety
    /// The CPU must have the implementation's instruction set; `k` is as long as `q`.
    unsafe fn score<T: KvElem>(q: &[f32], k: &[T]) -> f32;

    /// `[q · k0, q · k1, q · k2, q · k3]`, each exactly as [`Lanes::score`] gives it.
    ///
    /// # Safety
    /// As for [`Lanes::score`].
    #[inline(always)]
    unsafe fn score4<T: KvElem>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
        // SAFETY: forwarded.
        k.map(|k| unsafe { Self::score(q, k) })
    }

    /// `Σ x` in the order of the module doc.
    ///
    /// # Safety
    /// The CPU must have the implementation's instruction set.
    unsafe fn sum(x: &[f32]) -> f32;
}

/// Plain Rust: the reference order.
pub(super) struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    unsafe fn score<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        let (qc, kc) = (q.chunks_exact(16), k.chunks_exact(16));
        let mut acc = [0f32; 16];
        for (a, b) in qc.zip(kc) {
            for i in 0..16 {
                acc[i] += a[i] * b[i].widen();
            }
        }
        halve(acc) + tail_dot(q, k)
    }

    #[inline(always)]
    unsafe fn sum(x: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        for c in x.chunks_exact(16) {
            for i in 0..16 {
                acc[i] += c[i];
            }
        }
        halve(acc) + tail_sum(x)
    }
}

/// Lanes added pairwise: `i + 8`, `i + 4`, `i + 2`, `i + 1` onto lane `i`.
#[inline(always)]
fn halve(mut acc: [f32; 16]) -> f32 {
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// The products past the last whole 16-element chunk, in order.
#[inline(always)]
fn tail_dot<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
    let done = q.len() / 16 * 16;
    q[done..]
        .iter()
        .zip(&k[done..])
        .fold(0f32, |s, (a, b)| s + a * b.widen())
}

/// Four reduced dot products, each plus its tail ([`tail_dot`]).
#[inline(always)]
fn plus_tails<T: KvElem>(mut d: [f32; 4], q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
    for (d, k) in d.iter_mut().zip(k) {
        *d += tail_dot(q, k);
    }
    d
}

/// The values past the last whole 16-element chunk, in order.
#[inline(always)]
fn tail_sum(x: &[f32]) -> f32 {
    x[x.len() / 16 * 16..].iter().fold(0f32, |s, &v| s + v)
}

/// AVX2: the sixteen lanes as two 8-lane vectors.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    #[inline(always)]
    unsafe fn score<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        debug_assert_eq!(q.len(), k.len());
        // SAFETY: AVX2 by the caller; every load lies within a whole chunk of `q` and `k`.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in 0..q.len() / 16 {
                let (qp, kp) = (q.as_ptr().add(16 * c), k.as_ptr().add(16 * c));
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(qp), load8(kp)));
                hi = _mm256_add_ps(
                    hi,
                    _mm256_mul_ps(_mm256_loadu_ps(qp.add(8)), load8(kp.add(8))),
                );
            }
            halve8(_mm256_add_ps(lo, hi)) + tail_dot(q, k)
        }
    }

    #[inline(always)]
    unsafe fn score4<T: KvElem>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
        // SAFETY: AVX2 by the caller; every load lies within a whole chunk of `q` and the `k`s.
        unsafe {
            let mut lo = [_mm256_setzero_ps(); 4];
            let mut hi = lo;
            for c in 0..q.len() / 16 {
                let qp = q.as_ptr().add(16 * c);
                let (q0, q1) = (_mm256_loadu_ps(qp), _mm256_loadu_ps(qp.add(8)));
                for j in 0..4 {
                    let kp = k[j].as_ptr().add(16 * c);
                    lo[j] = _mm256_add_ps(lo[j], _mm256_mul_ps(q0, load8(kp)));
                    hi[j] = _mm256_add_ps(hi[j], _mm256_mul_ps(q1, load8(kp.add(8))));
                }
            }
            // Lane i + 8 onto i, for each dot.
            let h: [__m256; 4] = std::array::from_fn(|j| _mm256_add_ps(lo[j], hi[j]));
            // Lane i + 4 onto i, two dots a vector: [d0 | d1] and [d2 | d3].
            let fold = |a: __m256, b: __m256| {
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(a, b),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                )
            };
            let (p01, p23) = (fold(h[0], h[1]), fold(h[2], h[3]));
            // Lanes i + 2, then i + 1, within each 128-bit half.
            let finish = |v: __m256| {
                let v = _mm256_add_ps(v, _mm256_shuffle_ps::<0b11_10_11_10>(v, v));
                _mm256_add_ps(v, _mm256_shuffle_ps::<0b01_01_01_01>(v, v))
            };
            let (p01, p23) = (finish(p01), finish(p23));
            let mut lanes = [0f32; 16];
            _mm256_storeu_ps(lanes.as_mut_ptr(), p01);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), p23);
            plus_tails([lanes[0], lanes[4], lanes[8], lanes[12]], q, k)
        }
    }

    #[inline(always)]
    unsafe fn sum(x: &[f32]) -> f32 {
        // SAFETY: AVX2 by the caller; every load lies within a whole chunk of `x`.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in 0..x.len() / 16 {
                let p = x.as_ptr().add(16 * c);
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(p));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(p.add(8)));
            }
            halve8(_mm256_add_ps(lo, hi)) + tail_sum(x)
        }
    }
}

/// Eight cache elements widened to f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
    // SAFETY: the caller passes 8 readable elements and has AVX2.
    unsafe {
        if T::BF16 {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// Lanes 0..8 added pairwise as [`halve`] does after its first step.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halve8(h: __m256) -> f32 {
    // SAFETY: AVX by the caller.
    unsafe {
        let a4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
        _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps::<0b01>(a2, a2)))
    }
}

/// AVX-512: the sixteen lanes as one vector.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    #[inline(always)]
    unsafe fn score<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        debug_assert_eq!(q.len(), k.len());
        // SAFETY: AVX-512F by the caller; every load lies within a whole chunk of `q` and `k`.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            for c in 0..q.len() / 16 {
                let (qp, kp) = (q.as_ptr().add(16 * c), k.as_ptr().add(16 * c));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(qp), load16(kp)));
            }
            halve16(acc) + tail_dot(q, k)
        }
    }

    #[inline(always)]
    unsafe fn score4<T: KvElem>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
        // SAFETY: AVX-512F by the caller; every load lies within a whole chunk of `q` and the
        // `k`s.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 4];
            for c in 0..q.len() / 16 {
                let qv = _mm512_loadu_ps(q.as_ptr().add(16 * c));
                for j in 0..4 {
                    let kv = load16(k[j].as_ptr().add(16 * c));
                    acc[j] = _mm512_add_ps(acc[j], _mm512_mul_ps(qv, kv));
                }
            }
            // Lane i + 8 onto i, two dots a vector: [d0 lanes 0..8 | d1 lanes 0..8].
            let fold8 = |a: __m512, b: __m512| {
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                )
            };
            let (p01, p23) = (fold8(acc[0], acc[1]), fold8(acc[2], acc[3]));
            // Lane i + 4 onto i: 128-bit lanes [d0 | d1 | d2 | d3].
            let v = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(p01, p23),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(p01, p23),
            );
            // Lanes i + 2, then i + 1, within each 128-bit lane.
            let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0b11_10_11_10>(v, v));
            let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0b01_01_01_01>(v, v));
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), v);
            plus_tails([lanes[0], lanes[4], lanes[8], lanes[12]], q, k)
        }
    }

    #[inline(always)]
    unsafe fn sum(x: &[f32]) -> f32 {
        // SAFETY: AVX-512F by the caller; every load lies within a whole chunk of `x`.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            for c in 0..x.len() / 16 {
                acc = _mm512_add_ps(acc, _mm512_loadu_ps(x.as_ptr().add(16 * c)));
            }
            halve16(acc) + tail_sum(x)
        }
    }
}

/// Sixteen cache elements widened to f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
    // SAFETY: the caller passes 16 readable elements and has AVX-512F.
    unsafe {
        if T::BF16 {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// [`halve`] on one vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halve16(v: __m512) -> f32 {
    // SAFETY: AVX-512F by the caller.
    unsafe {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        halve8(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }
}

/// Rows ahead of the one in use that the loops fetch into cache: a cached row is a few hundred
/// bytes one stride apart from the next, which the hardware prefetcher follows too late.
pub(super) const PREFETCH_ROWS: usize = 12;

/// Asks for the cache lines of `row` (a hint: no effect on results).
#[inline(always)]
pub(super) fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(row);
        let p = row.as_ptr().cast::<i8>();
        let mut at = 0;
        while at < bytes {
            // SAFETY: a hint to a line of a live slice; it never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(at)) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// `out[j] += Σ_i w[i] · rows[i][j]`, each element summed in row order (a 64-wide run of
/// `out` at a time, kept in registers). The rows of `ahead` (those after `rows`, or none) are
/// fetched into cache as it goes.
#[inline(always)]
pub(super) fn accumulate<T: KvElem>(out: &mut [f32], w: &[f32], rows: &[&[T]], ahead: &[&[T]]) {
    const RUN: usize = 64;
    let runs = out.len() / RUN;
    for c in 0..runs {
        let o = &mut out[c * RUN..(c + 1) * RUN];
        let mut acc = [0f32; RUN];
        acc.copy_from_slice(o);
        for (i, (&wi, row)) in w.iter().zip(rows).enumerate() {
            if c == 0 {
                if let Some(next) = ahead.get(i) {
                    prefetch(next);
                }
            }
            let row = &row[c * RUN..(c + 1) * RUN];
            for j in 0..RUN {
                acc[j] += wi * row[j].widen();
            }
        }
        o.copy_from_slice(&acc);
    }
    let done = runs * RUN;
    for (&wi, row) in w.iter().zip(rows) {
        for (o, x) in out[done..].iter_mut().zip(&row[done..]) {
            *o += wi * x.widen();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_halve_lanes_in_the_stated_order() {
        let x: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let mut lanes = [0f32; 16];
        for c in x.chunks_exact(16) {
            for i in 0..16 {
                lanes[i] += c[i];
            }
        }
        let mut want = lanes;
        for w in [8, 4, 2, 1] {
            for i in 0..w {
                want[i] += want[i + w];
            }
        }
        let want = want[0] + (x[32] + x[33] + x[34] + x[35] + x[36]);
        // SAFETY: the portable build needs nothing.
        assert_eq!(unsafe { Portable::sum(&x) }.to_bits(), want.to_bits());
        let ones = vec![1f32; 37];
        // SAFETY: as above.
        assert_eq!(
            unsafe { Portable::score(&x, &ones) }.to_bits(),
            want.to_bits()
        );
    }
}
