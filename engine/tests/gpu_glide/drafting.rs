//! The GLIDE drafter drafting on a GPU (part of `gpu_glide`; `scripts/gpu/check` runs these
//! again with `SPECD_GLIDE_CHAIN=1`): greedy picks
//! made on the device against the argmax of its logits, a round chained on the device against
//! forwards fed one by one, and greedy speculation with GLIDE equal to target-only output, alone
//! for k = 1, 4, adaptive and confidence stops, with the target's hidden state, and through the
//! engine's actors in a batch of none, draft, n-gram and GLIDE requests.
use std::path::Path;
use std::sync::Arc;

use super::glide_cache::step_checking_kept_rows;
use super::gpu_glide_tiny::{
    cuda, gpu_target, prompts, relative_error, run_prompt, spec, target_caches, TOLERANCE,
};
use specd_engine::actors::{
    Engine, EngineConfig, EngineModels, EngineRequest, Event, LoadPolicies, Method,
};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::kv::BlockTable;
use specd_engine::model::tiny::{
    tiny_drafter, tiny_glide_config, tiny_glide_weights, tiny_guessing_glide,
    tiny_guessing_glide_reading, tiny_guessing_glide_with_feature, tiny_model_on,
};
use specd_engine::model::{
    self, DraftRows, DraftVocab, GlideFeature, GlideModel, Logits, Model, SeqInput, TargetKv,
};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{
    generate_speculative, DraftPolicyConfig, GlideProposer, NgramProposer, Proposer, Sequence,
    Speculator,
};

/// A random drafter for `target` whose draft vocabulary is 200 ids in reverse (draft row r is
/// target id 199 - r), so that a pick is never its own id.
fn permuted_glide(target: &Model) -> GlideModel {
    let c = target.config().clone();
    let config = tiny_glide_config(&c, 200);
    let tensors = tiny_glide_weights(&c, &config, 5, 0.3);
    let vocab = DraftVocab::new((0..200u32).rev().collect(), c.vocab_size).unwrap();
    GlideModel::from_weights(
        config,
        &mut model::Weights::from_tensors(tensors),
        vocab,
        target,
        Path::new("<test>"),
    )
    .unwrap()
}

/// Greedy drafts picked on the GPU (`forward_drafting` with `greedy`: only each row's top
/// token and its probability come back) are the argmax of the rows the GPU hands back when
/// asked for logits, mapped through the draft vocabulary (here a permuted one, so that a draft
/// row is not its target id), with the softmax probability of that row: for a batch of
/// sequences of different lengths and verified lengths, each wanting its last row or all.
#[test]
fn greedy_drafts_picked_on_the_gpu_are_the_argmax_of_its_logits() {
    let target = gpu_target();
    let glide = permuted_glide(&target);
    assert!(glide.picks_on_device(), "a drafter on a GPU picks there");
    let ps = prompts(5);
    let verified: Vec<usize> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| p.len() * i / 4)
        .collect();
    let (tkv, ttables) = target_caches(&target, &ps, &verified);
    let refs: Vec<&BlockTable> = ttables.iter().collect();
    let wants = |i: usize| {
        if i.is_multiple_of(2) {
            Logits::Last
        } else {
            Logits::All
        }
    };
    let run = |greedy: bool| {
        let mut pool = glide.new_pool(256);
        let mut tables: Vec<BlockTable> = ps.iter().map(|_| BlockTable::new()).collect();
        let mut batch: Vec<SeqInput<'_>> = tables
            .iter_mut()
            .zip(&ps)
            .enumerate()
            .map(|(i, (table, p))| SeqInput {
                table,
                tokens: p,
                logits: wants(i),
            })
            .collect();
        let cross = TargetKv {
            kv: &tkv,
            tables: &refs,
        };
        glide
            .forward_drafting(&mut pool, &mut batch, cross, &[], greedy)
            .unwrap()
            .0
    };
    let DraftRows::Top(picked) = run(true) else {
        panic!("a greedy round on a GPU picks its drafts there")
    };
    let DraftRows::Logits(logits) = run(false) else {
        panic!("logits asked for")
    };
    assert_eq!(picked.len(), ps.len(), "one entry a sequence");
    for (i, (tops, rows)) in picked.iter().zip(&logits).enumerate() {
        let rows = rows.to_vec2::<f32>().unwrap();
        assert_eq!(
            tops.len(),
            rows.len(),
            "sequence {i}: one pick a wanted row"
        );
        for (j, (top, row)) in tops.iter().zip(&rows).enumerate() {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap();
            assert_eq!(
                top.token,
                glide.vocab().to_target(best as u32),
                "sequence {i}, row {j}: the device's pick is not the argmax of its logits"
            );
            let sum: f64 = row.iter().map(|&x| f64::from(x - row[best]).exp()).sum();
            let prob = (1.0 / sum) as f32;
            assert!(
                (top.prob - prob).abs() <= 1e-4 * prob.max(1e-3),
                "sequence {i}, row {j}: probability {} on the device, {prob} from its logits",
                top.prob
            );
        }
    }
}

