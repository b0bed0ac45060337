//! Speculative decoding is lossless: greedy output equals the target's own token for token,
//! rollback leaves caches as if rejected drafts never existed.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::tiny::{tiny_draft_model, tiny_drafter, tiny_model, TinySpec};
use specd_engine::model::{LoadedModel, Logits, Model};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{
    drafts_now, generate_speculative, propose_drafts, Draft, DraftModelProposer, DraftPolicyConfig,
    NgramProposer, ProposeInput, Proposer, Sequence, Speculator, TargetView,
};

fn target_spec() -> TinySpec {
    TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    }
}

struct Pair {
    target: LoadedModel,
    draft: DraftModelProposer,
}

fn pair(noise: f32) -> Pair {
    let target = tiny_model(&target_spec()).unwrap();
    let draft = tiny_drafter(&target_spec(), noise, 5, &target).unwrap();
    Pair { target, draft }
}

fn random_prompts(n: usize, seed: u64, vocab: u32) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..24);
            // Ids below 256 + merges: ordinary tokens, never the EOS specials at the end.
            (0..len).map(|_| rng.random_range(0..vocab - 3)).collect()
        })
        .collect()
}

fn request(prompt: &[u32], max_tokens: usize, penalty: f32) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_vec(),
        max_tokens,
        sampling: SamplingParams {
            repetition_penalty: penalty,
            ..Default::default()
        },
        stop: Vec::new(),
        ignore_eos: false,
    }
}

#[test]
fn greedy_speculative_output_equals_target_only_output() {
    let p = pair(0.15);
    let ngram = NgramProposer::new(3, 1).unwrap();
    let model = &p.target.model;
    let tok = p.target.tokenizer.as_ref().unwrap();
    let prompts = random_prompts(50, 1, model.config().vocab_size as u32);
    let proposers: [(&str, &dyn Proposer); 2] = [("draft", &p.draft), ("ngram", &ngram)];
    let mut totals = [(0u64, 0u64); 2];
    for (pi, prompt) in prompts.iter().enumerate() {
        let penalty = if pi % 3 == 2 { 1.3 } else { 1.0 };
        let req = request(prompt, 32, penalty);
        let want = generate(model, tok, &req, |_| {}).unwrap();
        for (which, (name, proposer)) in proposers.iter().enumerate() {
            for k in 1..=8 {
                for adaptive in [false, true] {
                    let policy = DraftPolicyConfig {
                        max_draft: k,
                        adaptive,
                        confidence: None,
                    };
                    let got =
                        generate_speculative(model, tok, Some(*proposer), policy, &req, |_| {})
                            .unwrap();
                    assert_eq!(
                        got.tokens, want.tokens,
                        "prompt {pi} {prompt:?}, {name}, k={k}, adaptive={adaptive}"
                    );
                    assert_eq!(got.finish_reason, want.finish_reason);
                    let s = &got.speculation;
                    totals[which].0 += s.drafted_tokens;
                    totals[which].1 += s.accepted_tokens;
                }
            }
        }
    }
    for (which, (name, _)) in proposers.iter().enumerate() {
        let (drafted, accepted) = totals[which];
        // Identity proves nothing unless drafts were both kept and thrown away.
        assert!(accepted > 0, "{name}: no draft was ever accepted");
        assert!(drafted > accepted, "{name}: no draft was ever rejected");
        eprintln!("{name}: {accepted} of {drafted} drafts accepted");
    }
}

/// Runs sequences together, one speculative step at a time, until all are done.
/// Afterwards every block is back in the pools.
fn run_batch(spec: &mut Speculator<'_>, seqs: &mut [Sequence]) {
    for s in seqs.iter_mut() {
        spec.prefill(s).unwrap();
    }
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        spec.step(&mut refs).unwrap();
    }
    for s in seqs.iter_mut() {
        spec.release(s);
    }
    assert_eq!(spec.target_kv().usage().blocks_used, 0);
    assert_eq!(spec.draft_kv().usage().blocks_used, 0);
    assert_eq!(spec.target_kv().usage().tokens_cached, 0);
}

