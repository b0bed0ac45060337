//! The actor engine: concurrent requests of every method (none, draft model, n-gram, GLIDE,
//! GLIDE with n-gram) produce exactly what each produces alone, blocks are accounted for in every pool through
//! cancel / drop / finish / preemption, and overload is refused cleanly.

mod common;

use common::engine_models as models;

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specd_engine::actors::{
    Engine, EngineConfig, EngineHandle, EngineModels, EngineRequest, Event, LoadPolicies, Method,
    RequestStream,
};
use specd_engine::generate::{generate, FinishReason, GenerateRequest};
use specd_engine::kv::KvDtype;
use specd_engine::model::tiny::tiny_guessing_glide_with_feature;
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{DraftPolicyConfig, GlideProposer};

fn prompt(rng: &mut StdRng, vocab: u32, len: usize) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(0..vocab - 3)).collect()
}

fn request(prompt: Vec<u32>, max_tokens: usize, method: Method, k: usize) -> EngineRequest {
    EngineRequest {
        generate: GenerateRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        },
        method,
        policy: DraftPolicyConfig {
            max_draft: k,
            adaptive: k.is_multiple_of(2),
            confidence: None,
        },
    }
}

/// What a finished stream delivered.
#[derive(Debug, Default)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    error: Option<String>,
    drafted: usize,
    accepted: usize,
}

async fn drain(s: RequestStream) -> Outcome {
    drain_into(s, Outcome::default()).await
}

/// Reads one event into `o`; false at the end of the stream.
async fn read_one(s: &mut RequestStream, o: &mut Outcome) -> bool {
    let Some(e) = s.next_event().await else {
        return false;
    };
    match e {
        Event::Chunk(c) => {
            assert!(c.accepted <= c.drafted);
            o.tokens.extend(c.tokens);
            o.text.push_str(&c.text);
            o.drafted += c.drafted;
            o.accepted += c.accepted;
        }
        Event::Done(d) => {
            assert_eq!(d.usage.completion_tokens, o.tokens.len());
            assert_eq!(d.speculation.drafted_tokens as usize, o.drafted);
            o.finish = Some(d.finish_reason);
        }
        Event::Error(e) => o.error = Some(format!("{}: {}", e.code, e.message)),
    }
    true
}

async fn drain_into(mut s: RequestStream, mut o: Outcome) -> Outcome {
    while read_one(&mut s, &mut o).await {}
    o
}

