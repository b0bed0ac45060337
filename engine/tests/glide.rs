//! The GLIDE drafter (issue 12): its forward against an independent f64 reference written here
//! from the paper's description, reading only the target's verified positions (stale keys and
//! values of rejected drafts change nothing), the same row by row as all at once; and as a
//! proposer, greedy speculation with it equal to target-only output, alone and in a batch, and
//! with a drafter that reads the target's last hidden state (which then reaches it).

#[path = "common/glide_cache.rs"]
mod glide_cache;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use glide_cache::{glide_rows, step_checking_kept_rows, target_cache};
use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::model::glide::{cross_tensor_names, feature_tensor_names, save_glide};
use specd_engine::model::tiny::{
    tiny_config, tiny_glide_config, tiny_glide_weights, tiny_tokenizer, tiny_weights, TinySpec,
};
use specd_engine::model::{
    DraftVocab, GlideConfig, GlideFeature, GlideModel, Logits, Model, ModelConfig, Naming, Param,
    SeqInput, Weights,
};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{
    generate_speculative, DraftPolicyConfig, GlideProposer, Proposer, Sequence, Speculator,
};

const SCALE: f32 = 0.3;

fn spec() -> TinySpec {
    TinySpec {
        seed: 31,
        weight_scale: SCALE,
        ..Default::default()
    }
}

/// The target, its weights, and a GLIDE drafter for it with its weights (head over the first
/// `n` ids).
struct Pair {
    target: Model,
    target_tensors: HashMap<String, Tensor>,
    glide: GlideModel,
    glide_config: GlideConfig,
    glide_tensors: HashMap<String, Tensor>,
}

fn pair(n: usize) -> Pair {
    pair_with(n, SCALE, true)
}

/// [`pair`] with the drafter's weights spread by `scale`, and its own head or (`own_head`
/// false) the target's rows.
fn pair_with(n: usize, scale: f32, own_head: bool) -> Pair {
    let config = tiny_config(&spec());
    let target_tensors = tiny_weights(&config, spec().seed, SCALE);
    let target = Model::load(
        config.clone(),
        &mut Weights::from_tensors(target_tensors.clone()),
    )
    .unwrap();
    let glide_config = tiny_glide_config(&config, n);
    let mut glide_tensors = tiny_glide_weights(&config, &glide_config, 5, scale);
    if !own_head {
        glide_tensors.remove(&Naming::HuggingFace.name(Param::LmHead));
    }
    let vocab = DraftVocab::new((0..n as u32).collect(), config.vocab_size).unwrap();
    let glide = GlideModel::from_weights(
        glide_config.clone(),
        &mut Weights::from_tensors(glide_tensors.clone()),
        vocab,
        &target,
        Path::new("<test>"),
    )
    .unwrap();
    Pair {
        target,
        target_tensors,
        glide,
        glide_config,
        glide_tensors,
    }
}

fn matrix(t: &HashMap<String, Tensor>, name: &str) -> Vec<Vec<f64>> {
    t[name]
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

fn vector(t: &HashMap<String, Tensor>, name: &str) -> Vec<f64> {
    t[name]
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `w · x` for a matrix stored as `[out][in]`.
fn apply(w: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    w.iter()
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// Rotates every head of `x` at `pos` (dimension i with i + d/2, Hugging Face's layout).
fn rope(x: &mut [f64], head_dim: usize, pos: usize, theta: f64) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let a = pos as f64 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let (c, s) = (a.cos(), a.sin());
            let (u, v) = (head[i], head[i + half]);
            head[i] = u * c - v * s;
            head[i + half] = u * s + v * c;
        }
    }
}

