//! Property tests of speculation's bookkeeping: acceptance never keeps more than was drafted,
//! statistics add up, draft lengths stay in bounds, proposals come from the history.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use specd_engine::speculative::{
    accept_greedy, accept_stochastic, DraftPolicy, DraftPolicyConfig, NgramProposer, SpecStats,
};

fn normalized(w: Vec<f32>) -> Vec<f32> {
    let s: f32 = w.iter().sum();
    if s == 0.0 {
        let mut d = vec![0.0; w.len()];
        d[0] = 1.0;
        return d;
    }
    w.iter().map(|x| x / s).collect()
}

proptest! {
    #[test]
    fn greedy_acceptance_is_a_matching_prefix(
        drafts in prop::collection::vec(0u32..4, 0..9),
        extra in prop::collection::vec(0u32..4, 9),
    ) {
        let choices: Vec<u32> = extra[..drafts.len() + 1].to_vec();
        let v = accept_greedy(&drafts, &choices);
        prop_assert!(v.accepted <= drafts.len());
        prop_assert_eq!(&drafts[..v.accepted], &choices[..v.accepted]);
        prop_assert_eq!(v.next, choices[v.accepted]);
        if v.accepted < drafts.len() {
            prop_assert_ne!(drafts[v.accepted], choices[v.accepted]);
        }
    }

    #[test]
    fn stochastic_acceptance_stays_in_bounds(
        k in 0usize..8,
        vocab in 2usize..12,
        seed in any::<u64>(),
        weights in prop::collection::vec(0f32..1.0, 2 * 9 * 12),
        one_hot in any::<bool>(),
    ) {
        let row = |i: usize| normalized(weights[i * vocab..(i + 1) * vocab].to_vec());
        let p: Vec<Vec<f32>> = (0..=k).map(row).collect();
        let q: Vec<Vec<f32>> = (9..9 + k).map(row).collect();
        // Drafts drawn from q (any token with mass), so that q(draft) > 0 as a drafter ensures.
        let drafts: Vec<u32> = q
            .iter()
            .map(|d| d.iter().position(|&x| x > 0.0).unwrap() as u32)
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let v = accept_stochastic(&drafts, (!one_hot).then_some(&q[..]), &p, &mut rng);
        prop_assert!(v.accepted <= k);
        prop_assert!((v.next as usize) < vocab);
        // The emitted token always has target mass.
        prop_assert!(p[v.accepted][v.next as usize] > 0.0);
    }

    #[test]
    fn statistics_add_up(steps in prop::collection::vec((0usize..9, 0usize..9), 0..40)) {
        let mut s = SpecStats::default();
        for &(drafted, acc) in &steps {
            s.record(drafted, acc.min(drafted));
        }
        prop_assert!(s.accepted_tokens <= s.drafted_tokens);
        prop_assert!(s.drafts <= s.verifications);
        prop_assert_eq!(s.verifications, steps.len() as u64);
        let d: u64 = s.by_position.iter().map(|p| p.drafted).sum();
        let a: u64 = s.by_position.iter().map(|p| p.accepted).sum();
        prop_assert_eq!(d, s.drafted_tokens);
        prop_assert_eq!(a, s.accepted_tokens);
        for w in s.by_position.windows(2) {
            // A later position is only reached through the earlier ones.
            prop_assert!(w[1].drafted <= w[0].drafted && w[1].accepted <= w[0].accepted);
        }
        let mal = s.mean_accepted_length();
        prop_assert!(s.verifications == 0 || (1.0..=9.0).contains(&mal));
    }

    #[test]
    fn draft_length_stays_within_one_and_max(
        max in 1usize..16,
        adaptive in any::<bool>(),
        outcomes in prop::collection::vec(0f64..=1.0, 0..60),
    ) {
        let mut p = DraftPolicy::new(DraftPolicyConfig { max_draft: max, adaptive, confidence: None });
        for frac in outcomes {
            let k = p.next_len();
            prop_assert!((1..=max).contains(&k));
            p.observe(k, (frac * k as f64).floor() as usize);
        }
    }

    #[test]
    fn ngram_proposals_continue_an_earlier_occurrence(
        tokens in prop::collection::vec(0u32..5, 1..60),
        max in 0usize..8,
    ) {
        let p = NgramProposer::new(3, 1).unwrap();
        let got = p.lookup(&tokens, max);
        prop_assert!(got.len() <= max);
        if !got.is_empty() {
            // Some earlier position is followed by exactly the proposal, after a match of the
            // last token at least.
            let last = *tokens.last().unwrap();
            let found = (0..tokens.len() - 1).any(|i| {
                tokens[i] == last && tokens[i + 1..].starts_with(&got)
            });
            prop_assert!(found);
        }
    }
}