/// Waits until nothing runs or waits, then checks that every block came back and that the
/// per-step accounting never disagreed.
async fn assert_idle_and_empty(h: &EngineHandle) -> specd_engine::actors::EngineStats {
    for _ in 0..2000 {
        let s = h.stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 && s.kv_target.blocks_used == 0 {
            assert_eq!(s.kv_draft.blocks_used, 0, "draft blocks leaked: {s:?}");
            assert_eq!(s.kv_glide.blocks_used, 0, "GLIDE blocks leaked: {s:?}");
            assert_eq!(s.kv_target.tokens_cached, 0, "{s:?}");
            assert_eq!(s.kv_draft.tokens_cached, 0, "{s:?}");
            assert_eq!(s.kv_glide.tokens_cached, 0, "{s:?}");
            assert_eq!(s.kv_accounting_errors, 0, "{s:?}");
            return s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("engine did not drain: {:?}", h.stats().await.unwrap());
}

/// 32 concurrent greedy requests of mixed lengths, proposers and draft lengths, under the
/// given config; each must equal target-only generation alone.
async fn mixed_requests_match_alone(config: EngineConfig) -> specd_engine::actors::EngineStats {
    mixed_requests_match_alone_on(models(true), config).await
}

/// [`mixed_requests_match_alone`] on the given models.
async fn mixed_requests_match_alone_on(
    m: EngineModels,
    config: EngineConfig,
) -> specd_engine::actors::EngineStats {
    let vocab = m.target.config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(7);
    let reqs: Vec<EngineRequest> = (0..32)
        .map(|i| {
            let len = rng.random_range(1..40);
            let method = Method::ALL[i % Method::ALL.len()];
            request(
                prompt(&mut rng, vocab, len),
                rng.random_range(4..48),
                method,
                1 + i % 6,
            )
        })
        .collect();
    let engine = Engine::start(m.clone(), config).unwrap();
    let h = engine.handle();
    let mut streams = Vec::new();
    for r in &reqs {
        streams.push(h.submit(r.clone()).await.unwrap());
    }
    let outs = futures_join(streams.into_iter().map(drain).collect()).await;
    for (i, (r, o)) in reqs.iter().zip(&outs).enumerate() {
        let want = generate(&m.target, &m.tokenizer, &r.generate, |_| {}).unwrap();
        assert_eq!(o.error, None, "request {i}");
        assert_eq!(o.tokens, want.tokens, "request {i} ({:?})", r.method);
        assert_eq!(o.text, want.text, "request {i}");
        assert_eq!(o.finish, Some(want.finish_reason), "request {i}");
    }
    assert_idle_and_empty(&h).await
}

/// Polls all futures to completion on this task (no extra dependency for join_all).
async fn futures_join<F: std::future::Future<Output = Outcome> + 'static>(
    fs: Vec<F>,
) -> Vec<Outcome> {
    let handles: Vec<_> = fs.into_iter().map(tokio::task::spawn_local).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

#[test]
fn thirty_two_concurrent_mixed_requests_equal_each_alone() {
    local(async {
        let s = mixed_requests_match_alone(EngineConfig {
            load: LoadPolicies::NEVER,
            ..Default::default()
        })
        .await;
        assert!(s.steps > 0 && s.finished == 32, "{s:?}");
        assert!(s.peak_running >= 8, "requests barely overlapped: {s:?}");
        // And with the default policy, which stops drafting in a batch this large.
        mixed_requests_match_alone(EngineConfig::default()).await;
    });
}

/// With the target's cache in bf16 (`--kv-dtype bf16`; GLIDE's cross-attention reads it too),
/// every method still gives target-only output token for token, in a batch as alone.
#[test]
fn a_glide_drafter_reading_the_targets_hidden_state_keeps_every_method_lossless() {
    let mut m = models(true);
    let g = tiny_guessing_glide_with_feature(&m.target, 240, 9).unwrap();
    m.glide = Some(Arc::new(GlideProposer::new(Arc::new(g))));
    local(mixed_requests_match_alone_on(m, EngineConfig::default()));
}

#[test]
fn bf16_kv_cache_keeps_every_method_lossless() {
    local(async {
        let m = common::engine_models_with(true, KvDtype::Bf16);
        assert_eq!(m.target.new_pool(1).dtype(), KvDtype::Bf16);
        let config = EngineConfig {
            load: LoadPolicies::NEVER,
            ..Default::default()
        };
        let s = mixed_requests_match_alone_on(m, config).await;
        assert!(s.finished == 32 && s.peak_running >= 8, "{s:?}");
    });
}

#[test]
fn kv_exhaustion_preempts_and_outputs_stay_identical() {
    local(async {
        // 24 blocks of 16 slots cannot hold 32 sequences of up to 40 + 48 tokens at once.
        // Whole prompts in a step: chunks sized from measured costs would make how many
        // sequences hold blocks at once, and so whether any is preempted, depend on timing.
        let s = mixed_requests_match_alone(EngineConfig {
            target_kv_blocks: 24,
            draft_kv_blocks: 24,
            glide_kv_blocks: 24,
            load: LoadPolicies::NEVER,
            prefill_chunk: Some(usize::MAX),
            ..Default::default()
        })
        .await;
        assert!(s.preemptions > 0, "no preemption happened: {s:?}");
        eprintln!("{} preemptions", s.preemptions);
        // And with prompts prefilled (and read by the draft model) 16 tokens a step.
        let s = mixed_requests_match_alone(EngineConfig {
            target_kv_blocks: 24,
            draft_kv_blocks: 24,
            glide_kv_blocks: 24,
            load: LoadPolicies::NEVER,
            prefill_chunk: Some(16),
            ..Default::default()
        })
        .await;
        assert!(
            s.preemptions > 0,
            "no preemption happened with chunks: {s:?}"
        );
    });
}

/// Requests of every method in one batch, for k = 1, 4 and adaptive: each equals target-only
/// output token for token, GLIDE's drafts are both accepted and rejected, and the draft
/// model's and GLIDE's pools (like the target's) hold no block once all have finished.
#[test]
fn every_method_in_one_batch_equals_target_only_output_for_every_draft_length() {
    local(async {
        let m = models(true);
        let vocab = m.target.config().vocab_size as u32;
        let mut rng = StdRng::seed_from_u64(12);
        let mut prompts: Vec<Vec<u32>> = (0..8)
            .map(|_| {
                let len = rng.random_range(2..30);
                prompt(&mut rng, vocab, len)
            })
            .collect();
        // A GLIDE request's prompt after which the target repeats tokens in long runs, which
        // the tiny GLIDE (it guesses the current token) drafts well: whole drafts accepted.
        prompts[3] = vec![130; 6];
        // The same for a glide+ngram request: in a run, the n-gram proposal is one token long,
        // taken at k = 1 (it fills the budget), GLIDE's otherwise.
        prompts[4] = vec![130; 6];
        let want: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let r = request(p.clone(), 40, Method::None, 0).generate;
                generate(&m.target, &m.tokenizer, &r, |_| {})
                    .unwrap()
                    .tokens
            })
            .collect();
        let config = EngineConfig {
            load: LoadPolicies::NEVER,
            ..Default::default()
        };
        let engine = Engine::start(m, config).unwrap();
        let h = engine.handle();
        let (mut drafted, mut accepted) = (0, 0);
        for (k, adaptive) in [(1, false), (4, false), (4, true)] {
            let mut streams = Vec::new();
            for (i, p) in prompts.iter().enumerate() {
                let mut r = request(p.clone(), 40, Method::ALL[i % Method::ALL.len()], k);
                r.policy.adaptive = adaptive;
                streams.push(h.submit(r).await.unwrap());
            }
            let outs = futures_join(streams.into_iter().map(drain).collect()).await;
            for (i, o) in outs.iter().enumerate() {
                let method = Method::ALL[i % Method::ALL.len()];
                assert_eq!(o.error, None, "request {i} ({method})");
                assert_eq!(
                    o.tokens, want[i],
                    "request {i} ({method}), k = {k}, adaptive {adaptive}"
                );
                if method == Method::Glide {
                    drafted += o.drafted;
                    accepted += o.accepted;
                }
                if method == Method::GlideNgram {
                    assert!(o.drafted > 0, "glide+ngram never drafted: {o:?}");
                }
            }
            let s = assert_idle_and_empty(&h).await;
            assert!(s.kv_glide.blocks_total > 0, "{s:?}");
        }
        eprintln!("{accepted} of {drafted} GLIDE drafts accepted");
        assert!(
            accepted > 0 && accepted < drafted,
            "{accepted} of {drafted} GLIDE drafts accepted: both outcomes must occur"
        );
    });
}

