//! The engine on a GPU (feature `cuda`; run by `scripts/gpu/check`, never by `scripts/test`):
//! the GPU forward against the CPU's, batch invariance (a row's logits bit-identical alone, as
//! one of k + 1 verification rows, and in a batch of 32), greedy speculative output identical
//! to target-only output for the draft-model and n-gram proposers, rollback, graphs on and
//! off, the engine's actors serving concurrent requests, and clear errors.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specd_engine::actors::{Engine, EngineConfig, EngineModels, EngineRequest, Event, Method};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::kv::BlockTable;
use specd_engine::model::tiny::{tiny_drafter, tiny_model, tiny_model_on, TinySpec};
use specd_engine::model::{Device, LoadedModel, Logits, Model, SeqInput};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec::{generate_speculative, DraftPolicyConfig, NgramProposer, Proposer};

fn cuda() -> Device {
    Device::Cuda(
        std::env::var("SPECD_CHECK_GPU")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    )
}

fn spec() -> TinySpec {
    TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    }
}

fn gpu_target() -> LoadedModel {
    tiny_model_on(&spec(), cuda()).unwrap_or_else(|e| panic!("these tests need a GPU: {e}"))
}

fn prompts(n: usize, seed: u64, vocab: u32) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..40);
            (0..len).map(|_| rng.random_range(0..vocab - 3)).collect()
        })
        .collect()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn the_gpu_forward_follows_the_cpu_forward() {
    let cpu = tiny_model(&spec()).unwrap().model;
    let gpu = gpu_target().model;
    let vocab = cpu.config().vocab_size as u32;
    for prompt in prompts(6, 1, vocab) {
        let (mut cc, mut gc) = (cpu.new_cache(), gpu.new_cache());
        let a = rows(&cpu.forward_cache(&mut cc, &prompt, Logits::All).unwrap());
        let b = rows(&gpu.forward_cache(&mut gc, &prompt, Logits::All).unwrap());
        let (mut num, mut den) = (0f64, 0f64);
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!(y.is_finite(), "a GPU logit is not finite");
                num += ((x - y) as f64).powi(2);
                den += (*x as f64).powi(2);
            }
        }
        let e = (num / den).sqrt();
        // bf16 weights and activations on the GPU against f32 on the CPU.
        assert!(
            e < 5e-2,
            "GPU logits differ from the CPU's by {e} (relative)"
        );
        // And the cache the GPU wrote matches the CPU's keys and values.
        let (kc, _) = cc.layer_snapshot(1);
        let (kg, _) = gc.layer_snapshot(1);
        let ek = kc
            .iter()
            .zip(&kg)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            / kc.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(ek < 5e-2, "GPU keys differ from the CPU's by {ek}");
    }
}

/// The logits of decoding `tokens` one at a time after `prompt`.
fn step_by_step(m: &Model, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut c = m.new_cache();
    m.forward_cache(&mut c, prompt, Logits::None).unwrap();
    tokens
        .iter()
        .map(|&t| rows(&m.forward_cache(&mut c, &[t], Logits::Last).unwrap()).remove(0))
        .collect()
}

#[test]
fn a_rows_logits_are_bit_identical_alone_among_drafts_and_in_a_batch_of_32() {
    let m = gpu_target().model;
    let vocab = m.config().vocab_size as u32;
    let ps = prompts(32, 2, vocab);
    let mut rng = StdRng::seed_from_u64(3);
    for graphs in [true, false] {
        m.set_cuda_graphs(graphs);
        let prompt = &ps[0];
        let tail: Vec<u32> = (0..6).map(|_| rng.random_range(0..vocab - 3)).collect();
        let alone = step_by_step(&m, prompt, &tail);
        // The same six tokens as one verification forward (last token + 5 drafts).
        let mut c = m.new_cache();
        m.forward_cache(&mut c, prompt, Logits::None).unwrap();
        let verified = rows(&m.forward_cache(&mut c, &tail, Logits::All).unwrap());
        assert_eq!(
            verified, alone,
            "verification rows vs decoding (graphs {graphs})"
        );
        // And inside a batch of 32 sequences of ragged lengths in one pool.
        let mut pool = m.new_pool(4096);
        let mut tables: Vec<BlockTable> = ps.iter().map(|_| BlockTable::new()).collect();
        for (t, p) in tables.iter_mut().zip(&ps) {
            m.forward(
                &mut pool,
                &mut [SeqInput {
                    table: t,
                    tokens: p,
                    logits: Logits::None,
                }],
            )
            .unwrap();
        }
        let others: Vec<Vec<u32>> = (1..32)
            .map(|i| {
                (0..(i % 7 + 1))
                    .map(|_| rng.random_range(0..vocab - 3))
                    .collect()
            })
            .collect();
        let mut batch: Vec<SeqInput<'_>> = Vec::new();
        for (i, t) in tables.iter_mut().enumerate() {
            let tokens: &[u32] = if i == 0 { &tail } else { &others[i - 1] };
            batch.push(SeqInput {
                table: t,
                tokens,
                logits: Logits::All,
            });
        }
        let out = m.forward(&mut pool, &mut batch).unwrap();
        assert_eq!(
            rows(&out[0]),
            alone,
            "sequence 0's rows in a batch of 32 (graphs {graphs})"
        );
        // The device's argmax agrees with the rows it came from.
        let mut c = m.new_cache();
        m.forward_cache(&mut c, prompt, Logits::None).unwrap();
        let (pool1, table1) = c.parts();
        let top = m
            .forward_top(
                pool1,
                &mut [SeqInput {
                    table: table1,
                    tokens: &tail,
                    logits: Logits::All,
                }],
            )
            .unwrap();
        for (t, row) in top[0].iter().zip(&alone) {
            assert_eq!(
                t.token,
                specd_engine::sampling::argmax(row),
                "device argmax"
            );
        }
    }
    m.set_cuda_graphs(true);
}

