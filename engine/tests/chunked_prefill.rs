//! Chunked prefill and the draft model's catch-up: a long prompt is prefilled over several
//! steps without changing any token, running streams keep stepping between its chunks, the
//! draft model stays out of a sequence's first step and reads a long prompt in chunks, and the
//! catch-up rule decides whether reading the prompt pays.

mod common;

use std::time::Duration;

use common::streams::{
    drain, idle_and_empty, local, prompt, request, started, target_only, Outcome,
};
use specd_engine::actors::adapt::Calibration;
use specd_engine::actors::load::assumed_acceptance;
use specd_engine::actors::{
    measure_draft_costs, CatchUpPolicy, Engine, EngineConfig, EngineRequest, LoadPolicies,
    LoadPolicy, Method,
};

/// A 300-token prompt prefilled 16 tokens a step (alone, under `max_batch_tokens` = 16), and
/// 7 a step beside a decoding stream, gives target-only output for every method.
#[test]
fn chunked_prefill_gives_the_tokens_of_whole_prefill() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let long = prompt(1, vocab, 300);
        let short = prompt(2, vocab, 5);
        for method in Method::ALL {
            let r = request(long.clone(), 24, method);
            let want = target_only(&m, &r);
            // Alone: the budget itself cuts the prompt into 16-token chunks.
            let engine = Engine::start(
                m.clone(),
                EngineConfig {
                    max_batch_tokens: 16,
                    load: LoadPolicies::NEVER,
                    ..Default::default()
                },
            )
            .unwrap();
            let h = engine.handle();
            let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
            assert_eq!(o.tokens, want, "{method}, alone in 16-token chunks");
            let steps = h.stats().await.unwrap().steps;
            assert!(
                steps >= 300 / 16,
                "{method}: {steps} steps, the prompt was not chunked"
            );
            idle_and_empty(&h).await;
            // Beside a running stream: chunks of 7.
            let engine = Engine::start(
                m.clone(),
                EngineConfig {
                    prefill_chunk: Some(7),
                    load: LoadPolicies::NEVER,
                    ..Default::default()
                },
            )
            .unwrap();
            let h = engine.handle();
            let (other, first) = started(&h, request(short.clone(), 80, method)).await;
            let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
            assert_eq!(
                o.tokens, want,
                "{method}, in 7-token chunks beside another stream"
            );
            let o = drain(other, first).await;
            assert_eq!(
                o.tokens,
                target_only(&m, &request(short.clone(), 80, method))
            );
            idle_and_empty(&h).await;
        }
    });
}

/// A 400-token prompt arriving while a stream runs is prefilled 8 tokens a step (50 steps),
/// and the running stream gets a token in every one of those steps: it is not stalled.
#[test]
fn a_long_prompt_admitted_mid_stream_does_not_starve_the_others() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let engine = Engine::start(
            m.clone(),
            EngineConfig {
                prefill_chunk: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        let running = request(prompt(3, vocab, 4), 200, Method::None);
        let (a, ao) = started(&h, running.clone()).await;
        let long = request(prompt(4, vocab, 400), 4, Method::None);
        let bo = drain(h.submit(long.clone()).await.unwrap(), Outcome::default()).await;
        let ao = drain(a, ao).await;
        assert_eq!(bo.tokens, target_only(&m, &long));
        assert_eq!(ao.tokens, target_only(&m, &running));
        // Steps from the running stream's first token to the long prompt's first.
        let (start, answered) = (ao.steps[0], bo.steps[0]);
        assert!(
            answered - start >= 50,
            "the 400-token prompt answered {} steps after the stream started: not prefilled in \
             8-token chunks",
            answered - start
        );
        let stepped: Vec<u64> = ao
            .steps
            .iter()
            .copied()
            .filter(|&s| s <= answered)
            .collect();
        let every: Vec<u64> = (start..=answered).collect();
        assert_eq!(
            stepped, every,
            "the running stream missed steps during the prefill"
        );
        idle_and_empty(&h).await;
    });
}

/// A burst of three 40-token prompts, larger than one step's 64-token budget, arriving at an
/// idle engine: the prompt left after the first step is not held to a share of the step of
/// the stream that started in it (that stream has only its first token), so all three answer
/// within two steps and then decode together, each giving target-only output.
#[test]
fn a_burst_larger_than_the_budget_starts_together() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let engine = Engine::start(
            m.clone(),
            EngineConfig {
                max_batch_tokens: 64,
                // The three arrive before the first step.
                admission_window: Duration::from_millis(300),
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        let reqs: Vec<EngineRequest> = (0..3)
            .map(|i| request(prompt(10 + i, vocab, 40), 12, Method::None))
            .collect();
        let mut streams = Vec::new();
        for r in &reqs {
            streams.push(h.submit(r.clone()).await.unwrap());
        }
        let mut outcomes = Vec::new();
        for s in streams {
            outcomes.push(drain(s, Outcome::default()).await);
        }
        for (r, o) in reqs.iter().zip(&outcomes) {
            assert_eq!(o.tokens, target_only(&m, r));
        }
        let first: Vec<u64> = outcomes.iter().map(|o| o.steps[0]).collect();
        // Step 1: 64 of the 120 tokens; step 2, beside one stream with only its first token,
        // the other 56.
        assert!(
            first.iter().all(|&s| s <= 2),
            "first tokens at steps {first:?}: the burst's last prompts were fed in shares"
        );
        let last: Vec<u64> = outcomes.iter().map(|o| *o.steps.last().unwrap()).collect();
        let spread = last.iter().max().unwrap() - last.iter().min().unwrap();
        assert!(
            spread <= 2,
            "last tokens at steps {last:?}: the burst did not decode together"
        );
        idle_and_empty(&h).await;
    });
}

