//! Property test: any sequence of submit / cancel / drop / read / finish operations leaves the
//! engine with zero blocks used, and the per-step block accounting never disagrees.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use specd_engine::actors::{
    Engine, EngineConfig, EngineRequest, Event, LoadPolicies, Method, RequestStream,
};
use specd_engine::generate::GenerateRequest;
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::DraftPolicyConfig;

#[derive(Debug, Clone)]
enum Op {
    Submit {
        len: usize,
        max_tokens: usize,
        method: u8,
        k: usize,
        temperature: bool,
    },
    Cancel(usize),
    Drop(usize),
    Read(usize),
    Finish(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..60, 1usize..40, 0u8..5, 0usize..7, any::<bool>()).prop_map(
            |(len, max_tokens, method, k, temperature)| Op::Submit {
                len,
                max_tokens,
                method,
                k,
                temperature
            }
        ),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Drop),
        3 => any::<usize>().prop_map(Op::Read),
        1 => any::<usize>().prop_map(Op::Finish),
    ]
}

async fn run(ops: Vec<Op>) {
    let m = common::engine_models(true);
    let vocab = m.target.config().vocab_size as u32;
    // A pool small enough that preemption happens, a queue small enough that overload does.
    let engine = Engine::start(
        m,
        EngineConfig {
            target_kv_blocks: 16,
            draft_kv_blocks: 16,
            glide_kv_blocks: 16,
            max_waiting: 12,
            max_running: 6,
            load: LoadPolicies::NEVER,
            // Prompts (up to 60 tokens) prefilled, and read by the draft model, in chunks of 8
            // while others decode: chunks meet preemption, cancels and drops too.
            prefill_chunk: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    let h = engine.handle();
    let mut live: Vec<RequestStream> = Vec::new();
    let mut refused = 0;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Submit {
                len,
                max_tokens,
                method,
                k,
                temperature,
            } => {
                let req = EngineRequest {
                    generate: GenerateRequest {
                        prompt: (0..len as u32)
                            .map(|t| (t * 7 + i as u32) % (vocab - 3))
                            .collect(),
                        max_tokens,
                        sampling: SamplingParams {
                            temperature: if temperature { 0.8 } else { 0.0 },
                            seed: i as u64,
                            ..Default::default()
                        },
                        stop: Vec::new(),
                        ignore_eos: false,
                    },
                    method: Method::ALL[method as usize],
                    policy: DraftPolicyConfig {
                        max_draft: k,
                        adaptive: k % 2 == 1,
                        confidence: None,
                    },
                };
                match h.submit(req).await {
                    Ok(s) => live.push(s),
                    Err(e) => {
                        assert_eq!(e.code(), "overloaded", "{e}");
                        refused += 1;
                    }
                }
            }
            Op::Cancel(j) if !live.is_empty() => h.cancel(live[j % live.len()].id()),
            Op::Drop(j) if !live.is_empty() => drop(live.swap_remove(j % live.len())),
            Op::Read(j) if !live.is_empty() => {
                let n = j % live.len();
                if matches!(
                    live[n].next_event().await,
                    None | Some(Event::Done(_)) | Some(Event::Error(_))
                ) {
                    live.swap_remove(n);
                }
            }
            Op::Finish(j) if !live.is_empty() => {
                let mut s = live.swap_remove(j % live.len());
                while let Some(e) = s.next_event().await {
                    if let Event::Error(e) = e {
                        panic!("request failed: {} {}", e.code, e.message);
                    }
                }
            }
            _ => {}
        }
    }
    // Half of what is left is abandoned, the rest read to the end.
    let keep = live.split_off(live.len() / 2);
    drop(live);
    for mut s in keep {
        while s.next_event().await.is_some() {}
    }
    for _ in 0..5000 {
        let s = h.stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 {
            assert_eq!(s.kv_target.blocks_used, 0, "{s:?}");
            assert_eq!(s.kv_draft.blocks_used, 0, "{s:?}");
            assert_eq!(s.kv_glide.blocks_used, 0, "{s:?}");
            assert_eq!(s.kv_target.tokens_cached, 0, "{s:?}");
            assert_eq!(s.kv_accounting_errors, 0, "{s:?}");
            eprintln!(
                "steps {}, finished {}, preemptions {}, refused {refused}",
                s.steps, s.finished, s.preemptions
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("engine did not drain: {:?}", h.stats().await.unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_end_with_zero_blocks(ops in proptest::collection::vec(op(), 1000)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