/// A round of greedy drafts chained on the device (`draft_chain`: each forward's ids are the
/// picks of the one before, looked up in the drafter's permuted id map on the GPU) gives, bit
/// for bit, the picks and probabilities of greedy forwards fed one after another from the host,
/// for a batch of sequences of different lengths and verified lengths fed 5, 4, 4, 2 and 1
/// rows (each forward's batch the first sequences of the one before); and the caches it leaves
/// give the same rows afterwards.
#[test]
fn a_chained_round_of_drafts_equals_forwards_fed_one_after_another_on_the_gpu() {
    let target = gpu_target();
    let glide = permuted_glide(&target);
    let ps: Vec<Vec<u32>> = prompts(5)
        .into_iter()
        .map(|p| p.into_iter().map(|t| t % 200).collect())
        .collect();
    let counts = [5, 4, 4, 2, 1];
    let verified: Vec<usize> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| p.len() * (i + 1) / 5)
        .collect();
    let (tkv, ttables) = target_caches(&target, &ps, &verified);
    let refs: Vec<&BlockTable> = ttables.iter().collect();
    let cross = |n: usize| TargetKv {
        kv: &tkv,
        tables: &refs[..n],
    };
    // Each way: the prompts but their last token read, then the rounds from the last token.
    let run = |chained: bool| {
        let mut pool = glide.new_pool(256);
        let mut tables: Vec<BlockTable> = ps.iter().map(|_| BlockTable::new()).collect();
        let mut head: Vec<SeqInput<'_>> = tables
            .iter_mut()
            .zip(&ps)
            .map(|(table, p)| SeqInput {
                table,
                tokens: &p[..p.len() - 1],
                logits: Logits::None,
            })
            .collect();
        glide
            .forward(&mut pool, &mut head, cross(ps.len()))
            .unwrap();
        let mut last: Vec<u32> = ps.iter().map(|p| *p.last().unwrap()).collect();
        let picks: Vec<Vec<(u32, f32)>> = if chained {
            let mut inputs = one_token_each(&mut tables, &last);
            glide
                .draft_chain(&mut pool, &mut inputs, cross(ps.len()), &counts)
                .unwrap()
                .into_iter()
                .map(|r| r.into_iter().map(|t| (t.token, t.prob)).collect())
                .collect()
        } else {
            let mut picks = vec![Vec::new(); ps.len()];
            for round in 0..counts[0] {
                let m = counts.iter().filter(|&&c| c > round).count();
                let mut inputs = one_token_each(&mut tables[..m], &last);
                let out = glide
                    .forward_drafting(&mut pool, &mut inputs, cross(m), &[], true)
                    .unwrap()
                    .0;
                let DraftRows::Top(tops) = out else {
                    panic!("a greedy round on a GPU picks its drafts there")
                };
                for (i, t) in tops.iter().enumerate() {
                    picks[i].push((t[0].token, t[0].prob));
                    last[i] = t[0].token;
                }
            }
            picks
        };
        // One more row from each last pick: the caches must agree too.
        let ends: Vec<u32> = picks.iter().map(|p| p.last().unwrap().0).collect();
        let mut after = one_token_each(&mut tables, &ends);
        let rows = glide
            .forward(&mut pool, &mut after, cross(ps.len()))
            .unwrap();
        let rows: Vec<Vec<f32>> = rows
            .iter()
            .map(|t| t.to_vec2::<f32>().unwrap().remove(0))
            .collect();
        (picks, rows)
    };
    let (chained, chained_after) = run(true);
    let (fed, fed_after) = run(false);
    assert_eq!(chained.len(), ps.len(), "picks for every sequence");
    for (i, (a, b)) in chained.iter().zip(&fed).enumerate() {
        assert_eq!(a.len(), counts[i], "sequence {i}: one pick a row fed");
        assert_eq!(
            a, b,
            "sequence {i}: chained picks differ from forwards fed one by one"
        );
    }
    assert_eq!(
        chained_after, fed_after,
        "the row after a chained round differs: the caches differ"
    );
    let distinct: std::collections::HashSet<u32> =
        chained.iter().flatten().map(|&(t, _)| t).collect();
    assert!(
        distinct.len() > 1,
        "every pick is the same token: the rounds did not feed their picks"
    );
}

