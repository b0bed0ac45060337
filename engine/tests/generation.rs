//! Generation on tiny models: greedy equals step-by-step argmax, limits, stop strings, EOS,
//! seeded sampling, and streamed text that never splits a character.

use specd_engine::generate::{generate, FinishReason, GenerateRequest};
use specd_engine::model::tiny::{tiny_model, tiny_tokenizer, TinySpec};
use specd_engine::model::{LoadedModel, Logits};
use specd_engine::sampling::{argmax, SamplingParams};
use specd_engine::Error;

fn model() -> LoadedModel {
    // A peaky model so that greedy text is not just noise.
    tiny_model(&TinySpec {
        seed: 3,
        weight_scale: 0.5,
        ..Default::default()
    })
    .unwrap()
}

fn request(prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: tiny_tokenizer().encode(prompt, true).unwrap(),
        max_tokens,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: false,
    }
}

/// Greedy tokens computed the slow way: a full forward over the whole sequence every step.
fn reference_greedy(m: &LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut cache = m.model.new_cache();
        let l = m
            .model
            .forward_cache(&mut cache, &seq, Logits::Last)
            .unwrap();
        let t = argmax(&l.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
        out.push(t);
        seq.push(t);
    }
    out
}

/// Generation with the model's EOS tokens disabled, so that runs have a known length.
fn run(
    m: &LoadedModel,
    req: &GenerateRequest,
) -> (specd_engine::generate::GenerateOutput, Vec<String>) {
    let tok = strip_eos(m.tokenizer.clone().unwrap());
    let mut pieces = Vec::new();
    let out = generate(&m.model, &tok, req, |t| pieces.push(t.to_string())).unwrap();
    (out, pieces)
}

fn strip_eos(mut t: specd_engine::model::Tokenizer) -> specd_engine::model::Tokenizer {
    t.clear_eos_token_ids();
    t
}

#[test]
fn greedy_generation_equals_step_by_step_argmax() {
    let m = model();
    let req = request("def add(x, y):\n    return", 24);
    let (out, pieces) = run(&m, &req);
    assert_eq!(out.tokens, reference_greedy(&m, &req.prompt, 24));
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(pieces.concat(), out.text);
    assert_eq!(out.prompt_tokens, req.prompt.len());
}

#[test]
fn stop_string_ends_generation_before_it() {
    let m = model();
    let base = run(&m, &request("hello", 40)).0;
    // pick a stop string from the middle of the greedy output
    let chars: Vec<char> = base.text.chars().collect();
    assert!(chars.len() > 10, "greedy output too short: {:?}", base.text);
    let stop: String = chars[6..8].iter().collect();
    let cut = base.text.find(&stop).unwrap();
    let mut req = request("hello", 40);
    req.stop = vec![stop.clone()];
    let (out, pieces) = run(&m, &req);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, base.text[..cut]);
    assert_eq!(pieces.concat(), out.text);
    assert!(!pieces.concat().contains(&stop));
}

#[test]
fn eos_token_stops_with_reason_stop_unless_ignored() {
    let m = model();
    let base = run(&m, &request("x = ", 12)).0;
    let eos = base.tokens[5];
    let first = base.tokens.iter().position(|&t| t == eos).unwrap();
    let mut tok = strip_eos(m.tokenizer.clone().unwrap());
    tok.add_eos_token_ids(&[eos]);
    let out = generate(&m.model, &tok, &request("x = ", 12), |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.tokens, base.tokens[..first]);
    // With `ignore_eos` the same EOS token is an ordinary token: the run goes to its length
    // and equals the run without that EOS.
    let mut req = request("x = ", 12);
    req.ignore_eos = true;
    let out = generate(&m.model, &tok, &req, |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.tokens, base.tokens);
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let m = model();
    let mut req = request("def", 30);
    req.sampling = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        seed: 42,
        ..Default::default()
    };
    let a = run(&m, &req).0.tokens;
    assert_eq!(a, run(&m, &req).0.tokens);
    req.sampling.seed = 43;
    assert_ne!(a, run(&m, &req).0.tokens);
}

#[test]
fn context_limit_and_bad_parameters() {
    let m = tiny_model(&TinySpec {
        max_position_embeddings: 32,
        ..Default::default()
    })
    .unwrap();
    let tok = strip_eos(m.tokenizer.clone().unwrap());
    let long = GenerateRequest {
        prompt: vec![5; 32],
        ..request("", 4)
    };
    match generate(&m.model, &tok, &long, |_| {}) {
        Err(Error::ContextLength { len: 32, limit: 31 }) => {}
        other => panic!("expected a context-length error, got {other:?}"),
    }
    // generation stops at the context length with finish reason `length`
    let near = GenerateRequest {
        prompt: vec![5; 28],
        ..request("", 100)
    };
    let out = generate(&m.model, &tok, &near, |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.tokens.len(), 4);
    let mut bad = request("a", 0);
    let e = generate(&m.model, &tok, &bad, |_| {}).unwrap_err();
    assert!(e.to_string().contains("max_tokens"), "{e}");
    bad.max_tokens = 5;
    bad.sampling.temperature = -0.5;
    let e = generate(&m.model, &tok, &bad, |_| {}).unwrap_err();
    assert!(e.to_string().contains("temperature"), "{e}");
    let empty = GenerateRequest {
        prompt: vec![],
        ..request("", 4)
    };
    assert!(generate(&m.model, &tok, &empty, |_| {})
        .unwrap_err()
        .to_string()
        .contains("empty"));
}

#[test]
fn streamed_text_never_splits_a_character() {
    let tok = tiny_tokenizer();
    let text = "héllo 🚀 你好 👨‍👩‍👧 ok";
    // the tiny vocabulary has no multi-byte merges: every byte of a character is its own token
    let ids = tok.encode(text, true).unwrap();
    assert!(ids.len() > text.chars().count());
    let mut stream = tok.text_stream(false);
    let mut pieces = Vec::new();
    for id in ids {
        if let Some(p) = stream.push(id).unwrap() {
            pieces.push(p);
        }
    }
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(
        pieces.len() >= 5,
        "text should arrive in several pieces: {pieces:?}"
    );
}
