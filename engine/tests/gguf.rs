//! GGUF loading on tiny GGUF files written by the test: llama (interleaved rope, permuted Q/K)
//! and qwen2 architectures, f32 and quantized (Q8_0, Q4_K) weights, and the tokenizer built from
//! the file's metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::sync::Arc;

use specd_engine::generate::{generate, GenerateRequest};
use specd_engine::model::tiny::{
    tiny_config, tiny_guessing_glide, tiny_tokenizer, tiny_vocab, tiny_weights, write_folder,
    TinySpec, SPECIAL_TOKENS,
};
use specd_engine::model::{
    self, Architecture, LoadOptions, Logits, Model, ModelConfig, Naming, Param, WeightStorage,
    Weights,
};
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{generate_speculative, DraftPolicyConfig, GlideProposer};

/// llama.cpp's conversion reorders each head's Q/K rows so that rotation pairs are adjacent:
/// row 2i + j of the result is row j * d/2 + i of the Hugging Face weight.
fn permute_for_interleaved(w: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let hd = rows / n_heads;
    w.reshape((n_heads, 2, hd / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
        .contiguous()
        .unwrap()
}

const LAYER_PARAMS: [fn(usize) -> Param; 13] = [
    Param::AttnNorm,
    Param::Q,
    Param::K,
    Param::V,
    Param::QBias,
    Param::KBias,
    Param::VBias,
    Param::O,
    Param::FfnNorm,
    Param::Gate,
    Param::Up,
    Param::Down,
    Param::AttnNorm,
];

/// Writes a GGUF holding `tensors` (Hugging Face names) and the tiny tokenizer. Matrices are
/// stored as `dtype`, vectors as f32.
fn write_gguf(path: &Path, cfg: &ModelConfig, tensors: &HashMap<String, Tensor>, dtype: GgmlDType) {
    write_gguf_with(path, cfg, tensors, dtype, None)
}

/// Like [`write_gguf`], optionally with llama.cpp's `rope_freqs.weight` (per-frequency divisors).
fn write_gguf_with(
    path: &Path,
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    dtype: GgmlDType,
    rope_freqs: Option<Vec<f32>>,
) {
    let arch = match cfg.architecture {
        Architecture::Qwen2 => "qwen2",
        _ => "llama",
    };
    let mut params = vec![Param::Embed, Param::FinalNorm, Param::LmHead];
    for i in 0..cfg.num_layers {
        params.extend(LAYER_PARAMS.iter().map(|p| p(i)));
    }
    params.dedup();
    let mut qtensors = Vec::new();
    for p in params {
        let Some(t) = tensors.get(&Naming::HuggingFace.name(p)) else {
            continue;
        };
        let t = match (p, cfg.architecture) {
            (Param::Q(_), Architecture::Llama) => permute_for_interleaved(t, cfg.num_heads),
            (Param::K(_), Architecture::Llama) => permute_for_interleaved(t, cfg.num_kv_heads),
            _ => t.clone(),
        };
        let q = if t.rank() == 2 {
            QTensor::quantize(&t, dtype)
        } else {
            QTensor::quantize(&t, GgmlDType::F32)
        };
        qtensors.push((Naming::Gguf.name(p), q.unwrap()));
    }
    if let Some(f) = rope_freqs {
        let n = f.len();
        let t = Tensor::from_vec(f, n, &Device::Cpu).unwrap();
        qtensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let (tokens, merges) = tiny_vocab();
    let n = tokens.len();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let types: Vec<Value> = (0..n)
        .map(|i| Value::I32(if i >= n - SPECIAL_TOKENS.len() { 3 } else { 1 }))
        .collect();
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            format!("{arch}.context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (
            format!("{arch}.embedding_length"),
            Value::U32(cfg.hidden_size as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            format!("{arch}.block_count"),
            Value::U32(cfg.num_layers as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(cfg.num_heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(cfg.num_kv_heads as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens.clone())),
        (
            "tokenizer.ggml.merges".into(),
            strings(merges.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32((n - 1) as u32),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::String(specd_engine::model::tiny::CHATML_TEMPLATE.into()),
        ),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn logits(m: &Model, toks: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache();
    m.forward_cache(&mut cache, toks, Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn prompt(vocab: usize) -> Vec<u32> {
    (0..17u32).map(|i| (i * 37 + 5) % vocab as u32).collect()
}

/// The same weights as dense tensors, after the quantization round trip.
fn dequantized(tensors: &HashMap<String, Tensor>, dtype: GgmlDType) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .map(|(k, t)| {
            let t = if t.rank() == 2 {
                QTensor::quantize(t, dtype)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
            } else {
                t.clone()
            };
            (k.clone(), t)
        })
        .collect()
}

#[test]
fn f32_gguf_of_both_architectures_matches_the_safetensors_model() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let spec = TinySpec {
            architecture: arch,
            seed: 5,
            ..Default::default()
        };
        let cfg = tiny_config(&spec);
        let tensors = tiny_weights(&cfg, spec.seed, spec.weight_scale);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_gguf(&path, &cfg, &tensors, GgmlDType::F32);
        let loaded = model::load(&path, &LoadOptions::default()).unwrap();
        let c = loaded.model.config();
        assert_eq!(c.architecture, arch);
        assert_eq!(c.tie_word_embeddings, arch == Architecture::Qwen2);
        assert_eq!(c.qkv_bias, arch == Architecture::Qwen2);
        let reference = Model::load(cfg.clone(), &mut Weights::from_tensors(tensors)).unwrap();
        let toks = prompt(cfg.vocab_size);
        for (a, b) in logits(&loaded.model, &toks)
            .iter()
            .zip(logits(&reference, &toks))
        {
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-4, "{arch:?}: GGUF logits differ by {d}");
        }
    }
}

/// A tiny model of `hidden` x `inter` written as a GGUF with its matrices in `dtype`, in
/// `dir`: its configuration, its (unquantized) weights and the file.
fn quantized_tiny(
    dir: &Path,
    dtype: GgmlDType,
    hidden: usize,
    inter: usize,
) -> (ModelConfig, HashMap<String, Tensor>, std::path::PathBuf) {
    // Same gain per matrix at every width, so that errors are not amplified more at 256.
    let spec = TinySpec {
        hidden_size: hidden,
        intermediate_size: inter,
        seed: 8,
        weight_scale: 1.6 / (hidden as f32).sqrt(),
        ..Default::default()
    };
    let cfg = tiny_config(&spec);
    let tensors = tiny_weights(&cfg, spec.seed, spec.weight_scale);
    let path = dir.join("tiny-q.gguf");
    write_gguf(&path, &cfg, &tensors, dtype);
    (cfg, tensors, path)
}

/// The quantized formats the tiny GGUFs are written in, with widths each accepts: Q4_K needs
/// rows of 256 values; Q8_0 (with Q4_0/Q5_0 re-encoded to it) rows of 32.
const QUANTIZED_TINIES: [(GgmlDType, usize, usize); 3] = [
    (GgmlDType::Q8_0, 64, 128),
    (GgmlDType::Q4K, 256, 512),
    (GgmlDType::Q5_0, 64, 128),
];

/// The dense model of the values `tensors` hold after the `dtype` round trip (the reference a
/// quantized load is compared with).
fn dequantized_model(
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    dtype: GgmlDType,
) -> Model {
    Model::load(
        cfg.clone(),
        &mut Weights::from_tensors(dequantized(tensors, dtype)),
    )
    .unwrap()
}

#[test]
fn quantized_gguf_stays_quantized_and_matches_its_dequantized_weights() {
    for (dtype, hidden, inter) in QUANTIZED_TINIES {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, tensors, path) = quantized_tiny(dir.path(), dtype, hidden, inter);
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        let f32_bytes: usize = tensors.values().map(|t| t.elem_count() * 4).sum();
        assert!(
            size < f32_bytes / 2,
            "{dtype:?}: the file ({size} B) is not quantized"
        );
        let loaded = model::load(&path, &LoadOptions::default()).unwrap();
        let reference = dequantized_model(&cfg, &tensors, dtype);
        let toks = prompt(cfg.vocab_size);
        let (a, b) = (logits(&loaded.model, &toks), logits(&reference, &toks));
        // Quantized matmuls also quantize the activations (to 8 bits), so the results agree to
        // about half a percent of the logits' range on average, not to float precision; a
        // misplaced or mis-decoded tensor would be off by the whole range.
        let range = b.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        let d = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let mean = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .sum::<f32>()
            / (a.len() * a[0].len()) as f32;
        let agree = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| specd_engine::sampling::argmax(x) == specd_engine::sampling::argmax(y))
            .count();
        eprintln!(
            "{dtype:?}: max {d} mean {mean} range {range} argmax agree {agree}/{}",
            a.len()
        );
        assert!(
            mean < 0.01 * range,
            "{dtype:?}: logits differ by {mean} on average (range {range})"
        );
        assert!(
            d < 0.06 * range,
            "{dtype:?}: logits differ by up to {d} (range {range})"
        );
        assert!(
            agree * 5 >= a.len() * 4,
            "{dtype:?}: argmax agrees at {agree} of {} positions",
            a.len()
        );
    }
}

/// `--weights dense`: a quantized GGUF's matrices are dequantized as they load, so the model
/// computes exactly what a dense model of candle's dequantized tensors computes (same bits)
/// and says so, so that a draft model loaded after it can follow.
#[test]
fn dense_storage_dequantizes_a_quantized_gguf_at_load() {
    for (dtype, hidden, inter) in QUANTIZED_TINIES {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, tensors, path) = quantized_tiny(dir.path(), dtype, hidden, inter);
        let options = LoadOptions {
            weights: WeightStorage::Dense,
            ..Default::default()
        };
        let loaded = model::load(&path, &options).unwrap().model;
        assert_eq!(loaded.weight_storage(), WeightStorage::Dense, "{dtype:?}");
        let stored = model::load(&path, &LoadOptions::default()).unwrap().model;
        assert_eq!(stored.weight_storage(), WeightStorage::Stored, "{dtype:?}");
        let reference = dequantized_model(&cfg, &tensors, dtype);
        let toks = prompt(cfg.vocab_size);
        assert_eq!(
            logits(&loaded, &toks),
            logits(&reference, &toks),
            "{dtype:?}: dequantized at load differs from the dense model of the same values"
        );
        assert_ne!(
            logits(&stored, &toks),
            logits(&reference, &toks),
            "{dtype:?}: the quantized kernels should not give the dense bits (test is blind)"
        );
    }
}

/// A dense folder loads the same either way but records the storage asked for, so that a
/// quantized draft model loaded after it follows the target's `--weights`.
#[test]
fn a_dense_folder_records_the_storage_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let tensors = tiny_weights(&tiny_config(&spec), spec.seed, spec.weight_scale);
    let folder = dir.path().join("tiny");
    write_folder(&folder, &spec, &tensors).unwrap();
    for storage in [WeightStorage::Stored, WeightStorage::Dense] {
        let options = LoadOptions {
            weights: storage,
            ..Default::default()
        };
        let m = model::load(&folder, &options).unwrap().model;
        assert_eq!(m.weight_storage(), storage);
    }
}

/// The same on a GPU (feature `cuda`; run by `scripts/gpu/check`): the matrices go to GPU
/// memory as bf16 (at least twice the bytes of the Q4_K blocks) and the logits follow the CPU's
/// dense model to bf16 precision.
#[cfg(feature = "cuda")]
#[test]
fn on_the_gpu_dense_storage_uploads_bf16_matrices() {
    let ordinal = std::env::var("SPECD_CHECK_GPU")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, tensors, path) = quantized_tiny(dir.path(), GgmlDType::Q4K, 256, 512);
    let load = |weights| {
        let options = LoadOptions {
            device: specd_engine::model::Device::Cuda(ordinal),
            weights,
            ..Default::default()
        };
        model::load(&path, &options)
            .unwrap_or_else(|e| panic!("this test needs a GPU: {e}"))
            .model
    };
    let (dense, stored) = (load(WeightStorage::Dense), load(WeightStorage::Stored));
    let bytes = |m: &Model| m.gpu_stats().expect("a GPU model").weight_bytes;
    // The matrices' weights (norms are not among the bytes counted): 2 bytes each in bf16,
    // 0.56 in Q4_K.
    let params: usize = tensors
        .values()
        .filter(|t| t.rank() == 2)
        .map(|t| t.elem_count())
        .sum();
    assert!(
        bytes(&dense) * 10 >= params * 2 * 9 && bytes(&stored) * 10 <= params * 2 * 4,
        "dense {} bytes, stored {} bytes, {params} matrix weights: not bf16 and Q4_K",
        bytes(&dense),
        bytes(&stored)
    );
    let reference = dequantized_model(&cfg, &tensors, GgmlDType::Q4K);
    let toks = prompt(cfg.vocab_size);
    let (a, b) = (logits(&dense, &toks), logits(&reference, &toks));
    let range = b.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let mean = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / (a.len() * a[0].len()) as f32;
    assert!(
        mean < 0.01 * range,
        "bf16 on the GPU differs from the CPU's dense model by {mean} on average (range {range})"
    );
}

#[test]
fn tokenizer_from_gguf_metadata_round_trips_and_knows_its_specials() {
    let spec = TinySpec::default();
    let cfg = tiny_config(&spec);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &tiny_weights(&cfg, 1, 0.2), GgmlDType::F32);
    let loaded = model::load(&path, &LoadOptions::default()).unwrap();
    let tok = loaded.tokenizer.unwrap();
    let n = cfg.vocab_size as u32;
    let texts = [
        "def add(x, y):\n    return x + y\n",
        "fn main() {\n\tprintln!(\"héllo, wörld\");\n}",
        "你好世界 🚀 👨‍👩‍👧 é مرحبا",
        "  trailing spaces   \n\n\n",
        "",
    ];
    for t in texts {
        let ids = tok.encode(t, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), t);
    }
    // The qwen2 pre-tokenizer normalizes to NFC, as Qwen's tokenizer.json does.
    let ids = tok.encode("e\u{301}", true).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "\u{e9}");
    // Merges apply: "def" is one token, "    " is one token.
    let ids = tok.encode("def", true).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(tok.inner().id_to_token(ids[0]).unwrap(), "def");
    // Specials are single ids when parsed, plain text otherwise.
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(ids.first(), Some(&(n - 2)));
    assert_eq!(ids.last(), Some(&(n - 1)));
    let plain = tok.encode("<|im_start|>", false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&(n - 2)));
    assert!(tok.eos_token_ids().contains(&(n - 1)), "EOS from metadata");
    assert!(
        tok.eos_token_ids().contains(&(n - 3)),
        "<|endoftext|> ends generation too"
    );
    assert_eq!(
        loaded.chat_template.as_deref(),
        Some(specd_engine::model::tiny::CHATML_TEMPLATE)
    );
}