/// The draft model does not work in a sequence's first step (the first token waits for the
/// target alone), reads a 120-token prompt in 6-token chunks beside another stream without
/// drafting, then drafts; the output is the target's own.
#[test]
fn the_draft_model_reads_the_prompt_after_the_first_token_in_chunks() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let engine = Engine::start(
            m.clone(),
            EngineConfig {
                prefill_chunk: Some(6),
                load: LoadPolicies::NEVER,
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        // Alone: the first chunk drafted nothing, later ones did.
        let r = request(prompt(5, vocab, 10), 40, Method::Draft);
        let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
        assert_eq!(o.tokens, target_only(&m, &r));
        assert_eq!(
            o.drafted[0], 0,
            "the draft model drafted in the first step: {o:?}"
        );
        assert!(
            o.drafted_total() > 0,
            "the draft model did not draft after: {o:?}"
        );
        // Beside another stream, a long prompt: 120 / 6 = 20 steps of catch-up first. The other
        // stream is long enough to still run then even if this task is scheduled late (on a
        // busy machine the engine ran ~90 steps before the request below arrived; with 120
        // tokens the other stream could end within the catch-up, which then takes bigger
        // chunks alone).
        let (other, first) = started(&h, request(prompt(6, vocab, 4), 400, Method::None)).await;
        let r = request(prompt(7, vocab, 120), 60, Method::Draft);
        let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
        assert_eq!(o.tokens, target_only(&m, &r));
        let undrafted = o.drafted.iter().take_while(|&&d| d == 0).count();
        assert!(
            undrafted >= 120 / 6,
            "drafting began after {undrafted} steps, before the 120-token prompt was read: {o:?}"
        );
        assert!(o.drafted_total() > 0, "never drafted: {o:?}");
        drain(other, first).await;
        idle_and_empty(&h).await;
    });
}

/// With a calibrated rule (read a prompt of n tokens only when at least n tokens are left to
/// generate), a 60-token prompt is not read for 20 tokens and is for 100.
#[test]
fn the_catch_up_rule_weighs_the_prompt_against_the_tokens_left() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let engine = Engine::start(
            m.clone(),
            EngineConfig {
                catch_up: CatchUpPolicy {
                    per_remaining_token: 1.0,
                    prompt: true,
                },
                load: LoadPolicies::NEVER,
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        let p = prompt(8, vocab, 60);
        let short = request(p.clone(), 20, Method::Draft);
        let o = drain(h.submit(short.clone()).await.unwrap(), Outcome::default()).await;
        assert_eq!(o.tokens, target_only(&m, &short));
        assert_eq!(
            o.drafted_total(),
            0,
            "drafted for 20 tokens after 60: {o:?}"
        );
        let long = request(p, 100, Method::Draft);
        let o = drain(h.submit(long.clone()).await.unwrap(), Outcome::default()).await;
        assert_eq!(o.tokens, target_only(&m, &long));
        assert!(o.drafted_total() > 0, "never drafted for 100 tokens: {o:?}");
        idle_and_empty(&h).await;
    });
}

/// The start-up measurement gives positive, finite costs for both models, and the policies
/// derived from them are well formed.
#[test]
fn draft_costs_are_measured_on_the_served_models() {
    let m = common::engine_models(true);
    let draft = m.draft.as_ref().unwrap();
    let c = measure_draft_costs(&m.target, draft.model(), 4).unwrap();
    for (name, v) in [
        ("target row", c.target.rows(1)),
        ("draft row", c.draft.rows(1)),
        ("catch-up per token", c.catch_up_token),
    ] {
        assert!(v.is_finite() && v > 0.0, "{name}: {v}");
    }
    for (name, v) in [("target", c.target.per_row), ("draft", c.draft.per_row)] {
        assert!(v.is_finite() && v >= 0.0, "{name} per row: {v}");
    }
    assert_eq!(c.k, 4);
    let p = CatchUpPolicy::calibrated(&c);
    assert!(p.prompt && p.per_remaining_token >= 0.0, "{p:?}");
    let load = LoadPolicy::calibrated(c.target, c.draft, 4, 0.7, 64);
    assert!(
        load.shorten_at == usize::MAX || load.shorten_at < load.off_at,
        "{load:?}"
    );
}

