//! Parity with Hugging Face transformers: tiny Llama-3, Mistral and Qwen2 checkpoints made by
//! scripts/golden/make_golden.py, with the logits transformers computed for them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use specd_engine::model::{self, LoadOptions, Logits, Model};
use specd_engine::sampling::argmax;

const MODELS: &[&str] = &["llama3", "mistral", "qwen2"];
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

struct Golden {
    prompt: Vec<u32>,
    continuation: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn golden(name: &str) -> Golden {
    let dir = fixture(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        json[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let logits = candle_core::safetensors::load(dir.join("logits.safetensors"), &Device::Cpu)
        .unwrap()
        .remove("logits")
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    Golden {
        prompt: ids("prompt_ids"),
        continuation: ids("continuation_ids"),
        logits,
    }
}

fn load(dir: &Path) -> Model {
    model::load(dir, &LoadOptions::default()).unwrap().model
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn full_forward_matches_transformers_logits() {
    for name in MODELS {
        let g = golden(name);
        let m = load(&fixture(name));
        let tokens: Vec<u32> = g.prompt.iter().chain(&g.continuation).copied().collect();
        let mut cache = m.new_cache();
        let out = m.forward_cache(&mut cache, &tokens, Logits::All).unwrap();
        let ours = rows(&out);
        assert_eq!(ours.len(), g.logits.len());
        for (pos, (a, b)) in ours.iter().zip(&g.logits).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d <= TOLERANCE, "{name}: position {pos} differs by {d}");
        }
    }
}

#[test]
fn incremental_decoding_matches_transformers_and_its_greedy_continuation() {
    for name in MODELS {
        let g = golden(name);
        let m = load(&fixture(name));
        let mut cache = m.new_cache();
        let out = m
            .forward_cache(&mut cache, &g.prompt, Logits::Last)
            .unwrap();
        let mut last = rows(&out).remove(0);
        let n = g.prompt.len();
        let mut generated = Vec::new();
        for (i, &tok) in g.continuation.iter().enumerate() {
            let d = max_abs_diff(&last, &g.logits[n - 1 + i]);
            assert!(d <= TOLERANCE, "{name}: decode step {i} differs by {d}");
            generated.push(argmax(&last));
            let out = m.forward_cache(&mut cache, &[tok], Logits::Last).unwrap();
            last = rows(&out).remove(0);
        }
        assert_eq!(
            generated, g.continuation,
            "{name}: greedy continuation differs from transformers'"
        );
    }
}

/// Rewrites a fixture's weights in another dtype, or split into two shards with an index.
fn rewrite(name: &str, dtype: DType, shards: usize) -> tempfile::TempDir {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let per = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in names.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, shards)
        };
        let part: std::collections::HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&part, dir.path().join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    if shards > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
    }
    dir
}

fn all_logits(m: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache();
    rows(&m.forward_cache(&mut cache, tokens, Logits::All).unwrap())
}

#[test]
fn sharded_checkpoints_load_the_same_model() {
    let g = golden("qwen2");
    let tokens: Vec<u32> = g.prompt.iter().chain(&g.continuation).copied().collect();
    let dir = rewrite("qwen2", DType::F32, 3);
    assert!(dir.path().join("model-00003-of-00003.safetensors").exists());
    assert_eq!(
        all_logits(&load(dir.path()), &tokens),
        all_logits(&load(&fixture("qwen2")), &tokens)
    );
}

#[test]
fn f16_and_bf16_checkpoints_load_and_stay_close() {
    let g = golden("llama3");
    let tokens: Vec<u32> = g.prompt.iter().chain(&g.continuation).copied().collect();
    // Rounding the weights to 16 bits moves the logits by about 1e-2 at this scale.
    for (dtype, tol) in [(DType::F16, 0.05), (DType::BF16, 0.3)] {
        let dir = rewrite("llama3", dtype, 1);
        let ours = all_logits(&load(dir.path()), &tokens);
        for (a, b) in ours.iter().zip(&g.logits) {
            let d = max_abs_diff(a, b);
            assert!(d <= tol, "{dtype:?}: logits differ by {d}");
        }
    }
}