#[test]
fn llama3_rope_scaling_from_gguf_rope_freqs_matches_the_config_form() {
    use specd_engine::model::RopeScaling;
    let spec = TinySpec {
        architecture: Architecture::Llama,
        seed: 21,
        ..Default::default()
    };
    let mut cfg = tiny_config(&spec);
    cfg.rope_scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 32,
    };
    let scaled = cfg.rope_inv_freq();
    let plain = ModelConfig {
        rope_scaling: RopeScaling::None,
        ..cfg.clone()
    }
    .rope_inv_freq();
    assert!(
        scaled.iter().zip(&plain).filter(|(a, b)| a != b).count() >= 2,
        "scaling must matter"
    );
    // llama.cpp stores the divisors plain / scaled.
    let divisors: Vec<f32> = plain
        .iter()
        .zip(&scaled)
        .map(|(p, s)| (p / s) as f32)
        .collect();
    let tensors = tiny_weights(&cfg, spec.seed, spec.weight_scale);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama3.gguf");
    write_gguf_with(&path, &cfg, &tensors, GgmlDType::F32, Some(divisors));
    let loaded = model::load(&path, &LoadOptions::default()).unwrap();
    assert!(matches!(
        loaded.model.config().rope_scaling,
        RopeScaling::FreqFactors(_)
    ));
    let reference = Model::load(cfg.clone(), &mut Weights::from_tensors(tensors)).unwrap();
    // positions past the original context, where the scaling changes the rotation
    let toks: Vec<u32> = (0..60u32)
        .map(|i| (i * 13 + 1) % cfg.vocab_size as u32)
        .collect();
    for (a, b) in logits(&loaded.model, &toks)
        .iter()
        .zip(logits(&reference, &toks))
    {
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-3, "logits differ by {d}");
    }
}