/// An engine given the served models' costs starts from the policies at the assumed
/// acceptance but probes: the draft model, which those policies keep off, drafts for the first
/// requests (to measure what it accepts), losslessly; with the same policies and no
/// calibration, it never drafts.
#[test]
fn a_calibrated_engine_probes_a_drafter_its_prior_turns_off() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        // The H200's costs: drafting 4 tokens with the draft model never pays at its assumed
        // acceptance (so without probing it would never read a prompt).
        let calibration = Calibration::h200_draft_pair();
        let (load, catch_up) = calibration.policies(assumed_acceptance);
        let r = request(prompt(11, vocab, 24), 40, Method::Draft);
        assert!(
            !catch_up.pays(24, 40, true),
            "the prior should keep the prompt unread: {catch_up:?}"
        );
        for (calibrated, drafts) in [(false, false), (true, true)] {
            let engine = Engine::start(
                m.clone(),
                EngineConfig {
                    load,
                    catch_up,
                    calibration: calibrated.then_some(calibration),
                    ..Default::default()
                },
            )
            .unwrap();
            let h = engine.handle();
            let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
            assert_eq!(o.tokens, target_only(&m, &r), "calibrated: {calibrated}");
            assert_eq!(
                o.drafted_total() > 0,
                drafts,
                "calibrated: {calibrated}: {o:?}"
            );
            idle_and_empty(&h).await;
        }
    });
}

/// Verifies `r`'s sequence (prefilled) against `drafts` in one forward, with another sequence's
/// first prompt chunk riding along when `ride`.
fn verify_riding(
    m: &specd_engine::actors::EngineModels,
    r: &EngineRequest,
    drafts: &[specd_engine::speculative::Draft],
    ride: bool,
) -> Vec<specd_engine::speculative::Verified> {
    use specd_engine::speculative::{verify, Acceptance, Sequence};
    let vocab = m.target.config().vocab_size as u32;
    let mut pool = m.target.new_pool(64);
    let new_seq = |req: &EngineRequest| {
        let (g, p) = (req.generate.clone(), req.policy);
        Sequence::new(&m.target, &m.tokenizer, None, g, p).unwrap()
    };
    let mut seq = new_seq(r);
    seq.prefill(&m.target, &mut pool, None).unwrap();
    let mut other = new_seq(&request(prompt(4, vocab, 30), 3, Method::None));
    let riders: Vec<_> = if ride {
        other.chunk_input(8).into_iter().collect()
    } else {
        Vec::new()
    };
    assert_eq!(riders.len(), usize::from(ride));
    verify(
        &m.target,
        &mut pool,
        &mut [&mut seq],
        drafts,
        riders,
        Acceptance::InForward,
    )
    .unwrap()
}

/// Two drafts of the target's own greedy continuation, then a wrong third.
fn two_right_then_wrong(want: &[u32], vocab: u32) -> [specd_engine::speculative::Draft; 1] {
    [specd_engine::speculative::Draft {
        tokens: vec![want[0], want[1], (want[2] + 1) % vocab],
        probs: None,
        lookup: false,
    }]
}

/// A greedy verification that another sequence's prompt chunk rides along (the forward then
/// hands back each row's argmax and acceptance runs on the host) decides exactly as the same
/// verification alone (decided in the forward): two drafts kept, the target's third token next.
#[test]
fn a_verification_with_a_prompt_riding_along_decides_as_it_does_alone() {
    use specd_engine::speculative::{Verdict, Verified};
    let m = common::engine_models(false);
    let vocab = m.target.config().vocab_size as u32;
    let r = request(prompt(3, vocab, 12), 3, Method::None);
    let want = target_only(&m, &r);
    let drafts = two_right_then_wrong(&want, vocab);
    let alone = verify_riding(&m, &r, &drafts, false);
    let expected = Verified::Decided(Verdict {
        accepted: 2,
        next: want[2],
    });
    assert_eq!(alone, vec![expected.clone()]);
    assert_eq!(
        verify_riding(&m, &r, &drafts, true),
        vec![expected],
        "with a prompt chunk riding along"
    );
}

/// A sampled verification (temperature alone) that another sequence's prompt chunk rides along
/// still decides in the forward (on a GPU, no row of the vocabulary crosses to the host), and
/// exactly as the same verification alone: the same uniforms from the same seed give the same
/// verdict.
#[test]
fn a_sampled_verification_with_a_prompt_riding_along_decides_in_the_forward_as_alone() {
    use specd_engine::speculative::{Sequence, Verified};
    let m = common::engine_models(false);
    let vocab = m.target.config().vocab_size as u32;
    let mut r = request(prompt(3, vocab, 12), 3, Method::None);
    r.generate.sampling.temperature = 0.8;
    r.generate.sampling.seed = 7;
    let sampled = Sequence::new(&m.target, &m.tokenizer, None, r.generate.clone(), r.policy);
    assert!(sampled.unwrap().samples_in_forward());
    let want = target_only(&m, &request(prompt(3, vocab, 12), 3, Method::None));
    let drafts = two_right_then_wrong(&want, vocab);
    let alone = verify_riding(&m, &r, &drafts, false);
    assert!(
        matches!(alone[..], [Verified::Decided(_)]),
        "alone: {alone:?}"
    );
    assert_eq!(
        verify_riding(&m, &r, &drafts, true),
        alone,
        "with a prompt chunk riding along"
    );
}
