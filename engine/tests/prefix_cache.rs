//! The target's prefix cache in the engine: a request whose prompt starts as an earlier one's
//! takes the cached blocks of that prefix instead of prefilling it, and nothing it outputs
//! changes, for every speculation method (GLIDE reads those blocks too); a conversation's next
//! turn takes its history, generated tokens included; under KV pressure parked blocks are
//! taken back and the accounting holds.

mod common;

use common::streams::{drain, idle_and_empty, local, prompt, request, target_only, Outcome};
use specd_engine::actors::{Engine, EngineConfig, EngineHandle, LoadPolicies, Method};
use specd_engine::kv::BLOCK_SIZE;

fn config(prefix_cache: bool) -> EngineConfig {
    EngineConfig {
        load: LoadPolicies::NEVER,
        prefix_cache,
        ..Default::default()
    }
}

async fn hits(h: &EngineHandle) -> u64 {
    h.stats().await.unwrap().prefix_cache_hit_tokens
}

/// A 40-token "system turn" shared by two prompts: the same prompt again takes every whole
/// block of its prompt from the cache, the other prompt the two whole blocks of the shared
/// part, and every output equals target-only, for every method.
#[test]
fn a_shared_prefix_is_taken_from_the_cache_and_changes_no_token() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let system = prompt(21, vocab, 40);
        let with = |seed: u64| [system.clone(), prompt(seed, vocab, 10)].concat();
        for (i, method) in Method::ALL.into_iter().enumerate() {
            let engine = Engine::start(m.clone(), config(true)).unwrap();
            let h = engine.handle();
            let (a, b) = (with(30 + i as u64), with(40 + i as u64));
            for (p, hit) in [(&a, 0), (&a, 3 * BLOCK_SIZE), (&b, 2 * BLOCK_SIZE)] {
                let r = request(p.clone(), 24, method);
                let before = hits(&h).await;
                let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
                assert_eq!(o.tokens, target_only(&m, &r), "{method}");
                assert_eq!(hits(&h).await - before, hit as u64, "{method}");
            }
            idle_and_empty(&h).await;
            let s = h.stats().await.unwrap();
            assert!(
                s.kv_target.blocks_parked > 0,
                "nothing stayed cached: {s:?}"
            );
        }
    });
}

/// With the cache off, the same prompt twice is prefilled twice.
#[test]
fn with_the_prefix_cache_off_every_prompt_is_prefilled() {
    local(async {
        let m = common::engine_models(false);
        let vocab = m.target.config().vocab_size as u32;
        let engine = Engine::start(m.clone(), config(false)).unwrap();
        let h = engine.handle();
        let r = request(prompt(5, vocab, 60), 8, Method::None);
        for _ in 0..2 {
            let o = drain(h.submit(r.clone()).await.unwrap(), Outcome::default()).await;
            assert_eq!(o.tokens, target_only(&m, &r));
        }
        assert_eq!(hits(&h).await, 0);
        idle_and_empty(&h).await;
        assert_eq!(h.stats().await.unwrap().kv_target.blocks_parked, 0);
    });
}

/// A conversation's second turn resends the first turn's prompt and answer: it takes every
/// whole block the first turn committed (the answer's too; the answer's last token, never fed
/// to the target, has no keys yet) and answers as target-only.
#[test]
fn a_conversation_turn_takes_its_history_answer_included() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let engine = Engine::start(m.clone(), config(true)).unwrap();
        let h = engine.handle();
        let first = request(prompt(8, vocab, 27), 30, Method::Draft);
        let answer = drain(h.submit(first.clone()).await.unwrap(), Outcome::default())
            .await
            .tokens;
        assert_eq!(answer, target_only(&m, &first));
        let history = [first.generate.prompt.clone(), answer].concat();
        let second = request(
            [history.clone(), prompt(9, vocab, 7)].concat(),
            20,
            Method::Glide,
        );
        let before = hits(&h).await;
        let o = drain(h.submit(second.clone()).await.unwrap(), Outcome::default()).await;
        assert_eq!(o.tokens, target_only(&m, &second));
        let committed = history.len() - 1;
        assert_eq!(
            hits(&h).await - before,
            (committed / BLOCK_SIZE * BLOCK_SIZE) as u64
        );
        idle_and_empty(&h).await;
    });
}

/// Sixteen requests sharing a 40-token prefix in a pool of 24 blocks, every method among them,
/// arriving at once: some compute the prefix side by side (one caches it), later ones take it,
/// sequences are preempted and come back, parked blocks are taken for new positions; every
/// output equals target-only and the pools end empty with no accounting error.
#[test]
fn under_kv_pressure_shared_and_parked_blocks_keep_the_accounting() {
    local(async {
        let m = common::engine_models(true);
        let vocab = m.target.config().vocab_size as u32;
        let system = prompt(50, vocab, 40);
        let engine = Engine::start(
            m.clone(),
            EngineConfig {
                target_kv_blocks: 24,
                draft_kv_blocks: 24,
                glide_kv_blocks: 24,
                ..config(true)
            },
        )
        .unwrap();
        let h = engine.handle();
        let reqs: Vec<_> = (0..16u64)
            .map(|i| {
                let p = [system.clone(), prompt(60 + i, vocab, 4 + i as usize)].concat();
                request(p, 40, Method::ALL[i as usize % Method::ALL.len()])
            })
            .collect();
        let mut streams = Vec::new();
        for r in &reqs {
            streams.push(h.submit(r.clone()).await.unwrap());
        }
        for (r, s) in reqs.iter().zip(streams) {
            let o = drain(s, Outcome::default()).await;
            assert_eq!(o.tokens, target_only(&m, r), "{}", r.method);
        }
        let s = h.stats().await.unwrap();
        assert!(s.preemptions > 0, "no preemption: {s:?}");
        assert!(s.prefix_cache_hit_tokens > 0, "no prefix taken: {s:?}");
        idle_and_empty(&h).await;
    });
}
