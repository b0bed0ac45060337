//! Deciding which drafted tokens the target keeps.
//!
//! Greedy: the longest prefix of drafts equal to the target's own choice at each position,
//! followed by the target's choice at the first mismatch (or after the last draft).
//!
//! Stochastic (speculative rejection sampling, Leviathan et al. 2023, Chen et al. 2023): draft
//! `d_i ~ q_i` is kept with probability `min(1, p_i(d_i) / q_i(d_i))`; at the first rejection the
//! token is drawn from the residual `norm(max(0, p_i − q_i))`; when every draft is kept, a bonus
//! token is drawn from `p_k`. Each emitted token is then distributed exactly as `p` at its
//! position, whatever `q` is. A deterministic drafter (n-gram) has one-hot `q`.

use rand::rngs::StdRng;
use rand::Rng;

use crate::sampling::sample_from;

/// The outcome of verifying one sequence's drafts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How many drafts (a prefix) were kept.
    pub accepted: usize,
    /// The token the target adds after them: the correction at the first rejected position, or
    /// the bonus token when all were kept.
    pub next: u32,
}

/// Greedy acceptance. `choices[i]` is the target's greedy token after the committed tokens and
/// drafts `0..i`; there is one more choice than drafts.
pub fn accept_greedy(drafts: &[u32], choices: &[u32]) -> Verdict {
    assert_eq!(
        choices.len(),
        drafts.len() + 1,
        "one more choice than drafts"
    );
    let accepted = drafts
        .iter()
        .zip(choices)
        .take_while(|(d, c)| d == c)
        .count();
    Verdict {
        accepted,
        next: choices[accepted],
    }
}

/// The draft distribution at one position: the drafter's own, or one-hot on the draft.
#[derive(Debug, Clone, Copy)]
pub enum DraftDist<'a> {
    Probs(&'a [f32]),
    OneHot,
}

impl DraftDist<'_> {
    fn prob(&self, token: u32) -> f32 {
        match self {
            DraftDist::Probs(q) => q.get(token as usize).copied().unwrap_or(0.0),
            DraftDist::OneHot => 1.0,
        }
    }
}

/// Probability of keeping draft `token`: `min(1, p(token) / q(token))`.
pub fn acceptance_probability(p: &[f32], q: DraftDist<'_>, token: u32) -> f32 {
    let pt = p.get(token as usize).copied().unwrap_or(0.0);
    let qt = q.prob(token);
    if qt <= 0.0 {
        // A drafter never proposes a token it gives no mass; if it does, `p` decides alone.
        return if pt > 0.0 { 1.0 } else { 0.0 };
    }
    (pt / qt).min(1.0)
}

/// The distribution to draw from after rejecting `token`: `norm(max(0, p − q))`. When `p` and
/// `q` agree to rounding (the residual has no mass), `p` itself.
pub fn residual(p: &[f32], q: DraftDist<'_>, token: u32) -> Vec<f32> {
    let mut r: Vec<f32> = match q {
        DraftDist::Probs(q) => p
            .iter()
            .enumerate()
            .map(|(i, &pi)| (pi - q.get(i).copied().unwrap_or(0.0)).max(0.0))
            .collect(),
        DraftDist::OneHot => {
            let mut r = p.to_vec();
            if let Some(x) = r.get_mut(token as usize) {
                *x = (*x - 1.0).max(0.0);
            }
            r
        }
    };
    let total: f32 = r.iter().sum();
    if total <= f32::EPSILON {
        return p.to_vec();
    }
    r.iter_mut().for_each(|x| *x /= total);
    r
}

/// Stochastic acceptance. `p[i]` is the target's distribution after the committed tokens and
/// drafts `0..i` (one more row than drafts); `q[i]` the drafter's distribution that `drafts[i]`
/// was drawn from, or `None` for a deterministic drafter. Uses the request's own RNG.
pub fn accept_stochastic(
    drafts: &[u32],
    q: Option<&[Vec<f32>]>,
    p: &[Vec<f32>],
    rng: &mut StdRng,
) -> Verdict {
    assert_eq!(p.len(), drafts.len() + 1, "one more target row than drafts");
    for (i, &d) in drafts.iter().enumerate() {
        let qi = match q {
            Some(q) => DraftDist::Probs(&q[i]),
            None => DraftDist::OneHot,
        };
        let keep = acceptance_probability(&p[i], qi, d);
        // `random` is in [0, 1): a probability of 1 always keeps, 0 never does.
        if rng.random::<f32>() >= keep {
            return Verdict {
                accepted: i,
                next: sample_from(&residual(&p[i], qi, d), rng),
            };
        }
    }
    Verdict {
        accepted: drafts.len(),
        next: sample_from(&p[drafts.len()], rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_keeps_the_matching_prefix_then_the_targets_token() {
        assert_eq!(
            accept_greedy(&[5, 6, 7], &[5, 6, 9, 1]),
            Verdict {
                accepted: 2,
                next: 9
            }
        );
        assert_eq!(
            accept_greedy(&[5, 6], &[5, 6, 4]),
            Verdict {
                accepted: 2,
                next: 4
            }
        );
        assert_eq!(
            accept_greedy(&[], &[3]),
            Verdict {
                accepted: 0,
                next: 3
            }
        );
    }

    #[test]
    fn residual_of_a_one_hot_draft_removes_the_draft() {
        let p = [0.5, 0.3, 0.2];
        let r = residual(&p, DraftDist::OneHot, 0);
        assert_eq!(r[0], 0.0);
        assert!((r[1] - 0.6).abs() < 1e-6 && (r[2] - 0.4).abs() < 1e-6);
        assert_eq!(acceptance_probability(&p, DraftDist::OneHot, 1), 0.3);
    }
}