/// GLIDE drafts from its first chance, the step after the target's prefill, even when reading
/// the prompt then costs more than a drafter left behind may catch up near a request's end.
#[test]
fn glide_drafts_after_a_long_prompt_and_few_tokens_to_generate() {
    local(async {
        let m = models(true);
        let vocab = m.target.config().vocab_size as u32;
        let long = prompt(&mut StdRng::seed_from_u64(5), vocab, 60);
        let req = request(long, 8, Method::Glide, 4);
        let want = generate(&m.target, &m.tokenizer, &req.generate, |_| {}).unwrap();
        let engine = Engine::start(m, EngineConfig::default()).unwrap();
        let h = engine.handle();
        let o = drain(h.submit(req).await.unwrap()).await;
        assert_eq!(o.tokens, want.tokens);
        assert!(o.drafted > 0, "GLIDE never drafted: {o:?}");
        assert_idle_and_empty(&h).await;
    });
}

#[test]
fn cancel_drop_and_finish_return_every_block() {
    local(async {
        let m = models(true);
        let vocab = m.target.config().vocab_size as u32;
        // Prompts whose greedy continuation runs 400 tokens without EOS, so that only the
        // cancel can end the first two early.
        let mut rng = StdRng::seed_from_u64(3);
        let mut prompts = Vec::new();
        while prompts.len() < 6 {
            let p = prompt(&mut rng, vocab, 20);
            let r = request(p.clone(), 400, Method::None, 0).generate;
            if generate(&m.target, &m.tokenizer, &r, |_| {})
                .unwrap()
                .finish_reason
                == FinishReason::Length
            {
                prompts.push(p);
            }
        }
        let engine = Engine::start(m, EngineConfig::default()).unwrap();
        let h = engine.handle();
        let mut streams = Vec::new();
        for (i, p) in prompts.into_iter().enumerate() {
            let method = [
                Method::Draft,
                Method::Ngram,
                Method::Glide,
                Method::GlideNgram,
                Method::None,
            ][i % 5];
            let r = request(p, 400, method, 4);
            streams.push((h.submit(r).await.unwrap(), Outcome::default()));
        }
        // Let them all get going.
        for (s, o) in streams.iter_mut() {
            assert!(read_one(s, o).await);
            assert!(!o.tokens.is_empty());
        }
        let mut it = streams.into_iter();
        // Cancel through the handle: the stream ends with `cancelled`.
        let (a, o) = it.next().unwrap();
        h.cancel(a.id());
        let o = drain_into(a, o).await;
        assert_eq!(o.finish, Some(FinishReason::Cancelled));
        assert!(o.tokens.len() < 400);
        // Drop a stream mid-flight.
        drop(it.next().unwrap());
        // Finish the rest.
        for (s, o) in it {
            let o = drain_into(s, o).await;
            assert_eq!(o.error, None);
            assert!(o.finish.is_some());
        }
        assert_idle_and_empty(&h).await;
        // Cancelling an unknown id is harmless, and the engine still serves.
        h.cancel(999_999);
        let o = drain(
            h.submit(request(vec![1, 2, 3], 8, Method::Draft, 3))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(o.tokens.len(), 8);
        assert_idle_and_empty(&h).await;
    });
}

#[test]
fn overloaded_queue_refuses_clearly_and_keeps_serving() {
    local(async {
        let m = models(false);
        let config = EngineConfig {
            max_waiting: 2,
            max_running: 1,
            ..Default::default()
        };
        let engine = Engine::start(m, config).unwrap();
        let h = engine.handle();
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 0..8u32 {
            match h
                .submit(request(vec![1 + i, 2, 3], 30, Method::Ngram, 3))
                .await
            {
                Ok(s) => accepted.push(s),
                Err(e) => {
                    assert_eq!(e.code(), "overloaded");
                    assert!(e.to_string().contains("limit 2"), "{e}");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "the queue limit was never hit");
        for s in accepted {
            let o = drain(s).await;
            assert_eq!(o.tokens.len(), 30, "{o:?}");
        }
        assert_idle_and_empty(&h).await;
        let o = drain(
            h.submit(request(vec![5, 6], 4, Method::None, 0))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(o.tokens.len(), 4);
    });
}

#[test]
fn invalid_requests_name_the_problem() {
    local(async {
        let m = models(false);
        let engine = Engine::start(
            m,
            EngineConfig {
                target_kv_blocks: 4,
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        let e = h
            .submit(request(vec![1, 2], 4, Method::Draft, 3))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(e.to_string().contains("draft model"), "{e}");
        let e = h
            .submit(request(vec![1, 2], 4, Method::Glide, 3))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        let e = e.to_string();
        assert!(
            e.contains("`speculation.method` `glide` needs a GLIDE drafter")
                && e.contains("it serves none, ngram"),
            "{e}"
        );
        let e = h
            .submit(request(vec![1, 2], 4, Method::GlideNgram, 3))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(
            e.to_string()
                .contains("`speculation.method` `glide+ngram` needs a GLIDE drafter"),
            "{e}"
        );
        let e = h
            .submit(request(vec![1; 100], 4, Method::None, 0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "prompt_too_long", "{e}");
        let e = h
            .submit(request(Vec::new(), 4, Method::None, 0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{e}");
        // A sequence that outgrows the whole pool (4 blocks, 64 positions) ends like one
        // reaching the context length: `length`, after what fitted.
        let o = drain(
            h.submit(request(vec![1; 40], 200, Method::None, 0))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((o.error, o.finish), (None, Some(FinishReason::Length)));
        assert_eq!(
            o.tokens.len(),
            64 - 40 + 1,
            "generated until the pool was full"
        );
        // Token ids outside the vocabulary are refused before they reach a batch.
        let e = h
            .submit(request(vec![1, 1 << 30], 4, Method::None, 0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{e}");
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        // A pool of 64 positions takes a 64-token prompt without drafting, not 65.
        let e = h
            .submit(request(vec![1; 65], 4, Method::None, 0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("of 64 tokens"), "{e}");
        let o = drain(
            h.submit(request(vec![1; 64], 4, Method::None, 0))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(o.finish, Some(FinishReason::Length), "{o:?}");
        assert_idle_and_empty(&h).await;
    });
}

#[test]
fn stopping_the_engine_ends_every_stream_with_an_error() {
    local(async {
        let m = models(true);
        let engine = Engine::start(
            m,
            EngineConfig {
                max_running: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let h = engine.handle();
        let mut running = h
            .submit(request(vec![1, 2, 3], 400, Method::Draft, 4))
            .await
            .unwrap();
        let waiting = h
            .submit(request(vec![4, 5, 6], 400, Method::None, 0))
            .await
            .unwrap();
        let mut first = Outcome::default();
        assert!(read_one(&mut running, &mut first).await);
        drop(engine);
        for o in [drain_into(running, first).await, drain(waiting).await] {
            let e = o.error.expect("a terminal error event");
            assert!(e.starts_with("overloaded") && e.contains("stopped"), "{e}");
        }
        assert!(h.stats().await.is_err(), "the engine is gone");
    });
}
