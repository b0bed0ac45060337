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
use specd_engine::actors::{
    Engine, EngineConfig, EngineModels, EngineRequest, Event, LoadPolicies, Method,
};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::kv::BlockTable;
use specd_engine::model::tiny::{tiny_drafter, tiny_model, tiny_model_on, TinySpec};
use specd_engine::model::{Device, LoadedModel, Logits, Model, SampleInput, SeqInput, Tokenizer};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{generate_speculative, DraftPolicyConfig, NgramProposer, Proposer};
use specd_kernels::cpu::sample as kernel_sample;

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

/// A long prompt's rows go through the prefill GEMM (more than 32 rows), decoding through the
/// row kernels: the logits of every position are the same bits either way, so a sequence
/// recomputed after preemption (or prefilled in chunks) continues exactly as it would have.
#[test]
fn prefill_rows_are_bit_identical_to_the_same_tokens_decoded_one_at_a_time() {
    let m = gpu_target().model;
    let vocab = m.config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(12);
    // Past 256 positions a row's attention is split: over CTAs of their own for a decode row,
    // in one CTA for the rows of a 400-token prefill, with the same result.
    let prompt: Vec<u32> = (0..400).map(|_| rng.random_range(0..vocab - 3)).collect();
    let mut c = m.new_cache();
    let prefilled = rows(&m.forward_cache(&mut c, &prompt, Logits::All).unwrap());
    let decoded = step_by_step(&m, &prompt[..1], &prompt[1..]);
    assert_eq!(
        &prefilled[1..],
        &decoded[..],
        "prefill rows vs decoded rows"
    );
}

/// A captured graph outlives forwards of other sizes: after a decode step's graph is captured,
/// a long prompt (launched directly, past the graphs' rows) and a prompt of a new graphed shape
/// leave it in place, so the same decode step is replayed without a new capture, with the same
/// logits. (Buffers that grew with each forward used to drop every graph.)
#[test]
fn a_captured_graph_survives_long_prompts_and_new_shapes() {
    let m = gpu_target().model;
    let vocab = m.config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(31);
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab - 3)).collect() };
    let (prompt, long, other) = (tokens(20), tokens(300), tokens(200));
    let captures = || m.gpu_stats().expect("a GPU model").captures;
    let mut c = m.new_cache();
    m.forward_cache(&mut c, &prompt, Logits::None).unwrap();
    let step = |c: &mut specd_engine::kv::SequenceCache| {
        let out = rows(&m.forward_cache(c, &[7], Logits::Last).unwrap());
        c.truncate(prompt.len());
        out
    };
    let first = step(&mut c);
    let before = captures();
    assert_eq!(step(&mut c), first, "the replayed step's logits");
    assert_eq!(
        captures(),
        before,
        "a second identical step replays its graph"
    );
    let mut l = m.new_cache();
    m.forward_cache(&mut l, &long, Logits::Last).unwrap();
    let mut o = m.new_cache();
    m.forward_cache(&mut o, &other, Logits::Last).unwrap();
    let after_prompts = captures();
    assert!(
        after_prompts > before,
        "the 200-token prompt is a new graphed shape"
    );
    assert_eq!(
        step(&mut c),
        first,
        "the step's logits after the other forwards"
    );
    assert_eq!(
        captures(),
        after_prompts,
        "the decode step's graph was dropped by the long prompt or the new shape"
    );
}