/// Attention of one query row over `keys`/`values` rows (GQA: head h reads kv head h / group).
fn attend(
    q: &[f64],
    keys: &[Vec<f64>],
    values: &[Vec<f64>],
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; heads * d];
    for h in 0..heads {
        let kh = h / (heads / kv_heads);
        let qh = &q[h * d..(h + 1) * d];
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                qh.iter()
                    .zip(&k[kh * d..(kh + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = e.iter().sum();
        for (w, v) in e.iter().zip(values) {
            for i in 0..d {
                out[h * d + i] += w / z * v[kh * d + i];
            }
        }
    }
    out
}

/// The drafter's logits for `tokens` at positions 0.., straight from the tensors: embedding
/// (the target's), self-attention, cross-attention over the target's cached layer (`tk`, `tv`:
/// its verified positions), MLP, final norm, head.
fn reference(
    p: &Pair,
    target: &ModelConfig,
    tokens: &[u32],
    tk: &[Vec<f64>],
    tv: &[Vec<f64>],
) -> Vec<Vec<f64>> {
    let (g, t) = (&p.glide_config, &p.glide_tensors);
    let hf = |param| Naming::HuggingFace.name(param);
    let embed = matrix(&p.target_tensors, &hf(Param::Embed));
    let eps = g.rms_norm_eps;
    let (wq, wk, wv, wo) = (
        matrix(t, &hf(Param::Q(0))),
        matrix(t, &hf(Param::K(0))),
        matrix(t, &hf(Param::V(0))),
        matrix(t, &hf(Param::O(0))),
    );
    let [cn, cq, co] = cross_tensor_names(0);
    let (cross_norm, wcq, wco) = (vector(t, &cn), matrix(t, &cq), matrix(t, &co));
    let (wg, wu, wd) = (
        matrix(t, &hf(Param::Gate(0))),
        matrix(t, &hf(Param::Up(0))),
        matrix(t, &hf(Param::Down(0))),
    );
    // The drafter's own head, or the target's rows for its tokens (0..n here).
    let head = if t.contains_key(&hf(Param::LmHead)) {
        matrix(t, &hf(Param::LmHead))
    } else {
        let target_head = match p.target_tensors.get(&hf(Param::LmHead)) {
            Some(_) => matrix(&p.target_tensors, &hf(Param::LmHead)),
            None => embed.clone(),
        };
        target_head[..g.draft_vocab_size].to_vec()
    };
    let mut hidden: Vec<Vec<f64>> = tokens.iter().map(|&x| embed[x as usize].clone()).collect();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for (pos, h) in hidden.iter_mut().enumerate() {
        let a = rms_norm(h, &vector(t, &hf(Param::AttnNorm(0))), eps);
        let mut q = apply(&wq, &a);
        let mut k = apply(&wk, &a);
        rope(&mut q, g.head_dim, pos, target.rope_theta);
        rope(&mut k, g.head_dim, pos, target.rope_theta);
        keys.push(k);
        values.push(apply(&wv, &a));
        let att = attend(&q, &keys, &values, g.num_heads, g.num_kv_heads, g.head_dim);
        h.iter_mut()
            .zip(apply(&wo, &att))
            .for_each(|(x, d)| *x += d);
        let c = rms_norm(h, &cross_norm, eps);
        let mut q = apply(&wcq, &c);
        rope(&mut q, target.head_dim, pos, target.rope_theta);
        let seen = pos.min(tk.len());
        if seen > 0 {
            let att = attend(
                &q,
                &tk[..seen],
                &tv[..seen],
                target.num_heads,
                target.num_kv_heads,
                target.head_dim,
            );
            h.iter_mut()
                .zip(apply(&wco, &att))
                .for_each(|(x, d)| *x += d);
        }
        let m = rms_norm(h, &vector(t, &hf(Param::FfnNorm(0))), eps);
        let act: Vec<f64> = apply(&wg, &m)
            .iter()
            .zip(apply(&wu, &m))
            .map(|(gv, uv)| gv / (1.0 + (-gv).exp()) * uv)
            .collect();
        h.iter_mut()
            .zip(apply(&wd, &act))
            .for_each(|(x, d)| *x += d);
        let f = rms_norm(h, &vector(t, &hf(Param::FinalNorm)), eps);
        out.push(apply(&head, &f));
    }
    out
}

fn rows_of(flat: &[f32], width: usize) -> Vec<Vec<f64>> {
    flat.chunks_exact(width)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

#[test]
fn the_forward_follows_an_independent_reference() {
    for own_head in [true, false] {
        follows_the_reference(&pair_with(200, SCALE, own_head));
    }
}

fn follows_the_reference(p: &Pair) {
    let c = p.target.config().clone();
    let prompt: Vec<u32> = (0..12u32).map(|i| (i * 29 + 7) % 250).collect();
    // The target has verified 9 of them; the drafter reads 12 (its last rows see all 9).
    let (tkv, ttable) = target_cache(&p.target, &prompt[..9]);
    let (k, v) = tkv.layer_snapshot(&ttable, p.glide_config.target_layer);
    let kv_dim = c.num_kv_heads * c.head_dim;
    let got = glide_rows(&p.glide, &prompt, prompt.len(), &tkv, &ttable);
    let want = reference(p, &c, &prompt, &rows_of(&k, kv_dim), &rows_of(&v, kv_dim));
    let scale = want.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), 200, "the reduced head's width");
        let d = g
            .iter()
            .zip(w)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(
            d < 1e-4 * scale.max(1.0),
            "row {i}: off by {d} (scale {scale})"
        );
    }
}

