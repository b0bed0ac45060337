//! GLIDE combined with prompt lookup (`glide+ngram`, issue 12 item 6): a sequence continuing a
//! long earlier match drafts the n-gram proposal and the rest GLIDE's, GLIDE's own cache then
//! holding exactly what it holds when GLIDE drafts alone; greedy speculation with it equals
//! target-only output for every draft length, alone and in a batch, every block returned.
//! (Mixed batches through the engine are in `engine.rs`, sampling in `distribution.rs`.)

mod common;

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::{GlideModel, Logits, Model, SeqInput, Tokenizer};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{
    generate_speculative, Draft, DraftPolicyConfig, GlideNgramConfig, GlideNgramProposer,
    GlideProposer, NgramProposer, ProposeInput, Proposer, ProposerState, Sequence, SpecStats,
    Speculator, TargetView,
};

/// The engine tests' tiny target (its tokenizer) and GLIDE drafter.
fn models() -> (Arc<Model>, Arc<Tokenizer>, Arc<GlideModel>) {
    let m = common::engine_models(true);
    let glide = m.glide.expect("with drafters");
    (m.target, m.tokenizer, Arc::new(glide.model().clone()))
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        ignore_eos: false,
    }
}

/// Sequences with their target caches (all committed tokens but the last, as before a
/// step) in one pool, and a fresh proposer state each.
struct Histories {
    tokens: Vec<Vec<u32>>,
    target_kv: KvPool,
    target_tables: Vec<BlockTable>,
}

fn histories(target: &Model, tokens: Vec<Vec<u32>>) -> Histories {
    let mut target_kv = target.new_pool(64);
    let mut target_tables = Vec::new();
    for t in &tokens {
        let mut table = BlockTable::new();
        target
            .forward(
                &mut target_kv,
                &mut [SeqInput {
                    table: &mut table,
                    tokens: &t[..t.len() - 1],
                    logits: Logits::None,
                }],
            )
            .unwrap();
        target_tables.push(table);
    }
    Histories {
        tokens,
        target_kv,
        target_tables,
    }
}

/// One proposal of `proposer` for every history (up to `max` tokens each), its states reserved
/// in `kv` as the engine reserves them; sampled at temperature 1 with `seed` when `sampled`.
fn propose(
    proposer: &dyn Proposer,
    target: &Model,
    h: &Histories,
    kv: &mut KvPool,
    states: &mut [ProposerState],
    max: usize,
    sampled: bool,
) -> Vec<Draft> {
    let sampling = SamplingParams {
        temperature: if sampled { 1.0 } else { 0.0 },
        ..Default::default()
    };
    let mut rngs: Vec<StdRng> = (0..states.len())
        .map(|i| StdRng::seed_from_u64(i as u64))
        .collect();
    let mut inputs = Vec::new();
    for (((tokens, table), state), rng) in h
        .tokens
        .iter()
        .zip(&h.target_tables)
        .zip(states.iter_mut())
        .zip(rngs.iter_mut())
    {
        proposer.reserve(kv, state, tokens.len(), max).unwrap();
        inputs.push(ProposeInput {
            tokens,
            target_table: table,
            state,
            max,
            sampling: &sampling,
            rng,
            confidence: None,
        });
    }
    let view = TargetView {
        model: target,
        kv: &h.target_kv,
    };
    proposer.propose(view, kv, &mut inputs).unwrap()
}

/// One history ending in a repeat of its first six tokens (`b0 .. b5`, followed by `b6 b0 ..`
/// the first time), one with no repeated token.
fn two_histories() -> Vec<Vec<u32>> {
    let block = [9u32, 31, 77, 120, 54, 201, 18];
    let repeat: Vec<u32> = block.iter().chain(&block[..6]).copied().collect();
    let plain: Vec<u32> = (0..12u32).map(|i| 40 + 13 * i).collect();
    vec![repeat, plain]
}