#[test]
fn a_batch_with_different_draft_lengths_matches_each_sequence_alone() {
    let p = pair(0.15);
    let ngram = NgramProposer::default();
    let model = &p.target.model;
    let tok = p.target.tokenizer.as_ref().unwrap();
    let prompts = random_prompts(7, 2, model.config().vocab_size as u32);
    for proposer in [&p.draft as &dyn Proposer, &ngram] {
        let mut spec = Speculator::new(model, Some(proposer));
        let mut seqs: Vec<Sequence> = prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let policy = DraftPolicyConfig {
                    max_draft: i % 7,
                    adaptive: i % 2 == 1,
                    confidence: None,
                };
                Sequence::new(
                    model,
                    tok,
                    Some(proposer),
                    request(prompt, 20 + i, 1.0),
                    policy,
                )
                .unwrap()
            })
            .collect();
        run_batch(&mut spec, &mut seqs);
        for (i, s) in seqs.iter_mut().enumerate() {
            let want = generate(model, tok, &request(&prompts[i], 20 + i, 1.0), |_| {}).unwrap();
            assert_eq!(
                s.output().tokens,
                want.tokens,
                "{} sequence {i}",
                proposer.name()
            );
        }
    }
}

/// A cache filled with `tokens`: `head` tokens in one forward, then one token per forward.
fn reference_cache(model: &Model, tokens: &[u32], head: usize) -> specd_engine::kv::SequenceCache {
    let mut cache = model.new_cache();
    if head > 0 {
        model
            .forward_cache(&mut cache, &tokens[..head], Logits::None)
            .unwrap();
    }
    for t in &tokens[head..] {
        model
            .forward_cache(&mut cache, std::slice::from_ref(t), Logits::None)
            .unwrap();
    }
    cache
}

fn assert_same_cache(
    pool: &KvPool,
    a: &BlockTable,
    b: &specd_engine::kv::SequenceCache,
    layers: usize,
    what: &str,
) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for l in 0..layers {
        assert!(
            pool.layer_snapshot(a, l) == b.layer_snapshot(l),
            "{what}: layer {l} differs"
        );
    }
}

#[test]
fn rollback_leaves_both_caches_as_if_rejected_drafts_never_existed() {
    let p = pair(0.3);
    let model = &p.target.model;
    let draft = p.draft.model();
    let tok = p.target.tokenizer.as_ref().unwrap();
    let layers = model.config().num_layers;
    let (mut rejected, mut accepted) = (0, 0);
    for prompt in random_prompts(6, 3, model.config().vocab_size as u32) {
        let policy = DraftPolicyConfig {
            max_draft: 5,
            ..Default::default()
        };
        let mut s = Sequence::new(
            model,
            tok,
            Some(&p.draft),
            request(&prompt, 40, 1.0),
            policy,
        )
        .unwrap();
        let mut spec = Speculator::new(model, Some(&p.draft));
        spec.prefill(&mut s).unwrap();
        while !s.is_finished() {
            spec.step(&mut [&mut s]).unwrap();
            if s.is_finished() {
                break;
            }
            let t = s.tokens();
            // The target holds every committed token but the last.
            let want = reference_cache(model, &t[..t.len() - 1], prompt.len() - 1);
            assert_same_cache(spec.target_kv(), s.table(), &want, layers, "target");
            // The drafter holds a prefix of the committed tokens (the prompt's head went in at
            // once, at prefill).
            let held = s.proposer_state().cached_len().unwrap();
            assert!(held < t.len());
            let want = reference_cache(draft, &t[..held], (prompt.len() - 1).min(held));
            assert_same_cache(
                spec.draft_kv(),
                s.proposer_state().table().unwrap(),
                &want,
                layers,
                "drafter",
            );
        }
        let st = s.stats();
        accepted += st.accepted_tokens;
        rejected += st.drafted_tokens - st.accepted_tokens;
    }
    assert!(
        accepted > 0 && rejected > 0,
        "accepted {accepted}, rejected {rejected}"
    );
}