/// On a GPU (feature `cuda`; run by `scripts/gpu/check`): quantized matrices stay quantized in
/// GPU memory, and a prompt long enough for the prefill GEMM (which dequantizes them into its
/// scratch first) gives the same bits, row by row, as its tokens decoded one at a time through
/// the row kernels that read the blocks directly.
#[cfg(feature = "cuda")]
#[test]
fn on_the_gpu_quantized_prefill_rows_equal_the_same_tokens_decoded() {
    let device = std::env::var("SPECD_CHECK_GPU")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(
            specd_engine::model::Device::Cuda(0),
            specd_engine::model::Device::Cuda,
        );
    for (dtype, hidden, inter) in [(GgmlDType::Q4K, 256, 512), (GgmlDType::Q8_0, 64, 128)] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, tensors, path) = quantized_tiny(dir.path(), dtype, hidden, inter);
        let options = LoadOptions {
            device,
            ..Default::default()
        };
        let m = model::load(&path, &options)
            .unwrap_or_else(|e| panic!("this test needs a GPU: {e}"))
            .model;
        let stats = m.gpu_stats().expect("a GPU model");
        let f32_bytes: usize = tensors.values().map(|t| t.elem_count() * 4).sum();
        // Q8_0 keeps 34 bytes per 32 weights (0.27 of f32), Q4_K less; bf16 would be half.
        assert!(
            stats.weight_bytes * 5 < f32_bytes * 2,
            "{dtype:?}: {} bytes of weights on the GPU ({f32_bytes} as f32): not quantized",
            stats.weight_bytes
        );
        let toks: Vec<u32> = (0..100u32)
            .map(|i| (i * 37 + 5) % (cfg.vocab_size as u32 - 3))
            .collect();
        let prefilled = logits(&m, &toks);
        let mut cache = m.new_cache();
        m.forward_cache(&mut cache, &toks[..1], Logits::None)
            .unwrap();
        for (i, &t) in toks.iter().enumerate().skip(1) {
            let row: Vec<f32> = m
                .forward_cache(&mut cache, &[t], Logits::Last)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(row, prefilled[i], "{dtype:?}: position {i}");
        }
    }
}