#[test]
fn only_the_targets_verified_positions_are_read() {
    let p = pair(150);
    let prompt: Vec<u32> = (0..10u32).map(|i| (i * 17 + 3) % 250).collect();
    let rejected = [201u32, 44, 97, 5];
    // One target cache that also held four rejected drafts (their keys and values stay in the
    // slots past the cut), one that never did.
    let (mut stale_kv, mut stale) = target_cache(&p.target, &prompt);
    p.target
        .forward(
            &mut stale_kv,
            &mut [SeqInput {
                table: &mut stale,
                tokens: &rejected,
                logits: Logits::None,
            }],
        )
        .unwrap();
    stale_kv.truncate(&mut stale, prompt.len());
    let (clean_kv, clean) = target_cache(&p.target, &prompt);
    // The drafter catches up on the prompt and drafts past it (rows beyond the verified ones).
    let tokens: Vec<u32> = prompt.iter().chain(&[9, 8, 7]).copied().collect();
    let a = glide_rows(&p.glide, &tokens, 5, &stale_kv, &stale);
    let b = glide_rows(&p.glide, &tokens, 5, &clean_kv, &clean);
    assert_eq!(a, b);
    // And the verified positions do matter: with fewer of them verified, the last rows change.
    let (short_kv, short) = target_cache(&p.target, &prompt[..6]);
    let c = glide_rows(&p.glide, &tokens, 5, &short_kv, &short);
    assert_eq!(
        a[..6],
        c[..6],
        "rows that see only the first 6 positions either way"
    );
    assert_ne!(
        a[12], c[12],
        "a drafting row must see the verified positions"
    );
}