#[test]
fn a_long_match_drafts_the_ngram_proposal_and_leaves_glides_cache_as_glide_alone_would() {
    let (target, _, model) = models();
    let combined = GlideNgramProposer::new(model.clone(), GlideNgramConfig::default()).unwrap();
    let alone = GlideProposer::new(model);
    let h = histories(&target, two_histories());
    for sampled in [false, true] {
        let mut kv_c = combined.new_pool(64);
        let mut kv_a = alone.new_pool(64);
        let mut st_c: Vec<ProposerState> = (0..2).map(|_| combined.new_state()).collect();
        let mut st_a: Vec<ProposerState> = (0..2).map(|_| alone.new_state()).collect();
        let dc = propose(&combined, &target, &h, &mut kv_c, &mut st_c, 3, sampled);
        let da = propose(&alone, &target, &h, &mut kv_a, &mut st_a, 3, sampled);

        // The repeating history takes the lookup's proposal: deterministic, so no `q`.
        let lookup = NgramProposer::new(8, 4).unwrap().lookup(&h.tokens[0], 3);
        assert_eq!(lookup, vec![18, 9, 31]);
        assert_eq!(dc[0].tokens, lookup, "sampled {sampled}");
        assert_eq!(dc[0].probs, None);
        assert_ne!(
            dc[0], da[0],
            "GLIDE's own draft differs, or the test shows nothing"
        );
        // The other takes GLIDE's, exactly as GLIDE alone drafts it.
        assert_eq!(dc[1], da[1], "sampled {sampled}");
        assert_eq!(dc[1].tokens.len(), 3);
        assert_eq!(dc[1].probs.is_some(), sampled);

        // GLIDE read the repeating history's committed tokens (but the last) without drafting;
        // GLIDE alone also fed its first two drafts. Cut back to the committed ones, both
        // caches hold the same keys and values, and GLIDE's next draft from each is the same.
        let committed = h.tokens[0].len();
        assert_eq!(st_c[0].cached_len(), Some(committed - 1));
        alone.rollback(&mut kv_a, &mut st_a[0], committed - 1);
        let (ca, cc) = (st_a[0].table().unwrap(), st_c[0].table().unwrap());
        assert_eq!(
            kv_c.layer_snapshot(cc, 0),
            kv_a.layer_snapshot(ca, 0),
            "GLIDE's cache after the n-gram step"
        );
        let next_c = propose(&alone, &target, &h, &mut kv_c, &mut st_c, 3, sampled);
        let next_a = propose(&alone, &target, &h, &mut kv_a, &mut st_a, 3, sampled);
        assert_eq!(next_c[0], next_a[0]);

        for (kv, states) in [(&mut kv_c, &mut st_c), (&mut kv_a, &mut st_a)] {
            for s in states.iter_mut() {
                alone.release(kv, s);
            }
            assert_eq!(kv.usage().blocks_used, 0);
        }
    }
}

#[test]
fn a_short_match_or_a_short_proposal_drafts_with_glide() {
    let (target, _, model) = models();
    let alone = GlideProposer::new(model.clone());
    // The repeating history's match is six tokens long: seven are asked for.
    let strict = GlideNgramProposer::new(
        model,
        GlideNgramConfig {
            min_match: 7,
            max_match: 8,
        },
    )
    .unwrap();
    let h = histories(&target, two_histories());
    let drafts = |p: &dyn Proposer, max: usize| {
        let mut kv = p.new_pool(64);
        let mut states: Vec<ProposerState> = (0..2).map(|_| p.new_state()).collect();
        propose(p, &target, &h, &mut kv, &mut states, max, false)
    };
    assert_eq!(drafts(&strict, 3), drafts(&alone, 3));
    // The lookup continues the match with at most 7 tokens (to the end of the history): a
    // budget of 8 goes to GLIDE, who drafts all 8.
    let default = alone.with_ngram();
    assert_eq!(drafts(default, 8), drafts(&alone, 8));
    assert_eq!(drafts(default, 7)[0].tokens, h.tokens[0][6..13].to_vec());
}

/// A prompt after whose first generated token the history continues an earlier match of six
/// tokens: `q r q` where `r` starts with the target's greedy next token after it.
fn self_repeating_prompt(target: &Model, tok: &Tokenizer, seed: u64) -> Vec<u32> {
    let vocab = target.config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let q: Vec<u32> = (0..5).map(|_| rng.random_range(0..vocab - 3)).collect();
        let r: Vec<u32> = (0..6).map(|_| rng.random_range(0..vocab - 3)).collect();
        for first in 0..vocab - 3 {
            let p: Vec<u32> = q
                .iter()
                .chain([&first])
                .chain(&r[1..])
                .chain(&q)
                .copied()
                .collect();
            let next = generate(target, tok, &greedy(p.clone(), 1), |_| {}).unwrap();
            if next.tokens == [first] {
                return p;
            }
        }
    }
}

fn prompts(target: &Model, tok: &Tokenizer) -> Vec<Vec<u32>> {
    vec![
        self_repeating_prompt(target, tok, 1),
        self_repeating_prompt(target, tok, 2),
        vec![130; 6],
        (0..9u32).map(|i| (i * 37 + 5) % 250).collect(),
    ]
}