/// Inputs feeding the sequence under `tables[i]` the one token `tokens[i]`, wanting its row.
fn one_token_each<'a>(tables: &'a mut [BlockTable], tokens: &'a [u32]) -> Vec<SeqInput<'a>> {
    tables
        .iter_mut()
        .zip(tokens)
        .map(|(table, t)| SeqInput {
            table,
            tokens: std::slice::from_ref(t),
            logits: Logits::Last,
        })
        .collect()
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

#[test]
fn greedy_speculation_with_glide_on_the_gpu_equals_target_only_output() {
    let target = tiny_model_on(&spec(), cuda()).unwrap();
    let (model, tok) = (&target.model, target.tokenizer.as_ref().unwrap());
    let glide = GlideProposer::new(Arc::new(tiny_guessing_glide(model, 240, 9).unwrap()));
    // scripts/gpu/check runs this suite both ways (SPECD_GLIDE_CHAIN=1: greedy rounds chained).
    eprintln!(
        "greedy rounds chained on the device: {}",
        glide.model().chains_on_device()
    );
    let (mut drafted, mut accepted) = (0, 0);
    let mut ps = prompts(8);
    ps.push(run_prompt());
    for (pi, prompt) in ps.into_iter().enumerate() {
        let req = greedy(prompt, 32);
        let want = generate(model, tok, &req, |_| {}).unwrap();
        // A confidence stop cuts a chained round short: the rows fed past it are rolled back.
        let policies = [
            (1, false, None),
            (4, false, None),
            (4, true, None),
            (4, false, Some(0.2)),
            (6, true, Some(0.05)),
        ];
        for (k, adaptive, confidence) in policies {
            let policy = DraftPolicyConfig {
                max_draft: k,
                adaptive,
                confidence,
            };
            let got = generate_speculative(model, tok, Some(&glide), policy, &req, |_| {}).unwrap();
            assert_eq!(
                got.tokens, want.tokens,
                "prompt {pi}, k = {k}, adaptive {adaptive}, confidence {confidence:?}"
            );
            drafted += got.speculation.drafted_tokens;
            accepted += got.speculation.accepted_tokens;
        }
    }
    eprintln!("{accepted} of {drafted} GLIDE drafts accepted on the GPU");
    assert!(
        accepted > 0 && accepted < drafted,
        "{accepted} of {drafted} drafts accepted: both outcomes must occur"
    );
}

/// A drafter that reads the target's last hidden state on the GPU: greedy speculation equals
/// target-only output (k = 1, 4, adaptive), and after every step each sequence holds the GPU
/// target's row before its last token (as a forward over the whole sequence computes it there,
/// within bf16 tolerance), at the position of the drafter's row that reads it.
#[test]
fn greedy_speculation_with_a_feature_drafter_on_the_gpu_equals_target_only_output() {
    greedy_identity_with_a_feature_drafter(GlideFeature::LastHidden);
}

/// The same with a drafter chaining its own final rows into the later rows of a round.
#[test]
fn greedy_speculation_with_a_chaining_drafter_on_the_gpu_equals_target_only_output() {
    greedy_identity_with_a_feature_drafter(GlideFeature::LastHiddenChain);
}

fn greedy_identity_with_a_feature_drafter(feature: GlideFeature) {
    let target = tiny_model_on(&spec(), cuda()).unwrap();
    let (model, tok) = (&target.model, target.tokenizer.as_ref().unwrap());
    let glide = GlideProposer::new(Arc::new(
        tiny_guessing_glide_reading(model, 240, 9, feature).unwrap(),
    ));
    let proposer: &dyn Proposer = &glide;
    let mut ps = prompts(6);
    ps.push(run_prompt());
    let mut checked = 0;
    for (k, adaptive) in [(1, false), (4, false), (4, true)] {
        let policy = DraftPolicyConfig {
            max_draft: k,
            adaptive,
            confidence: None,
        };
        let mut spec = Speculator::new(model, Some(proposer));
        let mut seqs: Vec<Sequence> = ps
            .iter()
            .map(|p| Sequence::new(model, tok, Some(proposer), greedy(p.clone(), 24), policy))
            .collect::<Result<_, _>>()
            .unwrap();
        for s in seqs.iter_mut() {
            spec.prefill(s).unwrap();
        }
        checked += step_checking_kept_rows(model, &mut spec, &mut seqs, |kept, whole| {
            let e = relative_error(&[whole.to_vec()], &[kept.to_vec()]);
            assert!(
                e < TOLERANCE,
                "k = {k}: a kept row differs from a whole forward's by {e}"
            );
        });
        for (pi, (p, s)) in ps.iter().zip(&seqs).enumerate() {
            let want = generate(model, tok, &greedy(p.clone(), 24), |_| {}).unwrap();
            assert_eq!(
                s.generated(),
                &want.tokens[..],
                "prompt {pi}, k = {k}, adaptive {adaptive}"
            );
        }
    }
    assert!(checked > 40, "only {checked} kept rows checked");
}

/// The engine's actors on the GPU with none, draft, n-gram and GLIDE requests in one running
/// batch (k = 1, 4 and adaptive): each output equals target-only, GLIDE drafts are accepted,
/// and every GLIDE block goes back to its pool.
#[test]
fn the_engine_batches_glide_with_none_draft_and_ngram_on_the_gpu() {
    engine_batch_on_the_gpu(|t| tiny_guessing_glide(t, 240, 9).unwrap());
}

/// The same with a GLIDE drafter that reads the target's last hidden state.
#[test]
fn the_engine_batches_a_feature_drafter_with_the_other_methods_on_the_gpu() {
    engine_batch_on_the_gpu(|t| tiny_guessing_glide_with_feature(t, 240, 9).unwrap());
}

#[test]
fn the_engine_batches_a_chaining_drafter_with_the_other_methods_on_the_gpu() {
    engine_batch_on_the_gpu(|t| {
        tiny_guessing_glide_reading(t, 240, 9, GlideFeature::LastHiddenChain).unwrap()
    });
}

fn engine_batch_on_the_gpu(make_glide: fn(&Model) -> GlideModel) {
    let target = tiny_model_on(&spec(), cuda()).unwrap();
    let draft = Arc::new(tiny_drafter(&spec(), 0.15, 5, &target).unwrap());
    let glide = make_glide(&target.model);
    let tok = target.tokenizer.clone().unwrap();
    let model = Arc::new(target.model);
    let models = EngineModels {
        target: model.clone(),
        tokenizer: Arc::new(tok.clone()),
        draft: Some(draft),
        ngram: NgramProposer::new(3, 1).unwrap(),
        glide: Some(Arc::new(GlideProposer::new(Arc::new(glide)))),
    };
    // Drafting on for every batch size (the default load policy turns it off at three
    // sequences, and this batch has sixteen).
    let config = EngineConfig {
        load: LoadPolicies::NEVER,
        ..Default::default()
    };
    let engine = Engine::start(models, config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut ps = prompts(16);
    // Two of the four GLIDE requests (3, 7, 11, 15) on prompts it drafts well.
    ps[3] = run_prompt();
    ps[11] = run_prompt();
    let methods = [Method::None, Method::Draft, Method::Ngram, Method::Glide];
    let policies = [(1, false), (4, false), (4, true)];
    let (outputs, glide, stats) = tokio::task::LocalSet::new().block_on(&rt, async {
        let mut streams = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let (max_draft, adaptive) = policies[i / methods.len() % policies.len()];
            let req = EngineRequest {
                generate: greedy(p.clone(), 24),
                method: methods[i % methods.len()],
                policy: DraftPolicyConfig {
                    max_draft,
                    adaptive,
                    confidence: None,
                },
            };
            streams.push(engine.handle().submit(req).await.unwrap());
        }
        // (drafted, accepted) of each GLIDE request.
        let (mut outs, mut glide) = (Vec::new(), Vec::new());
        for (i, mut s) in streams.into_iter().enumerate() {
            let mut tokens = Vec::new();
            while let Some(ev) = s.next_event().await {
                match ev {
                    Event::Chunk(c) => tokens.extend(c.tokens),
                    Event::Done(d) => {
                        if methods[i % methods.len()] == Method::Glide {
                            glide.push((
                                d.speculation.drafted_tokens,
                                d.speculation.accepted_tokens,
                            ));
                        }
                        break;
                    }
                    Event::Error(e) => panic!("request {i} failed: {e:?}"),
                }
            }
            outs.push(tokens);
        }
        // The pools come home once the last step has committed.
        let mut stats = engine.handle().stats().await.unwrap();
        for _ in 0..500 {
            if stats.running == 0 && stats.waiting == 0 && stats.kv_target.blocks_used == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            stats = engine.handle().stats().await.unwrap();
        }
        (outs, glide, stats)
    });
    for (i, (p, got)) in ps.iter().zip(outputs).enumerate() {
        let want = generate(&model, &tok, &greedy(p.clone(), 24), |_| {}).unwrap();
        assert_eq!(got, want.tokens, "request {i} ({:?})", methods[i % 4]);
    }
    eprintln!("GLIDE requests' (drafted, accepted) on the GPU: {glide:?}");
    assert_eq!(glide.len(), 4);
    assert!(
        glide.iter().all(|&(drafted, _)| drafted > 0),
        "a GLIDE request in the batch drafted nothing: {glide:?}"
    );
    let drafted: u64 = glide.iter().map(|g| g.0).sum();
    let accepted: u64 = glide.iter().map(|g| g.1).sum();
    assert!(
        accepted > 0 && accepted < drafted,
        "{accepted} of {drafted} GLIDE drafts accepted: both outcomes must occur"
    );
    assert_eq!(stats.kv_glide.blocks_used, 0, "{stats:?}");
    assert_eq!(stats.kv_accounting_errors, 0, "{stats:?}");
}