#[test]
fn row_by_row_equals_all_at_once() {
    let p = pair(100);
    let prompt: Vec<u32> = (0..14u32).map(|i| (i * 13 + 11) % 250).collect();
    let (tkv, ttable) = target_cache(&p.target, &prompt[..10]);
    let whole = glide_rows(&p.glide, &prompt, prompt.len(), &tkv, &ttable);
    for chunk in [1, 3] {
        assert_eq!(
            glide_rows(&p.glide, &prompt, chunk, &tkv, &ttable),
            whole,
            "{chunk} tokens per forward"
        );
    }
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

fn prompts() -> Vec<Vec<u32>> {
    (0..6u32)
        .map(|s| {
            (0..(5 + 3 * s))
                .map(|i| (i * 37 + s * 11 + 5) % 250)
                .collect()
        })
        .collect()
}

/// A drafter whose own layers are faint and whose head is the target's rows guesses the
/// target's next token from the current one often enough for both accepted and rejected drafts.
fn guessing_pair() -> Pair {
    pair_with(240, 0.02, false)
}

#[test]
fn greedy_speculation_with_glide_equals_target_only_output() {
    let p = guessing_pair();
    let glide = GlideProposer::new(Arc::new(p.glide.clone()));
    let lengths = [(1, false), (2, false), (4, true), (6, false)];
    let (drafted, accepted) = assert_lossless(&p, &glide, &lengths);
    eprintln!("{accepted} of {drafted} GLIDE drafts accepted");
    assert!(
        accepted > 0 && accepted < drafted,
        "{accepted} of {drafted} drafts accepted: both outcomes must occur"
    );
}

/// Greedy speculation with `glide` over every prompt and each (draft length, adaptive) of
/// `lengths` equals target-only output; returns the drafted and accepted tokens.
fn assert_lossless(p: &Pair, glide: &GlideProposer, lengths: &[(usize, bool)]) -> (u64, u64) {
    let tok = tiny_tokenizer();
    let (mut drafted, mut accepted) = (0, 0);
    for (pi, prompt) in prompts().into_iter().enumerate() {
        let req = greedy(prompt, 24);
        let want = generate(&p.target, &tok, &req, |_| {}).unwrap();
        for &(k, adaptive) in lengths {
            let policy = DraftPolicyConfig {
                max_draft: k,
                adaptive,
                confidence: None,
            };
            let got =
                generate_speculative(&p.target, &tok, Some(glide), policy, &req, |_| {}).unwrap();
            assert_eq!(got.tokens, want.tokens, "prompt {pi}, k = {k}");
            drafted += got.speculation.drafted_tokens;
            accepted += got.speculation.accepted_tokens;
        }
    }
    (drafted, accepted)
}

/// [`guessing_pair`]'s drafter reading the target's last hidden state too (rank 8), its
/// projection's weights 50 times the others' spread, so that the feature moves its drafts.
fn feature_guessing_glide(p: &Pair) -> GlideModel {
    guessing_glide_with(p, GlideFeature::LastHidden)
}

fn guessing_glide_with(p: &Pair, feature: GlideFeature) -> GlideModel {
    let mut config = p.glide_config.clone();
    config.feature = feature;
    config.feature_rank = 8;
    let target = p.target.config();
    let mut tensors = tiny_glide_weights(target, &config, 5, 0.02);
    tensors.remove(&Naming::HuggingFace.name(Param::LmHead));
    let proj = &feature_tensor_names()[2];
    let scaled = (&tensors[proj] * 50.0).unwrap();
    tensors.insert(proj.clone(), scaled);
    let vocab = DraftVocab::new(
        (0..config.draft_vocab_size as u32).collect(),
        target.vocab_size,
    );
    GlideModel::from_weights(
        config,
        &mut Weights::from_tensors(tensors),
        vocab.unwrap(),
        &p.target,
        Path::new("<test>"),
    )
    .unwrap()
}

#[test]
fn a_drafter_reading_the_targets_hidden_state_stays_lossless() {
    let p = guessing_pair();
    let glide = GlideProposer::new(Arc::new(feature_guessing_glide(&p)));
    assert_lossless(&p, &glide, &[(1, false), (3, false), (4, true)]);
}

/// The same drafter chaining its own final row into each later row of a round
/// (`last_hidden_chain`; that its drafts are not the unchained ones is a unit test of
/// `speculative/glide.rs`): still lossless.
#[test]
fn a_drafter_chaining_its_own_hidden_state_stays_lossless() {
    let p = guessing_pair();
    let chain = GlideProposer::new(Arc::new(guessing_glide_with(
        &p,
        GlideFeature::LastHiddenChain,
    )));
    let (drafted, _) = assert_lossless(&p, &chain, &[(1, false), (3, false), (4, true)]);
    assert!(drafted > 0, "the chaining drafter drafted nothing");
}

/// After every step of a batch, each sequence holds for its next round the target's hidden row
/// that chose its last token, bit for bit the row a forward over the whole sequence computes
/// there, and the position of the drafter's row that reads it.
#[test]
fn verification_hands_each_sequence_the_targets_row_before_its_last_token() {
    let p = guessing_pair();
    let tok = tiny_tokenizer();
    let glide = GlideProposer::new(Arc::new(feature_guessing_glide(&p)));
    let proposer: &dyn Proposer = &glide;
    let policy = DraftPolicyConfig {
        max_draft: 3,
        adaptive: false,
        confidence: None,
    };
    let mut spec = Speculator::new(&p.target, Some(proposer));
    let mut seqs: Vec<Sequence> = prompts()
        .into_iter()
        .map(|q| Sequence::new(&p.target, &tok, Some(proposer), greedy(q, 16), policy).unwrap())
        .collect();
    for s in seqs.iter_mut() {
        spec.prefill(s).unwrap();
    }
    let checked = step_checking_kept_rows(&p.target, &mut spec, &mut seqs, |kept, whole| {
        assert_eq!(kept, whole, "the target's row before the last token");
    });
    assert!(checked > 20, "only {checked} features checked");
}

#[test]
fn a_batch_drafted_by_glide_gives_each_sequence_its_own_output() {
    let p = guessing_pair();
    let tok = tiny_tokenizer();
    let glide = GlideProposer::new(Arc::new(p.glide.clone()));
    let reqs: Vec<GenerateRequest> = prompts().into_iter().map(|q| greedy(q, 20)).collect();
    let want: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| generate(&p.target, &tok, r, |_| {}).unwrap().tokens)
        .collect();
    let policy = DraftPolicyConfig {
        max_draft: 3,
        adaptive: false,
        confidence: None,
    };
    let proposer: &dyn Proposer = &glide;
    let mut spec = Speculator::new(&p.target, Some(proposer));
    let mut seqs: Vec<Sequence> = reqs
        .iter()
        .map(|r| Sequence::new(&p.target, &tok, Some(proposer), r.clone(), policy).unwrap())
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
        assert_eq!(s.output().tokens, want[i], "sequence {i}");
    }
    assert_eq!(
        spec.draft_kv().usage().blocks_used,
        0,
        "GLIDE's blocks all returned"
    );
}