#[test]
fn greedy_speculation_with_glide_and_ngram_equals_target_only_output() {
    let (target, tok, model) = models();
    // The default (a 2-token match) and a stricter threshold.
    let strict = GlideNgramProposer::new(
        model.clone(),
        GlideNgramConfig {
            min_match: 4,
            max_match: 8,
        },
    )
    .unwrap();
    let default = GlideNgramProposer::new(model, GlideNgramConfig::default()).unwrap();
    let (mut drafted, mut accepted) = (0, 0);
    for (pi, prompt) in prompts(&target, &tok).into_iter().enumerate() {
        let req = greedy(prompt, 32);
        let want = generate(&target, &tok, &req, |_| {}).unwrap();
        for proposer in [&default, &strict] {
            for (k, adaptive) in [(1, false), (2, false), (4, false), (4, true), (6, true)] {
                let policy = DraftPolicyConfig {
                    max_draft: k,
                    adaptive,
                    confidence: None,
                };
                let got = generate_speculative(&target, &tok, Some(proposer), policy, &req, |_| {})
                    .unwrap();
                let min_match = proposer.config().min_match;
                assert_eq!(
                    got.tokens, want.tokens,
                    "prompt {pi}, k = {k}, adaptive {adaptive}, min_match {min_match}"
                );
                drafted += got.speculation.drafted_tokens;
                accepted += got.speculation.accepted_tokens;
            }
        }
    }
    eprintln!("{accepted} of {drafted} glide+ngram drafts accepted");
    assert!(
        accepted > 0 && accepted < drafted,
        "{accepted} of {drafted} drafts accepted: both outcomes must occur"
    );
}

/// Each request counts the drafts that came from prompt lookup: every n-gram draft, none of
/// GLIDE's, and with glide+ngram some of each (its repetitive prompts match, the others not).
#[test]
fn drafts_from_prompt_lookup_are_counted_per_source() {
    let (target, tok, model) = models();
    let glide = GlideProposer::new(model.clone());
    let ngram = NgramProposer::new(8, 2).unwrap();
    let combined = GlideNgramProposer::new(model, GlideNgramConfig::default()).unwrap();
    let proposers: [(&str, &dyn Proposer); 3] = [
        ("glide", &glide),
        ("ngram", &ngram),
        ("glide+ngram", &combined),
    ];
    let policy = DraftPolicyConfig {
        max_draft: 4,
        adaptive: false,
        confidence: None,
    };
    for (name, proposer) in proposers {
        let mut total = SpecStats::default();
        for prompt in prompts(&target, &tok) {
            let got = generate_speculative(
                &target,
                &tok,
                Some(proposer),
                policy,
                &greedy(prompt, 32),
                |_| {},
            )
            .unwrap();
            let s = got.speculation;
            assert!(
                s.lookup_drafts <= s.drafts
                    && s.lookup_drafted_tokens <= s.drafted_tokens
                    && s.lookup_accepted_tokens <= s.accepted_tokens
                    && s.lookup_accepted_tokens <= s.lookup_drafted_tokens,
                "{name}: {s:?}"
            );
            total.add(&s);
        }
        eprintln!(
            "{name}: {} of {} drafts from lookup",
            total.lookup_drafts, total.drafts
        );
        assert!(total.drafts > 0, "{name} drafted nothing");
        match name {
            "glide" => assert_eq!(total.lookup_drafts, 0, "{total:?}"),
            "ngram" => assert_eq!(
                (total.lookup_drafts, total.lookup_drafted_tokens),
                (total.drafts, total.drafted_tokens)
            ),
            _ => assert!(
                total.lookup_drafts > 0 && total.lookup_drafts < total.drafts,
                "glide+ngram should take both proposals: {total:?}"
            ),
        }
    }
}

#[test]
fn a_batch_drafted_by_glide_and_ngram_gives_each_sequence_its_own_output() {
    let (target, tok, model) = models();
    let combined = GlideNgramProposer::new(model, GlideNgramConfig::default()).unwrap();
    let proposer: &dyn Proposer = &combined;
    let reqs: Vec<GenerateRequest> = prompts(&target, &tok)
        .into_iter()
        .map(|p| greedy(p, 24))
        .collect();
    for (k, adaptive) in [(1, false), (4, false), (6, true)] {
        let policy = DraftPolicyConfig {
            max_draft: k,
            adaptive,
            confidence: None,
        };
        let mut spec = Speculator::new(&target, Some(proposer));
        let mut seqs: Vec<Sequence> = reqs
            .iter()
            .map(|r| Sequence::new(&target, &tok, Some(proposer), r.clone(), policy).unwrap())
            .collect();
        for s in seqs.iter_mut() {
            spec.prefill(s).unwrap();
        }
        while seqs.iter().any(|s| !s.is_finished()) {
            let mut batch: Vec<&mut Sequence> = seqs.iter_mut().collect();
            spec.step(&mut batch).unwrap();
        }
        for (i, s) in seqs.iter_mut().enumerate() {
            spec.release(s);
            let want = generate(&target, &tok, &reqs[i], |_| {}).unwrap();
            assert_eq!(s.output().tokens, want.tokens, "sequence {i}, k = {k}");
        }
        assert_eq!(spec.draft_kv().usage().blocks_used, 0, "GLIDE's blocks");
        assert_eq!(
            spec.target_kv().usage().blocks_used,
            0,
            "the target's blocks"
        );
    }
}