/// Sampled verification decided on the GPU (softmax at each sequence's temperature, then
/// rejection sampling, in the forward) gives for a ragged batch, with drafts from a drafter's
/// distribution and one-hot ones, what the kernels' CPU reference gives on the rows of the
/// same forward and the same uniforms; twice, so that a replayed graph reads each step's new
/// temperatures, uniforms and draft distributions, the second time with a prompt chunk riding
/// along.
#[test]
fn sampled_verification_on_the_gpu_decides_as_the_reference_on_its_own_rows() {
    let m = gpu_target().model;
    let vocab = m.config().vocab_size;
    let ps = prompts(12, 9, vocab as u32);
    let mut rng = StdRng::seed_from_u64(13);
    let (mut kept, mut rejected) = (0, 0);
    for round in 0..2 {
        let mut tables: Vec<[BlockTable; 2]> = Vec::new();
        let (mut pool_rows, mut pool_decide) = (m.new_pool(4096), m.new_pool(4096));
        // Both pools hold each prompt but its last token, which verification feeds.
        for p in &ps {
            let mut t = [BlockTable::new(), BlockTable::new()];
            for (table, pool) in t.iter_mut().zip([&mut pool_rows, &mut pool_decide]) {
                if p.len() > 1 {
                    let mut one = [SeqInput {
                        table,
                        tokens: &p[..p.len() - 1],
                        logits: Logits::None,
                    }];
                    m.forward(pool, &mut one).unwrap();
                }
            }
            tables.push(t);
        }
        // Per sequence: a temperature, 0..5 drafts, uniforms. Every third sequence drafts the
        // target's own greedy continuation as one-hot drafts (mostly kept); the others draw
        // from a random distribution, which the next third hands over and the last third does
        // not (one-hot, as n-gram drafts; mostly rejected).
        let mut tokens: Vec<Vec<u32>> = Vec::new();
        let mut qs: Vec<Option<Vec<Vec<f32>>>> = Vec::new();
        let mut inv_temps = Vec::new();
        let mut us = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let drafts = (i + round) % 6;
            let mut t = vec![*p.last().unwrap()];
            let mut q = Vec::new();
            if i % 3 == 0 {
                let mut c = m.new_cache();
                let mut l = m.forward_cache(&mut c, p, Logits::Last).unwrap();
                for _ in 0..drafts {
                    let next = specd_engine::sampling::argmax(&rows(&l)[0]);
                    t.push(next);
                    l = m.forward_cache(&mut c, &[next], Logits::Last).unwrap();
                }
            } else {
                for _ in 0..drafts {
                    let mut d: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>().powi(2)).collect();
                    let sum: f32 = d.iter().sum();
                    d.iter_mut().for_each(|x| *x /= sum);
                    t.push(specd_engine::sampling::sample_from(&d, &mut rng));
                    q.push(d);
                }
            }
            tokens.push(t);
            qs.push((i % 3 == 1).then_some(q));
            inv_temps.push(1.0 / rng.random_range(0.3f32..2.0));
            us.push(
                (0..=drafts)
                    .map(|_| rng.random::<f32>())
                    .collect::<Vec<f32>>(),
            );
        }
        let mut batch: Vec<SeqInput<'_>> = Vec::new();
        let mut batch2: Vec<SeqInput<'_>> = Vec::new();
        for (t, toks) in tables.iter_mut().zip(&tokens) {
            let [a, b] = t;
            batch.push(SeqInput {
                table: a,
                tokens: toks,
                logits: Logits::All,
            });
            batch2.push(SeqInput {
                table: b,
                tokens: toks,
                logits: Logits::All,
            });
        }
        // In the second round a prompt chunk rides along (wanting no rows): it decides
        // nothing, and the others decide as they do alone.
        let mut rider_table = BlockTable::new();
        let rider_tokens: Vec<u32> = ps.concat().into_iter().take(20).collect();
        if round == 1 {
            batch2.push(SeqInput {
                table: &mut rider_table,
                tokens: &rider_tokens,
                logits: Logits::None,
            });
        }
        let logits = m.forward(&mut pool_rows, &mut batch).unwrap();
        let inputs: Vec<SampleInput<'_>> = (0..ps.len())
            .map(|i| SampleInput {
                inv_temp: inv_temps[i],
                q: qs[i].as_deref(),
                u: us[i].clone(),
            })
            .collect();
        let got = m
            .verify_sampled(&mut pool_decide, &mut batch2, &inputs)
            .unwrap();
        assert_eq!(got.len(), ps.len(), "a verdict per sampled sequence");
        for (i, l) in logits.iter().enumerate() {
            let p: Vec<Vec<f32>> = rows(l)
                .iter()
                .map(|r| kernel_sample::softmax(r, inv_temps[i]))
                .collect();
            let p_refs: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
            let q_refs: Option<Vec<&[f32]>> = qs[i]
                .as_ref()
                .map(|q| q.iter().map(Vec::as_slice).collect());
            let want =
                kernel_sample::rejection_sample(&p_refs, q_refs.as_deref(), &tokens[i], &us[i]);
            assert_eq!(got[i], want, "round {round}, sequence {i}");
            let drafts = tokens[i].len() - 1;
            kept += got[i].0;
            rejected += usize::from(got[i].0 < drafts);
        }
    }
    eprintln!("{kept} drafts kept, {rejected} rejections");
    assert!(
        kept > 0 && rejected > 0,
        "{kept} drafts kept, {rejected} rejections"
    );
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
            ignore_eos: false,
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
    let ps = prompts(16, 7, model.config().vocab_size as u32);
    // Prompts prefilled whole, and four tokens a step with the first request decoding before
    // the others arrive (so that their prompt chunks ride along its verifications for many
    // steps: greedy acceptance then runs on the host from each row's argmax,
    // speculative::verify::verification_mode).
    for prefill_chunk in [None, Some(4)] {
        let models = EngineModels {
            target: model.clone(),
            tokenizer: Arc::new(tok.clone()),
            draft: Some(draft.clone()),
            ngram: NgramProposer::new(3, 1).unwrap(),
            glide: None,
        };
        // Drafting on for every batch size (the default load policy turns it off at three
        // sequences, and this batch has sixteen).
        let config = EngineConfig {
            load: LoadPolicies::NEVER,
            prefill_chunk,
            ..Default::default()
        };
        serve_concurrently(&model, &tok, models, config, &ps);
    }
}