#[test]
fn a_glide_file_round_trips_and_files_that_do_not_fit_are_refused_by_name() {
    let p = pair(120);
    let vocab_size = p.target.config().vocab_size;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("glide.safetensors");
    let vocab = DraftVocab::new((0..120).collect(), vocab_size).unwrap();
    save_glide(&path, &p.glide_config, &vocab, &p.glide_tensors).unwrap();
    let loaded = GlideModel::load(&path, &p.target).unwrap();
    let prompt: Vec<u32> = (0..9u32).map(|i| (i * 23 + 1) % 250).collect();
    let (tkv, ttable) = target_cache(&p.target, &prompt[..6]);
    assert_eq!(
        glide_rows(&loaded, &prompt, 4, &tkv, &ttable),
        glide_rows(&p.glide, &prompt, 4, &tkv, &ttable)
    );
    let name = path.display().to_string();
    // A target of another width.
    let wider = TinySpec {
        hidden_size: 2 * spec().hidden_size,
        ..spec()
    };
    let other = Model::load(
        tiny_config(&wider),
        &mut Weights::from_tensors(tiny_weights(&tiny_config(&wider), 1, SCALE)),
    )
    .unwrap();
    let e = GlideModel::load(&path, &other).unwrap_err().to_string();
    assert!(e.contains("hidden size") && e.contains(&name), "{e}");
    // An id map reaching past the target's vocabulary.
    let bad_ids = dir.path().join("bad-ids.safetensors");
    let past = DraftVocab::new(
        (vocab_size as u32 - 60..vocab_size as u32 + 60).collect(),
        vocab_size + 60,
    )
    .unwrap();
    save_glide(&bad_ids, &p.glide_config, &past, &p.glide_tensors).unwrap();
    let e = GlideModel::load(&bad_ids, &p.target)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("outside the target's {vocab_size} tokens")),
        "{e}"
    );
    // A safetensors file that is not a GLIDE drafter.
    let plain = dir.path().join("plain.safetensors");
    candle_core::safetensors::save(&p.glide_tensors, &plain).unwrap();
    let e = GlideModel::load(&plain, &p.target).unwrap_err().to_string();
    assert!(e.contains("not a GLIDE drafter file"), "{e}");
}
