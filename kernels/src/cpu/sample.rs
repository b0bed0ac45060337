//! Decisions taken from logits, as the CUDA kernels of `sample.cu` take them: the references
//! those kernels are tested against, mirroring their order of operations exactly. The CPU
//! forward decides greedy verdicts with [`accept_greedy`] too; its sampled acceptance is
//! `speculative::accept`, which agrees with [`rejection_sample`] in distribution.

/// Index of the largest value (the first on ties) and its softmax probability.
pub fn argmax_prob(logits: &[f32]) -> (u32, f32) {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    let m = logits[best];
    let s: f32 = logits.iter().map(|&x| (x - m).exp()).sum();
    (best as u32, 1.0 / s)
}

/// Greedy acceptance: `ids` is the step's input of one sequence (last committed token, then the
/// drafts), `choices` the target's argmax of each row. Returns (drafts kept, next token).
pub fn accept_greedy(ids: &[u32], choices: &[u32]) -> (usize, u32) {
    let mut a = 0;
    while a + 1 < ids.len() && choices[a] == ids[a + 1] {
        a += 1;
    }
    (a, choices[a])
}

/// `softmax(logits · inv_temp)`.
pub fn softmax(logits: &[f32], inv_temp: f32) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&x| ((x - m) * inv_temp).exp()).collect();
    let s: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= s);
    p
}

/// Threads of the sampling kernels: the draw walks `THREADS` contiguous segments.
pub const THREADS: usize = 1024;

/// Draws an index from the non-negative values `at(0..v)` with the uniform `u` the way the
/// kernel does: segment sums (in index order), their total (in segment order), then a walk to
/// the segment holding `u · total` and through it. `None` when the values have no mass.
pub fn draw(v: usize, at: impl Fn(usize) -> f32, u: f32) -> Option<u32> {
    let seg = v.div_ceil(THREADS);
    let sums: Vec<f32> = (0..THREADS)
        .map(|t| {
            let (lo, hi) = ((t * seg).min(v), ((t + 1) * seg).min(v));
            let mut s = 0f32;
            for i in lo..hi {
                s += at(i);
            }
            s
        })
        .collect();
    let mut total = 0f32;
    for &s in &sums {
        total += s;
    }
    if total <= f32::EPSILON {
        return None;
    }
    let mut r = u * total;
    let mut last = None;
    for (t, &s) in sums.iter().enumerate() {
        let (a, b) = (t * seg, ((t + 1) * seg).min(v));
        if a >= b {
            break;
        }
        if s > 0.0 && r >= s {
            last = (a..b)
                .rev()
                .find(|&i| at(i) > 0.0)
                .map(|i| i as u32)
                .or(last);
            r -= s;
            continue;
        }
        for i in a..b {
            let x = at(i);
            if x > 0.0 {
                last = Some(i as u32);
                if r < x {
                    return Some(i as u32);
                }
                r -= x;
            }
        }
    }
    last
}

/// Speculative rejection sampling of one sequence, as the kernel does it. `p` holds one target
/// row per input token (`ids`: last committed token, then the drafts), `q` one draft row per
/// draft (`None`: one-hot drafts), `u` at least `ids.len()` uniforms: `u[i]` decides draft `i`,
/// `u[drafts]` draws the token. Returns (drafts kept, token drawn).
pub fn rejection_sample(
    p: &[&[f32]],
    q: Option<&[&[f32]]>,
    ids: &[u32],
    u: &[f32],
) -> (usize, u32) {
    let drafts = ids.len() - 1;
    for i in 0..drafts {
        let d = ids[i + 1] as usize;
        let pi = p[i];
        let qi = q.map(|q| q[i]);
        let pd = pi[d];
        let qd = qi.map_or(1.0, |q| q[d]);
        let keep = if qd <= 0.0 {
            if pd > 0.0 {
                1.0
            } else {
                0.0
            }
        } else {
            (pd / qd).min(1.0)
        };
        if u[i] >= keep {
            let residual = |j: usize| {
                let qj = match qi {
                    Some(q) => q[j],
                    None => f32::from(u8::from(j == d)),
                };
                (pi[j] - qj).max(0.0)
            };
            let tok = draw(pi.len(), residual, u[drafts])
                .or_else(|| draw(pi.len(), |j| pi[j], u[drafts]))
                .unwrap_or(0);
            return (i, tok);
        }
    }
    let last = p[drafts];
    (
        drafts,
        draw(last.len(), |j| last[j], u[drafts]).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_follows_the_cumulative_distribution() {
        let p = [0.0f32, 0.25, 0.0, 0.5, 0.25];
        assert_eq!(draw(5, |i| p[i], 0.0), Some(1));
        assert_eq!(draw(5, |i| p[i], 0.3), Some(3));
        assert_eq!(draw(5, |i| p[i], 0.99), Some(4));
        assert_eq!(draw(5, |_| 0.0, 0.5), None);
        // Many segments: the walk skips whole segments by their sums.
        let big: Vec<f32> = (0..5000)
            .map(|i| if i % 7 == 0 { 1.0 } else { 0.0 })
            .collect();
        let n = big.iter().filter(|&&x| x > 0.0).count() as f32;
        let want = ((0.5 * n) as usize) * 7;
        assert_eq!(
            draw(big.len(), |i| big[i], 0.5 + 0.1 / n),
            Some(want as u32)
        );
    }

    #[test]
    fn rejection_keeps_certain_drafts_and_resamples_after_a_rejection() {
        let sure = [0.0f32, 1.0, 0.0];
        let never = [1.0f32, 0.0, 0.0];
        // Draft 1 has p = 1: kept whatever u; then draft 1 again against p = never: rejected,
        // and the residual (p minus one-hot on 1) is all on 0.
        let (a, t) = rejection_sample(&[&sure, &never, &sure], None, &[5, 1, 1], &[0.99, 0.0, 0.5]);
        assert_eq!((a, t), (1, 0));
        // All kept: the token is drawn from the last row.
        let (a, t) = rejection_sample(&[&sure, &sure], None, &[5, 1], &[0.5, 0.5]);
        assert_eq!((a, t), (1, 1));
        assert_eq!(accept_greedy(&[9, 4, 5, 6], &[4, 5, 7, 1]), (2, 7));
        assert_eq!(argmax_prob(&[0.0, 3.0, 3.0]).0, 1);
    }
}