#[test]
fn confidence_gating_drafts_less_and_changes_nothing() {
    let p = pair(0.15);
    let model = &p.target.model;
    let tok = p.target.tokenizer.as_ref().unwrap();
    let mut drafted = Vec::new();
    for confidence in [None, Some(0.6), Some(1.0)] {
        let mut total = 0;
        for prompt in random_prompts(10, 4, model.config().vocab_size as u32) {
            let req = request(&prompt, 24, 1.0);
            let want = generate(model, tok, &req, |_| {}).unwrap();
            let policy = DraftPolicyConfig {
                max_draft: 6,
                adaptive: false,
                confidence,
            };
            let got =
                generate_speculative(model, tok, Some(&p.draft), policy, &req, |_| {}).unwrap();
            assert_eq!(got.tokens, want.tokens, "confidence {confidence:?}");
            total += got.speculation.drafted_tokens;
        }
        drafted.push(total);
    }
    assert!(
        drafted[0] > drafted[1],
        "a threshold of 0.6 drafts less: {drafted:?}"
    );
    assert_eq!(drafted[2], 0, "nothing is ever more than certain");
}

#[test]
fn a_drafter_with_another_vocabulary_is_refused() {
    let target = tiny_model(&target_spec()).unwrap();
    let d = tiny_draft_model(&target_spec(), 0.1, 1).unwrap();
    let mut other = d.tokenizer.clone().unwrap().inner().clone();
    other
        .add_special_tokens([tokenizers::AddedToken::from("<|extra|>", true)])
        .unwrap();
    let other = specd_engine::model::Tokenizer::from_tokenizer(other);
    let err = DraftModelProposer::new(
        Arc::new(d.model),
        Some(&other),
        &d.path,
        &target.model,
        target.tokenizer.as_ref().unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("vocabulary") && err.contains("tiny draft"),
        "{err}"
    );
}