#[test]
fn greedy_speculation_on_the_gpu_equals_target_only_output() {
    let target = gpu_target();
    let draft = tiny_drafter(&spec(), 0.15, 5, &target).unwrap();
    let ngram = NgramProposer::new(3, 1).unwrap();
    let model = &target.model;
    let tok = target.tokenizer.as_ref().unwrap();
    let proposers: [(&str, &dyn Proposer); 2] = [("draft", &draft), ("ngram", &ngram)];
    let mut totals = [(0u64, 0u64); 2];
    for (pi, prompt) in prompts(12, 4, model.config().vocab_size as u32)
        .iter()
        .enumerate()
    {
        // Every third request with a repetition penalty: acceptance on the host then.
        let penalty = if pi % 3 == 2 { 1.3 } else { 1.0 };
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 40,
            sampling: SamplingParams {
                repetition_penalty: penalty,
                ..Default::default()
            },
            stop: Vec::new(),
        };
        let want = generate(model, tok, &req, |_| {}).unwrap();
        for (which, (name, p)) in proposers.iter().enumerate() {
            for k in [1, 3, 5, 8] {
                let policy = DraftPolicyConfig {
                    max_draft: k,
                    adaptive: k == 5,
                    confidence: None,
                };
                let got = generate_speculative(model, tok, Some(*p), policy, &req, |_| {}).unwrap();
                assert_eq!(got.tokens, want.tokens, "prompt {pi}, {name}, k = {k}");
                totals[which].0 += got.speculation.drafted_tokens;
                totals[which].1 += got.speculation.accepted_tokens;
            }
        }
    }
    for (which, (name, _)) in proposers.iter().enumerate() {
        let (drafted, accepted) = totals[which];
        assert!(
            accepted > 0 && drafted > accepted,
            "{name}: {accepted} of {drafted} kept"
        );
        eprintln!("{name}: {accepted} of {drafted} drafts accepted on the GPU");
    }
}

#[test]
fn rollback_on_the_gpu_leaves_the_cache_as_if_rejected_drafts_never_were() {
    let m = gpu_target().model;
    let vocab = m.config().vocab_size as u32;
    let prompt = &prompts(1, 5, vocab)[0];
    let mut rng = StdRng::seed_from_u64(6);
    let extra: Vec<u32> = (0..20).map(|_| rng.random_range(0..vocab - 3)).collect();
    let mut a = m.new_cache();
    m.forward_cache(&mut a, prompt, Logits::None).unwrap();
    m.forward_cache(&mut a, &extra, Logits::All).unwrap();
    a.truncate(prompt.len() + 3);
    let mut b = m.new_cache();
    m.forward_cache(&mut b, prompt, Logits::None).unwrap();
    m.forward_cache(&mut b, &extra[..3], Logits::All).unwrap();
    for layer in 0..m.config().num_layers {
        assert_eq!(
            a.layer_snapshot(layer),
            b.layer_snapshot(layer),
            "layer {layer}"
        );
    }
    // Writing past the cut again gives the same logits as a cache that never held it.
    let la = m.forward_cache(&mut a, &extra[3..6], Logits::All).unwrap();
    let lb = m.forward_cache(&mut b, &extra[3..6], Logits::All).unwrap();
    assert_eq!(rows(&la), rows(&lb));
}

#[test]
fn the_engine_serves_concurrent_requests_on_the_gpu_as_each_alone() {
    let target = gpu_target();
    let draft = Arc::new(tiny_drafter(&spec(), 0.15, 5, &target).unwrap());
    let tok = target.tokenizer.clone().unwrap();
    let model = Arc::new(target.model);
    let models = EngineModels {
        target: model.clone(),
        tokenizer: Arc::new(tok.clone()),
        draft: Some(draft),
        ngram: NgramProposer::new(3, 1).unwrap(),
    };
    let engine = Engine::start(models, EngineConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ps = prompts(16, 7, model.config().vocab_size as u32);
    let methods = [Method::None, Method::Draft, Method::Ngram];
    let outputs = tokio::task::LocalSet::new().block_on(&rt, async {
        let mut streams = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let req = EngineRequest {
                generate: GenerateRequest {
                    prompt: p.clone(),
                    max_tokens: 24,
                    sampling: SamplingParams::default(),
                    stop: Vec::new(),
                },
                method: methods[i % 3],
                policy: DraftPolicyConfig {
                    max_draft: 4,
                    adaptive: false,
                    confidence: None,
                },
            };
            streams.push(engine.handle().submit(req).await.unwrap());
        }
        let mut outs = Vec::new();
        for mut s in streams {
            let mut tokens = Vec::new();
            while let Some(ev) = s.next_event().await {
                match ev {
                    Event::Chunk(c) => tokens.extend(c.tokens),
                    Event::Done(_) => break,
                    Event::Error(e) => panic!("request failed: {e:?}"),
                }
            }
            outs.push(tokens);
        }
        outs
    });
    for (p, got) in ps.iter().zip(outputs) {
        let req = GenerateRequest {
            prompt: p.clone(),
            max_tokens: 24,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
        };
        let want = generate(&model, &tok, &req, |_| {}).unwrap();
        assert_eq!(got, want.tokens);
    }
}

#[test]
fn a_gpu_that_does_not_exist_is_named_in_the_error() {
    let e = tiny_model_on(&spec(), Device::Cuda(999))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cuda:999"), "{e}");
}