/// Serves `ps` together (target-only, draft model and n-gram in turn) and checks every output
/// against target-only generation alone, and that every draft-model request drafted.
fn serve_concurrently(
    model: &Model,
    tok: &Tokenizer,
    models: EngineModels,
    config: EngineConfig,
    ps: &[Vec<u32>],
) {
    let what = format!("prefill chunk {:?}", config.prefill_chunk);
    let stagger = config.prefill_chunk.is_some();
    let engine = Engine::start(models, config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let methods = [Method::None, Method::Draft, Method::Ngram];
    let (outputs, drafted) = tokio::task::LocalSet::new().block_on(&rt, async {
        let mut streams = Vec::new();
        // The first request's first event, when it is awaited before the others are sent.
        let mut first = None;
        for (i, p) in ps.iter().enumerate() {
            let req = EngineRequest {
                generate: GenerateRequest {
                    prompt: p.clone(),
                    max_tokens: 24,
                    sampling: SamplingParams::default(),
                    stop: Vec::new(),
                    ignore_eos: false,
                },
                method: methods[i % 3],
                policy: DraftPolicyConfig {
                    max_draft: 4,
                    adaptive: false,
                    confidence: None,
                },
            };
            let mut stream = engine.handle().submit(req).await.unwrap();
            if stagger && i == 0 {
                first = stream.next_event().await;
                assert!(
                    matches!(first, Some(Event::Chunk(_))),
                    "the first request decodes before the others arrive: {first:?}"
                );
            }
            streams.push(stream);
        }
        // Tokens drafted for each request (none for target-only ones).
        let (mut outs, mut drafted) = (Vec::new(), Vec::new());
        for mut s in streams {
            let mut tokens = Vec::new();
            let mut pending = first.take();
            while let Some(ev) = match pending.take() {
                Some(ev) => Some(ev),
                None => s.next_event().await,
            } {
                match ev {
                    Event::Chunk(c) => tokens.extend(c.tokens),
                    Event::Done(d) => {
                        drafted.push(d.speculation.drafted_tokens);
                        break;
                    }
                    Event::Error(e) => panic!("request failed: {e:?}"),
                }
            }
            outs.push(tokens);
        }
        (outs, drafted)
    });
    // Every draft-model request speculated in the batch (the n-gram ones may find no match).
    for (i, d) in drafted.iter().enumerate() {
        if methods[i % 3] == Method::Draft {
            assert!(
                *d > 0,
                "request {i} (draft model) drafted nothing ({what}): {drafted:?}"
            );
        }
    }
    for (p, got) in ps.iter().zip(outputs) {
        let req = GenerateRequest {
            prompt: p.clone(),
            max_tokens: 24,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        };
        let want = generate(model, tok, &req, |_| {}).unwrap();
        assert_eq!(got, want.tokens, "{what}");
    }
}

#[test]
fn a_gpu_that_does_not_exist_is_named_in_the_error() {
    let e = tiny_model_on(&spec(), Device::Cuda(999))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cuda:999"), "{e}");
}
