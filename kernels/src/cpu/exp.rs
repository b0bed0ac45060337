//! `e^x` and SwiGLU's `silu(g) · u` in plain multiplies and adds: vectorized by the compiler,
//! and the same bits on every vector width (lane-wise IEEE operations in one fixed order,
//! never fused), unlike libm's scalar `expf`, which the loops would call once per element.

use super::ParallelFor;

/// `e^x` within 2 ulp for `x` in [−87, 88] (Cody–Waite reduction by `ln 2`, then Cephes'
/// degree-6 polynomial). Arguments are clamped to that range first: below it the result is
/// `e^−87` (~1.6e−38; callers add it to 1 or to a maximum's 1), above it `e^88`; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with few enough bits that n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    // Comparisons rather than `max`/`min`, which would drop a NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // n = round(x / ln 2), by the 1.5 · 2²³ trick (ties to even).
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2ⁿ for n in −126..=127 (NaN gives n = 0 and e stays NaN).
    let two_n = f32::from_bits((((n as i32) + 127) as u32) << 23);
    e * two_n
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(g) = g / (1 + e^−g)`, the SwiGLU activation of
/// Llama-family MLPs.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "silu_mul: length mismatch"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected.
            return unsafe { silu_avx512(gate, up, out) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { silu_avx2(gate, up, out) };
        }
    }
    silu_body(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_body(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn silu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_body(gate, up, out)
}

#[inline(always)]
fn silu_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// [`silu_mul`] over rows of a fused gate/up product (`[gate | up]`, `2 · inter` values a row)
/// into rows of `inter`, split over `par` when there is enough of it.
pub fn silu_mul_rows(gate_up: &[f32], inter: usize, out: &mut [f32], par: &dyn ParallelFor) {
    let rows = out.len() / inter.max(1);
    assert!(
        inter > 0 && out.len() == rows * inter && gate_up.len() == 2 * out.len(),
        "silu_mul_rows: {} gate/up values, {} outputs, rows of {inter}",
        gate_up.len(),
        out.len()
    );
    // Pieces of a row: enough of them to share, each long enough to vectorize.
    const PIECE: usize = 2048;
    let pieces = inter.div_ceil(PIECE);
    let shared = SharedOut(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        for i in range {
            let (r, p) = (i / pieces, i % pieces);
            let cols = p * PIECE..((p + 1) * PIECE).min(inter);
            let row = &gate_up[r * 2 * inter..(r + 1) * 2 * inter];
            // SAFETY: piece `i` writes only its own columns of its own row of `out`.
            let o = unsafe {
                std::slice::from_raw_parts_mut(shared.at(r * inter + cols.start), cols.len())
            };
            silu_mul(
                &row[cols.clone()],
                &row[inter + cols.start..inter + cols.end],
                o,
            );
        }
    };
    // Below this many values waking the pool costs more than it saves.
    if out.len() < 1 << 16 {
        run(0..rows * pieces);
    } else {
        par.for_each_range(rows * pieces, &run);
    }
}

/// The output, shared by threads that write disjoint pieces of it.
struct SharedOut(*mut f32);
// SAFETY: each piece is written by one thread; the buffer outlives `for_each_range`.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Element `i` (the closure holds the whole wrapper, not its raw pointer).
    ///
    /// # Safety
    /// `i` lies within the buffer.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: by the caller.
        unsafe { self.0.add(i) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Halves, Serial};

    #[test]
    fn exp_is_within_two_ulp_over_its_range_and_clamps_outside() {
        let mut x = 88f32;
        while x > -87.0 {
            let want = f64::from(x).exp();
            let got = exp(x);
            let ulp = f64::from(f32::from_bits(got.to_bits() + 1) - got);
            assert!(
                (f64::from(got) - want).abs() <= 2.0 * ulp,
                "exp({x}) = {got}, exact {want}"
            );
            x -= 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-1000.0) < 1e-37);
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn silu_mul_matches_definition_and_rows_match_one_call() {
        let g: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) / 97.0).collect();
        let u: Vec<f32> = (0..5000).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let mut o = vec![0f32; g.len()];
        silu_mul(&g, &u, &mut o);
        for ((&g, &u), &o) in g.iter().zip(&u).zip(&o) {
            let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
            assert!(
                (f64::from(o) - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{o} vs {want}"
            );
        }
        assert_eq!(silu_body_bits(&g, &u), bits(&o), "vector widths differ");
        // Rows of [gate | up]: 3 rows of 5000, in pieces, serial and on threads.
        let mut gu = Vec::new();
        for _ in 0..3 {
            gu.extend_from_slice(&g);
            gu.extend_from_slice(&u);
        }
        for par in [&Serial as &dyn ParallelFor, &Halves] {
            let mut rows = vec![0f32; 3 * 5000];
            silu_mul_rows(&gu, 5000, &mut rows, par);
            for r in rows.chunks_exact(5000) {
                assert_eq!(bits(r), bits(&o));
            }
        }
    }

    fn silu_body_bits(g: &[f32], u: &[f32]) -> Vec<u32> {
        let mut o = vec![0f32; g.len()];
        silu_body(g, u, &mut o);
        bits(&o)
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }
}
