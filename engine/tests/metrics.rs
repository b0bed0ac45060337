//! The engine records the metrics of DESIGN.md through the `metrics` facade: counters agree
//! with what the requests' streams reported, every step phase is timed, KV gauges are set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use specd_engine::actors::{
    Engine, EngineConfig, EngineModels, EngineRequest, Event, LoadPolicies, Method,
};
use specd_engine::generate::GenerateRequest;
use specd_engine::metrics as m;
use specd_engine::model::tiny::{tiny_model, TinySpec};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{DraftPolicyConfig, NgramProposer};

#[test]
fn engine_records_the_declared_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    m::describe();

    let target = tiny_model(&TinySpec::default()).unwrap();
    let models = EngineModels {
        tokenizer: Arc::new(target.tokenizer.clone().unwrap()),
        target: Arc::new(target.model),
        draft: None,
        ngram: NgramProposer::default(),
        glide: None,
    };
    let config = EngineConfig {
        target_kv_blocks: 64,
        load: LoadPolicies::NEVER,
        ..Default::default()
    };
    let engine = Engine::start(models, config).unwrap();
    let h = engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut tokens, mut drafted, mut accepted, mut requests) = (0u64, 0u64, 0u64, 0u64);
    rt.block_on(async {
        for i in 0..6u32 {
            let prompt: Vec<u32> = (0..12).map(|t| (t * 3 + i) % 5 + 10).collect();
            let mut s = h
                .submit(EngineRequest {
                    generate: GenerateRequest {
                        prompt,
                        max_tokens: 20,
                        sampling: SamplingParams::default(),
                        stop: Vec::new(),
                        ignore_eos: false,
                    },
                    method: [Method::None, Method::Ngram][i as usize % 2],
                    policy: DraftPolicyConfig {
                        max_draft: 4,
                        ..Default::default()
                    },
                })
                .await
                .unwrap();
            while let Some(e) = s.next_event().await {
                match e {
                    Event::Chunk(c) => tokens += c.tokens.len() as u64,
                    Event::Done(d) => {
                        drafted += d.speculation.drafted_tokens;
                        accepted += d.speculation.accepted_tokens;
                        requests += 1;
                    }
                    Event::Error(e) => panic!("{}", e.message),
                }
            }
        }
        // A prompt longer than the context is refused: counted with its error code.
        let refused = h
            .submit(EngineRequest {
                generate: GenerateRequest {
                    prompt: vec![10; 100_000],
                    max_tokens: 4,
                    sampling: SamplingParams::default(),
                    stop: Vec::new(),
                    ignore_eos: false,
                },
                method: Method::None,
                policy: DraftPolicyConfig::default(),
            })
            .await;
        assert!(refused.is_err(), "a 100,000-token prompt was admitted");
        // The last step's gauges are published as the pools come home.
        while h.stats().await.unwrap().kv_target.blocks_used != 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    drop(engine);

    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut gauges: HashMap<String, f64> = HashMap::new();
    let mut phases: HashMap<String, usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        let labels: Vec<String> = k
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            k.name().to_string()
        } else {
            format!("{}{{{}}}", k.name(), labels.join(","))
        };
        assert!(k.name().starts_with(m::PREFIX), "{name}");
        match value {
            DebugValue::Counter(c) => {
                counters.insert(name, c);
            }
            DebugValue::Gauge(g) => {
                gauges.insert(name, g.into_inner());
            }
            DebugValue::Histogram(v) => {
                if k.name() == m::STEP_DURATION {
                    phases.insert(labels.join(","), v.len());
                }
            }
        }
    }
    assert!(tokens > 0 && drafted > 0 && accepted > 0);
    assert_eq!(counters[m::GENERATED_TOKENS], tokens);
    // Only the n-gram requests drafted: the speculation counters carry their method.
    assert_eq!(
        counters[&format!("{}{{method=ngram}}", m::SPEC_DRAFT_TOKENS)],
        drafted
    );
    assert_eq!(
        counters[&format!("{}{{method=ngram}}", m::SPEC_ACCEPTED_TOKENS)],
        accepted
    );
    assert!(!counters
        .keys()
        .any(|k| k.contains("method=none") && k.starts_with("specd_spec_")));
    assert_eq!(
        counters[&format!("{}{{finish_reason=length,error_code=none}}", m::REQUESTS)],
        requests
    );
    assert_eq!(
        counters[&format!(
            "{}{{finish_reason=error,error_code=prompt_too_long}}",
            m::REQUESTS
        )],
        1
    );
    // Position 1 is drafted at every drafting round; acceptance there is at most 1.
    let at = |name: &str, pos: usize| counters[&format!("{name}{{method=ngram,position={pos}}}")];
    assert_eq!(
        at(m::SPEC_DRAFTED_PER_POSITION, 1),
        counters[&format!("{}{{method=ngram}}", m::SPEC_DRAFTS)]
    );
    assert!(at(m::SPEC_ACCEPTED_PER_POSITION, 1) > 0);
    assert!(at(m::SPEC_ACCEPTED_PER_POSITION, 1) <= at(m::SPEC_DRAFTED_PER_POSITION, 1));
    let drafted_by_position: u64 = counters
        .iter()
        .filter(|(k, _)| k.starts_with(m::SPEC_DRAFTED_PER_POSITION))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(drafted_by_position, drafted);
    assert_eq!(counters[m::PROMPT_TOKENS], 6 * 12);
    for phase in m::Phase::ALL {
        let n = phases
            .get(&format!("phase={}", phase.as_str()))
            .copied()
            .unwrap_or(0);
        assert!(
            n > 0,
            "no {} samples for phase {}",
            m::STEP_DURATION,
            phase.as_str()
        );
    }
    assert_eq!(
        gauges[&format!("{}{{model=target}}", m::KV_BLOCKS_TOTAL)],
        64.0
    );
    assert_eq!(
        gauges[&format!("{}{{model=target}}", m::KV_BLOCKS_USED)],
        0.0
    );
    // Every pool's gauges are published, a drafter's not loaded as empty.
    for model in ["draft", "glide"] {
        assert_eq!(
            gauges[&format!("{}{{model={model}}}", m::KV_BLOCKS_TOTAL)],
            0.0
        );
    }
    assert_eq!(gauges[m::RUNNING_SEQUENCES], 0.0);
}