#[test]
fn draft_lengths_beyond_the_verification_limit_are_refused() {
    let p = pair(0.1);
    let model = &p.target.model;
    let tok = p.target.tokenizer.as_ref().unwrap();
    let policy = DraftPolicyConfig {
        max_draft: 16,
        ..Default::default()
    };
    let err = Sequence::new(model, tok, Some(&p.draft), request(&[1, 2], 4, 1.0), policy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_draft") && err.contains("15"), "{err}");
}

#[test]
fn a_drafter_with_a_restricted_head_stays_lossless() {
    let target = tiny_model(&target_spec()).unwrap();
    let tok = target.tokenizer.as_ref().unwrap();
    let mut d = tiny_draft_model(&target_spec(), 0.1, 5).unwrap();
    let rows = 200;
    d.model.restrict_head(rows).unwrap();
    assert_eq!(d.model.head_rows(), rows);
    assert!(d.model.clone().restrict_head(0).is_err());
    let draft = DraftModelProposer::new(
        Arc::new(d.model),
        d.tokenizer.as_ref(),
        &d.path,
        &target.model,
        tok,
    )
    .unwrap();
    let (mut drafted, mut accepted) = (0, 0);
    for prompt in random_prompts(12, 6, target.model.config().vocab_size as u32) {
        let req = request(&prompt, 24, 1.0);
        let want = generate(&target.model, tok, &req, |_| {}).unwrap();
        let policy = DraftPolicyConfig {
            max_draft: 4,
            ..Default::default()
        };
        let got =
            generate_speculative(&target.model, tok, Some(&draft), policy, &req, |_| {}).unwrap();
        assert_eq!(got.tokens, want.tokens);
        drafted += got.speculation.drafted_tokens;
        accepted += got.speculation.accepted_tokens;
    }
    assert!(
        accepted > 0 && drafted > accepted,
        "{accepted} of {drafted}"
    );
}

/// A proposer that reads the target's cache (as GLIDE will): it records what it was shown and
/// proposes what the n-gram proposer would.
struct TargetReader {
    ngram: NgramProposer,
    /// (committed tokens, target positions cached, target pool's cached positions) per input.
    seen: std::sync::Mutex<Vec<(usize, usize, usize)>>,
}

impl Proposer for TargetReader {
    fn name(&self) -> &'static str {
        "target-reader"
    }

    fn reads_target_cache(&self) -> bool {
        true
    }

    fn propose(
        &self,
        target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> specd_engine::error::Result<Vec<Draft>> {
        let cached = target.kv.usage().tokens_cached;
        self.seen.lock().unwrap().extend(
            batch
                .iter()
                .map(|b| (b.tokens.len(), b.target_table.len(), cached)),
        );
        self.ngram.propose(target, kv, batch)
    }
}

#[test]
fn a_proposer_reading_the_target_cache_drafts_only_after_the_prompt_is_prefilled() {
    assert!(
        drafts_now(3, false, 10),
        "a proposer of its own drafts at once"
    );
    assert!(!drafts_now(3, true, 10), "one that reads the target waits");
    assert!(drafts_now(3, true, 0));
    assert!(!drafts_now(0, false, 0), "no budget, no draft");

    let p = pair(0.15);
    let model = &p.target.model;
    let tok = p.target.tokenizer.as_ref().unwrap();
    let reader = TargetReader {
        ngram: NgramProposer::default(),
        seen: Default::default(),
    };
    // At least two tokens each, so that a prompt has something to prefill.
    let prompts: Vec<Vec<u32>> = random_prompts(2, 9, model.config().vocab_size as u32)
        .into_iter()
        .map(|p| [&[40, 41][..], &p].concat())
        .collect();
    let policy = DraftPolicyConfig {
        max_draft: 3,
        adaptive: false,
        confidence: None,
    };
    let new_seq = |prompt: &[u32]| {
        Sequence::new(model, tok, Some(&reader), request(prompt, 24, 1.0), policy).unwrap()
    };
    // One sequence prefilled, one not: only the first reaches the proposer, and it sees the
    // target's cache of all its committed tokens but the last.
    let mut spec = Speculator::new(model, Some(&reader));
    let (mut a, mut b) = (new_seq(&prompts[0]), new_seq(&prompts[1]));
    spec.prefill(&mut a).unwrap();
    let mut own_pool = reader.new_pool(0);
    let target = TargetView {
        model,
        kv: spec.target_kv(),
    };
    let drafts = propose_drafts(
        &reader,
        target,
        &mut own_pool,
        &mut [&mut a, &mut b],
        &[3, 3],
    )
    .unwrap();
    assert_eq!(drafts.len(), 2);
    assert!(
        drafts[1].tokens.is_empty(),
        "the unprefilled sequence drafts nothing"
    );
    let committed = prompts[0].len();
    assert_eq!(
        *reader.seen.lock().unwrap(),
        [(committed, committed - 1, committed - 1)]
    );
    spec.release(&mut a);

    // Through whole generations it stays lossless, and every proposal saw a fully cached target.
    reader.seen.lock().unwrap().clear();
    let mut seqs: Vec<Sequence> = prompts.iter().map(|p| new_seq(p)).collect();
    let mut spec = Speculator::new(model, Some(&reader));
    run_batch(&mut spec, &mut seqs);
    for (s, prompt) in seqs.iter_mut().zip(&prompts) {
        let want = generate(model, tok, &request(prompt, 24, 1.0), |_| {}).unwrap();
        assert_eq!(s.output().tokens, want.tokens);
    }
    let seen = reader.seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|&(c, t, _)| t == c - 1), "{seen:?}");
}
