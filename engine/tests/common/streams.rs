//! Requests and their streams for the engine tests that watch steps: a request of given
//! tokens, its events gathered to the end, and the engine drained and checked empty.
#![allow(dead_code)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specd_engine::actors::{
    EngineHandle, EngineModels, EngineRequest, Event, Method, RequestStream,
};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::DraftPolicyConfig;

/// `len` tokens drawn from `seed`, none of the last three ids.
pub fn prompt(seed: u64, vocab: u32, len: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(0..vocab - 3)).collect()
}

/// A greedy request for `max_tokens` (EOS ignored) by `method` at the default draft policy.
pub fn request(prompt: Vec<u32>, max_tokens: usize, method: Method) -> EngineRequest {
    EngineRequest {
        generate: GenerateRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: true,
        },
        method,
        policy: DraftPolicyConfig::default(),
    }
}

/// Tokens, drafted and accepted counts of each chunk of a stream, to its end.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    /// Drafted tokens per chunk, in order.
    pub drafted: Vec<usize>,
    /// The engine step of each chunk with tokens.
    pub steps: Vec<u64>,
}

impl Outcome {
    pub fn take(&mut self, e: Event) {
        match e {
            Event::Chunk(c) => {
                if !c.tokens.is_empty() {
                    self.steps.push(c.step);
                }
                self.tokens.extend(c.tokens);
                self.drafted.push(c.drafted);
            }
            Event::Done(_) => {}
            Event::Error(e) => panic!("request failed: {}: {}", e.code, e.message),
        }
    }

    pub fn drafted_total(&self) -> usize {
        self.drafted.iter().sum()
    }
}

pub async fn drain(mut s: RequestStream, mut o: Outcome) -> Outcome {
    while let Some(e) = s.next_event().await {
        o.take(e);
    }
    o
}

/// Submits `r` and reads its first event: a stream that is running.
pub async fn started(h: &EngineHandle, r: EngineRequest) -> (RequestStream, Outcome) {
    let mut s = h.submit(r).await.unwrap();
    let mut o = Outcome::default();
    o.take(s.next_event().await.unwrap());
    (s, o)
}

/// Waits for the engine to finish everything; its pools then hold no block and its accounting
/// found no error.
pub async fn idle_and_empty(h: &EngineHandle) {
    for _ in 0..2000 {
        let s = h.stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 && s.kv_target.blocks_used == 0 {
            assert_eq!(s.kv_draft.blocks_used, 0, "{s:?}");
            assert_eq!(s.kv_glide.blocks_used, 0, "{s:?}");
            assert_eq!(s.kv_accounting_errors, 0, "{s:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("engine did not drain: {:?}", h.stats().await.unwrap());
}

/// Runs `f` on a current-thread runtime inside a `LocalSet`.
pub fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// The target's own greedy output for `r`, without the engine.
pub fn target_only(m: &EngineModels, r: &EngineRequest) -> Vec<u32> {
    generate(&m.target, &m.tokenizer, &r.generate, |_| {})
        .unwrap()
        .tokens
}
