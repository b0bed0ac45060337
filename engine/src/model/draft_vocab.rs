//! A reduced draft vocabulary: a drafter whose head scores only N of the target's tokens (the
//! most frequent ones on code, by default), with the map between its ids and the target's.
//!
//! A GLIDE drafter's head is the largest part of its cost when it scores the full vocabulary
//! (151,936 rows on Qwen2.5); a subset of the most frequent tokens covers almost every token the
//! target emits on code. Speculative sampling stays exact with it: the drafter's distribution
//! `q` is simply zero outside the subset ([`DraftVocab::expand_probs`]), and rejection sampling
//! is exact for any `q` (`speculative::accept`). Greedy drafting picks among the subset only; a target
//! token outside it is never drafted, only emitted by verification.

use crate::error::{Error, Result};

/// The target ids a drafter's head scores, in its row order, and the way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftVocab {
    /// `to_target[i]`: the target id of draft row `i`.
    to_target: Vec<u32>,
    /// `from_target[t]`: the draft row of target id `t`, or `u32::MAX` when not in the subset.
    from_target: Vec<u32>,
}

const ABSENT: u32 = u32::MAX;

impl DraftVocab {
    /// The subset `ids` (draft row order) of a target vocabulary of `target_vocab` tokens.
    /// Refuses ids outside the vocabulary, repeated ids, and an empty subset, naming the first.
    pub fn new(ids: Vec<u32>, target_vocab: usize) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::InvalidRequest(
                "a draft vocabulary needs at least one token".into(),
            ));
        }
        let mut from_target = vec![ABSENT; target_vocab];
        for (row, &id) in ids.iter().enumerate() {
            let slot = from_target.get_mut(id as usize).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "draft vocabulary row {row} maps to token {id}, outside the target's \
                     {target_vocab} tokens"
                ))
            })?;
            if *slot != ABSENT {
                return Err(Error::InvalidRequest(format!(
                    "draft vocabulary rows {} and {row} both map to token {id}",
                    *slot
                )));
            }
            *slot = row as u32;
        }
        Ok(Self {
            to_target: ids,
            from_target,
        })
    }

    /// The whole target vocabulary, in order (no reduction).
    pub fn full(target_vocab: usize) -> Self {
        Self::new((0..target_vocab as u32).collect(), target_vocab)
            .expect("every id once, inside the vocabulary")
    }

    /// The `n` tokens with the highest `counts` (indexed by target id; ties go to the lower
    /// id), in decreasing count order.
    pub fn most_frequent(counts: &[u64], n: usize) -> Result<Self> {
        let mut ids: Vec<u32> = (0..counts.len() as u32).collect();
        ids.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
        ids.truncate(n);
        Self::new(ids, counts.len())
    }

    /// Tokens in the subset (rows of the drafter's head).
    pub fn len(&self) -> usize {
        self.to_target.len()
    }

    /// Always false: a draft vocabulary holds at least one token.
    pub fn is_empty(&self) -> bool {
        self.to_target.is_empty()
    }

    /// Tokens of the target vocabulary.
    pub fn target_len(&self) -> usize {
        self.from_target.len()
    }

    /// The target ids of the draft rows, in row order (what is stored with the weights).
    pub fn ids(&self) -> &[u32] {
        &self.to_target
    }

    /// The target id of draft row `row`.
    pub fn to_target(&self, row: u32) -> u32 {
        self.to_target[row as usize]
    }

    /// The draft row of target id `id`, if the subset holds it.
    pub fn from_target(&self, id: u32) -> Option<u32> {
        self.from_target
            .get(id as usize)
            .copied()
            .filter(|&r| r != ABSENT)
    }

    /// The draft rows of the target ids in `history` that the subset holds, in order (what a
    /// repetition penalty on draft rows must see: the other tokens' logits are `-inf` in the
    /// expanded row, which the penalty leaves `-inf`).
    pub fn rows_of(&self, history: &[u32]) -> Vec<u32> {
        history
            .iter()
            .filter_map(|&t| self.from_target(t))
            .collect()
    }

    /// A distribution over the draft rows as one over the target's vocabulary: zero outside
    /// the subset.
    pub fn expand_probs(&self, q: &[f32]) -> Vec<f32> {
        assert_eq!(q.len(), self.len(), "one probability per draft row");
        let mut full = vec![0.0; self.target_len()];
        for (&id, &p) in self.to_target.iter().zip(q) {
            full[id as usize] = p;
        }
        full
    }

    /// The greedy choice of logits over the draft rows, as `argmax` of [`Self::expand_logits`]
    /// would make it, without building that row: the target id of the largest logit (ties go
    /// to the lower target id) and its draft row. (With every logit `-inf` or NaN the expanded
    /// row's argmax is target id 0, in the subset or not; this gives a subset token.)
    pub fn argmax_target(&self, logits: &[f32]) -> (u32, usize) {
        assert_eq!(logits.len(), self.len(), "one logit per draft row");
        let mut best = 0;
        for (row, &v) in logits.iter().enumerate() {
            let b = logits[best];
            if v > b || (v == b && self.to_target[row] < self.to_target[best]) {
                best = row;
            }
        }
        (self.to_target[best], best)
    }

    /// Logits over the draft rows as logits over the target's vocabulary: `-inf` outside the
    /// subset, so that any softmax, argmax or sampling transform of them gives zero there.
    pub fn expand_logits(&self, logits: &[f32]) -> Vec<f32> {
        assert_eq!(logits.len(), self.len(), "one logit per draft row");
        let mut full = vec![f32::NEG_INFINITY; self.target_len()];
        for (&id, &l) in self.to_target.iter().zip(logits) {
            full[id as usize] = l;
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_everything_else_is_absent() {
        let v = DraftVocab::new(vec![7, 2, 9, 0], 12).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v.target_len(), 12);
        for row in 0..4 {
            assert_eq!(v.from_target(v.to_target(row)), Some(row));
        }
        for id in [1, 3, 4, 5, 6, 8, 10, 11, 12, 1000] {
            assert_eq!(v.from_target(id), None, "token {id}");
        }
        let full = DraftVocab::full(5);
        assert!((0..5).all(|t| full.from_target(t) == Some(t) && full.to_target(t) == t));
    }

    #[test]
    fn the_greedy_choice_on_draft_rows_is_the_argmax_of_the_expanded_row() {
        use crate::sampling::argmax;
        use rand::{Rng, SeedableRng};
        // Rows in an order unlike the target ids', so that ties tell the two orders apart.
        let v = DraftVocab::new(vec![9, 4, 11, 0, 7, 2], 12).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..500 {
            // Few distinct values, so that the largest is often tied.
            let logits: Vec<f32> = (0..v.len())
                .map(|_| f32::from(rng.random_range(0u8..4)) - 1.5)
                .collect();
            let (token, row) = v.argmax_target(&logits);
            assert_eq!(
                token,
                argmax(&v.expand_logits(&logits)),
                "case {case}: {logits:?}"
            );
            assert_eq!(v.to_target(row as u32), token);
        }
        // A tie between rows 0 (token 9) and 1 (token 4) goes to token 4, as in the full row.
        assert_eq!(v.argmax_target(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), (4, 1));
    }

    #[test]
    fn sampling_on_draft_rows_gives_the_law_of_sampling_the_expanded_row() {
        use crate::sampling::{transform, SamplingParams};
        use rand::{Rng, SeedableRng};
        let v = DraftVocab::new(vec![9, 4, 11, 0, 7, 2, 13, 5], 16).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let settings = [
            (1.0, 0, 1.0, 1.0),
            (0.7, 0, 1.0, 1.3),
            (0.7, 3, 1.0, 1.0),
            (1.2, 0, 0.8, 1.0),
            (0.5, 5, 0.9, 0.8),
            // Top-k past the subset's size: the expanded row keeps zeros, nothing else.
            (1.0, 12, 1.0, 1.0),
        ];
        for case in 0..300 {
            let (temperature, top_k, top_p, repetition_penalty) = settings[case % settings.len()];
            let params = SamplingParams {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed: 0,
            };
            // Distinct values (no probability ties, which the two orders cut differently).
            let logits: Vec<f32> = (0..v.len())
                .map(|_| rng.random_range(-4.0f32..4.0))
                .collect();
            // Tokens in and out of the subset, one repeated.
            let history: Vec<u32> = (0..6).map(|_| rng.random_range(0u32..16)).collect();
            let want = transform(&v.expand_logits(&logits), &history, &params);
            let got = v.expand_probs(&transform(&logits, &v.rows_of(&history), &params));
            for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6,
                    "case {case}, token {t}: {g} against {w} ({params:?}, history {history:?})"
                );
            }
        }
    }

    #[test]
    fn bad_maps_are_refused_with_the_row_and_token_named() {
        let e = DraftVocab::new(vec![1, 12], 12).unwrap_err().to_string();
        assert!(
            e.contains("row 1") && e.contains("token 12") && e.contains("12 tokens"),
            "{e}"
        );
        let e = DraftVocab::new(vec![3, 5, 3], 12).unwrap_err().to_string();
        assert!(e.contains("rows 0 and 2") && e.contains("token 3"), "{e}");
        assert!(DraftVocab::new(Vec::new(), 12).is_err());
    }

    #[test]
    fn most_frequent_takes_the_top_counts_with_ties_to_the_lower_id() {
        let counts = [5, 9, 0, 9, 2, 7];
        let v = DraftVocab::most_frequent(&counts, 4).unwrap();
        assert_eq!(v.ids(), &[1, 3, 5, 0]);
        // Asking for more than the vocabulary gives all of it.
        assert_eq!(DraftVocab::most_frequent(&counts, 10).unwrap().len(), 6);
    }

    #[test]
    fn expanded_distributions_are_zero_and_logits_minus_infinity_outside_the_subset() {
        let v = DraftVocab::new(vec![4, 1], 6).unwrap();
        assert_eq!(
            v.expand_probs(&[0.25, 0.75]),
            vec![0.0, 0.75, 0.0, 0.0, 0.25, 0.0]
        );
        let l = v.expand_logits(&[2.0, -1.0]);
        assert_eq!(l[4], 2.0);
        assert_eq!(l[1], -1.0);
        assert!([0, 2, 3, 5].iter().all(|&i| l[i] == f32::NEG_INFINITY));
        assert_eq!(crate::sampling::argmax(&l), 4);
    }
}