/// A GLIDE drafter served with a quantized target has its dense matrices quantized to Q8_0
/// (with a dense target they stay dense), and greedy speculation with it still equals
/// target-only output.
#[test]
fn a_glide_drafter_follows_a_quantized_target_into_q8_0_and_stays_lossless() {
    glide_follows_a_quantized_target(specd_engine::model::Device::Cpu);
}

/// The same on a GPU (feature `cuda`; run by `scripts/gpu/check`): the drafter's Q8_0 blocks
/// go to GPU memory as they are.
#[cfg(feature = "cuda")]
#[test]
fn on_the_gpu_a_glide_drafter_follows_a_quantized_target_into_q8_0_and_stays_lossless() {
    let ordinal = std::env::var("SPECD_CHECK_GPU")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    glide_follows_a_quantized_target(specd_engine::model::Device::Cuda(ordinal));
}

fn glide_follows_a_quantized_target(device: specd_engine::model::Device) {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, tensors, path) = quantized_tiny(dir.path(), GgmlDType::Q8_0, 64, 128);
    let options = LoadOptions {
        device,
        ..Default::default()
    };
    let quantized = model::load(&path, &options).unwrap().model;
    let mut dense = Weights::from_tensors(tensors);
    let dense = Model::load_on(cfg, &mut dense, device).unwrap();
    assert!(!tiny_guessing_glide(&dense, 200, 3).unwrap().is_quantized());
    let glide = tiny_guessing_glide(&quantized, 200, 3).unwrap();
    assert!(
        glide.is_quantized(),
        "a drafter for a quantized target stayed dense"
    );

    let tok = tiny_tokenizer();
    let proposer = GlideProposer::new(Arc::new(glide));
    let (mut drafted, mut accepted) = (0, 0);
    for s in 0..4u32 {
        let prompt: Vec<u32> = (0..8 + 3 * s)
            .map(|i| (i * 37 + s * 11 + 5) % 250)
            .collect();
        let req = GenerateRequest {
            prompt,
            max_tokens: 20,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        };
        let want = generate(&quantized, &tok, &req, |_| {}).unwrap();
        let policy = DraftPolicyConfig {
            max_draft: 4,
            adaptive: false,
            confidence: None,
        };
        let got =
            generate_speculative(&quantized, &tok, Some(&proposer), policy, &req, |_| {}).unwrap();
        assert_eq!(got.tokens, want.tokens, "prompt {s}");
        drafted += got.speculation.drafted_tokens;
        accepted += got.speculation.accepted_tokens;
    }
    assert!(drafted > 0, "the quantized drafter never drafted");
    eprintln!("{accepted} of {drafted} drafts accepted");
}
