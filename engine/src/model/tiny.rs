//! Tiny deterministic models built in code, with a small byte-level BPE tokenizer and a ChatML
//! template: what the test suites of every crate run on, with no files to fetch.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use super::config::{Architecture, ModelConfig, RopeLayout, RopeScaling};
use super::glide::{cross_tensor_names, feature_tensor_names, CHAIN_NORM_TENSOR};
use super::weights::{Naming, Param, Weights};
use super::{Device as ModelDevice, LoadedModel, Model, Tokenizer};
use super::{DraftVocab, GlideConfig, GlideFeature, GlideModel, GlideTarget};
use crate::error::Result;

/// ChatML, the chat format of the tiny models (the same as Qwen's).
pub const CHATML_TEMPLATE: &str = "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}";

/// Merges of the tiny tokenizer, learned by hand from code: enough that BPE merging is exercised.
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "Ġ"),
    ("ĠĠ", "ĠĠ"),
    ("d", "e"),
    ("de", "f"),
    ("Ġ", "x"),
    ("r", "e"),
    ("re", "t"),
    ("ret", "u"),
    ("retu", "r"),
    ("retur", "n"),
    ("Ġ", "="),
    ("Ċ", "ĠĠĠĠ"),
    ("i", "n"),
    ("Ġ", "in"),
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
];

/// Special tokens of the tiny tokenizer, after the byte and merge tokens.
pub const SPECIAL_TOKENS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Shape and seed of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_position_embeddings: usize,
    pub seed: u64,
    /// Standard deviation of the random weights (larger gives peakier distributions).
    pub weight_scale: f32,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            architecture: Architecture::Qwen2,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            max_position_embeddings: 512,
            seed: 0,
            weight_scale: 0.2,
        }
    }
}

/// The GPT-2 byte ↔ printable-character table used by byte-level BPE.
pub fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = ('!' as u32..='~' as u32)
        .chain('¡' as u32..='¬' as u32)
        .chain('®' as u32..='ÿ' as u32)
        .collect();
    let mut chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        chars[b as usize] = char::from_u32(c).expect("valid code point");
    }
    chars
}

/// The tiny tokenizer's vocabulary (ids in order) and merges.
pub fn tiny_vocab() -> (Vec<String>, Vec<(String, String)>) {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let merges: Vec<(String, String)> = MERGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
    }
    tokens.extend(SPECIAL_TOKENS.iter().map(|s| s.to_string()));
    (tokens, merges)
}

/// The tiny byte-level BPE tokenizer (GPT-2 pre-tokenization), with ChatML special tokens.
pub fn tiny_tokenizer() -> Tokenizer {
    let (tokens, merges) = tiny_vocab();
    let bpe =
        super::tokenizer::bpe_model(&tokens, merges).expect("the tiny BPE model is well-formed");
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    t.add_special_tokens(
        SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true)),
    )
    .expect("special tokens are in the vocabulary");
    let mut tok = Tokenizer::from_tokenizer(t);
    tok.set_special_texts(None, Some("<|endoftext|>".into()));
    tok
}

/// Size of the tiny vocabulary.
pub fn tiny_vocab_size() -> usize {
    256 + MERGES.len() + SPECIAL_TOKENS.len()
}

/// The configuration of a tiny model.
pub fn tiny_config(spec: &TinySpec) -> ModelConfig {
    let vocab = tiny_vocab_size() as u32;
    ModelConfig {
        architecture: spec.architecture,
        vocab_size: vocab as usize,
        hidden_size: spec.hidden_size,
        intermediate_size: spec.intermediate_size,
        num_layers: spec.num_layers,
        num_heads: spec.num_heads,
        num_kv_heads: spec.num_kv_heads,
        head_dim: spec.hidden_size / spec.num_heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
        rope_layout: RopeLayout::HalfSplit,
        max_position_embeddings: spec.max_position_embeddings,
        // Mistral's window is short enough that the tests' sequences run past it.
        sliding_window: (spec.architecture == Architecture::Mistral).then_some(8),
        qkv_bias: spec.architecture == Architecture::Qwen2,
        tie_word_embeddings: spec.architecture == Architecture::Qwen2,
        bos_token_id: None,
        eos_token_ids: vec![vocab - 3, vocab - 1],
    }
}

/// Random weights for `config`, Hugging Face names, drawn from `seed`.
pub fn tiny_weights(config: &ModelConfig, seed: u64, scale: f32) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let c = config;
    let (h, hd) = (c.hidden_size, c.head_dim);
    let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut put = |param: Param, shape: &[usize], base: f32, scale: f32| {
        out.insert(
            Naming::HuggingFace.name(param),
            random_tensor(&mut rng, shape, base, scale),
        );
    };
    put(Param::Embed, &[c.vocab_size, h], 0.0, 1.0);
    for i in 0..c.num_layers {
        put(Param::AttnNorm(i), &[h], 1.0, 0.1);
        put(Param::Q(i), &[q, h], 0.0, scale);
        put(Param::K(i), &[kv, h], 0.0, scale);
        put(Param::V(i), &[kv, h], 0.0, scale);
        if c.qkv_bias {
            put(Param::QBias(i), &[q], 0.0, 0.1);
            put(Param::KBias(i), &[kv], 0.0, 0.1);
            put(Param::VBias(i), &[kv], 0.0, 0.1);
        }
        put(Param::O(i), &[h, q], 0.0, scale);
        put(Param::FfnNorm(i), &[h], 1.0, 0.1);
        put(Param::Gate(i), &[c.intermediate_size, h], 0.0, scale);
        put(Param::Up(i), &[c.intermediate_size, h], 0.0, scale);
        put(Param::Down(i), &[h, c.intermediate_size], 0.0, scale);
    }
    put(Param::FinalNorm, &[h], 1.0, 0.1);
    if !c.tie_word_embeddings {
        put(Param::LmHead, &[c.vocab_size, h], 0.0, scale);
    }
    out
}

/// Values around `base`, spread by `scale`: sums of uniforms, cheap, deterministic and close
/// enough to a normal distribution.
fn random_tensor(rng: &mut StdRng, shape: &[usize], base: f32, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let u: f32 = (0..3).map(|_| rng.random::<f32>() - 0.5).sum();
            base + u * 2.0 * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data")
}

/// A GLIDE configuration for `target`: one layer with the target's attention shape and MLP
/// width, reading the target's last layer, its head over `draft_vocab` tokens.
pub fn tiny_glide_config(target: &ModelConfig, draft_vocab: usize) -> GlideConfig {
    GlideConfig {
        num_layers: 1,
        num_heads: target.num_heads,
        num_kv_heads: target.num_kv_heads,
        head_dim: target.head_dim,
        intermediate_size: target.intermediate_size,
        rms_norm_eps: target.rms_norm_eps,
        target_layer: target.num_layers - 1,
        draft_vocab_size: draft_vocab,
        target: GlideTarget::of(target),
        feature: GlideFeature::None,
        feature_rank: 0,
        chain_norm: false,
    }
}

/// The weights of a random GLIDE drafter for `target` (Hugging Face names for its Llama
/// layers, [`cross_tensor_names`] for its cross-attention, `lm_head.weight` of the reduced
/// head's rows; no embedding, the target's is used), seeded by `seed`.
pub fn tiny_glide_weights(
    target: &ModelConfig,
    glide: &GlideConfig,
    seed: u64,
    scale: f32,
) -> HashMap<String, Tensor> {
    // The drafter's layers, with an untied head of its reduced vocabulary's rows.
    let mut base = glide.forward_config(target);
    base.vocab_size = glide.draft_vocab_size;
    base.tie_word_embeddings = false;
    let mut out = tiny_weights(&base, seed, scale);
    out.remove(&Naming::HuggingFace.name(Param::Embed));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x911de);
    let (h, cross) = (target.hidden_size, target.num_heads * target.head_dim);
    for i in 0..glide.num_layers {
        let [norm, q, o] = cross_tensor_names(i);
        out.insert(norm, random_tensor(&mut rng, &[h], 1.0, 0.1));
        out.insert(q, random_tensor(&mut rng, &[cross, h], 0.0, scale));
        out.insert(o, random_tensor(&mut rng, &[h, cross], 0.0, scale));
    }
    if glide.feature != GlideFeature::None {
        let [norm, down, proj] = feature_tensor_names();
        out.insert(norm, random_tensor(&mut rng, &[h], 1.0, 0.1));
        let inner = match glide.feature_rank {
            0 => h,
            rank => {
                out.insert(down, random_tensor(&mut rng, &[rank, h], 0.0, scale));
                rank
            }
        };
        out.insert(proj, random_tensor(&mut rng, &[h, inner], 0.0, scale));
        if glide.chain_norm {
            out.insert(
                CHAIN_NORM_TENSOR.into(),
                random_tensor(&mut rng, &[h], 1.0, 0.1),
            );
        }
    }
    out
}

/// A random GLIDE drafter for `target`, its head over the first `draft_vocab` token ids.
pub fn tiny_glide(target: &Model, draft_vocab: usize, seed: u64, scale: f32) -> Result<GlideModel> {
    let config = tiny_glide_config(target.config(), draft_vocab);
    build_tiny_glide(target, config, seed, scale, true)
}

/// A GLIDE drafter for `target` that guesses the target's next token often but not always:
/// faint random layers of its own and, instead of a head of its own, the target's head rows for
/// the first `draft_vocab` token ids. What the engine and gateway tests serve, so that they see
/// both accepted and rejected GLIDE drafts.
pub fn tiny_guessing_glide(target: &Model, draft_vocab: usize, seed: u64) -> Result<GlideModel> {
    let config = tiny_glide_config(target.config(), draft_vocab);
    build_tiny_glide(target, config, seed, 0.02, false)
}

/// [`tiny_guessing_glide`] that also reads the target's last hidden state (a rank-8
/// projection of it added to each round's first row).
pub fn tiny_guessing_glide_with_feature(
    target: &Model,
    draft_vocab: usize,
    seed: u64,
) -> Result<GlideModel> {
    tiny_guessing_glide_reading(target, draft_vocab, seed, GlideFeature::LastHidden)
}

/// [`tiny_guessing_glide_with_feature`] with the given feature (`LastHiddenChain`: later rows
/// of a round read the drafter's own row before them).
pub fn tiny_guessing_glide_reading(
    target: &Model,
    draft_vocab: usize,
    seed: u64,
    feature: GlideFeature,
) -> Result<GlideModel> {
    let mut config = tiny_glide_config(target.config(), draft_vocab);
    config.feature = feature;
    config.feature_rank = 8;
    build_tiny_glide(target, config, seed, 0.02, false)
}

/// [`tiny_guessing_glide_reading`] chaining its own rows ([`GlideFeature::LastHiddenChain`])
/// with the chained rows' own norm (`chain_norm`).
pub fn tiny_guessing_glide_with_chain_norm(
    target: &Model,
    draft_vocab: usize,
    seed: u64,
) -> Result<GlideModel> {
    let mut config = tiny_glide_config(target.config(), draft_vocab);
    config.feature = GlideFeature::LastHiddenChain;
    config.feature_rank = 8;
    config.chain_norm = true;
    build_tiny_glide(target, config, seed, 0.02, false)
}

/// Writes [`tiny_guessing_glide`] for the tiny target of `spec` as a GLIDE file (the format
/// [`GlideModel::load`] reads): what the binary's end-to-end tests pass as `--glide`.
pub fn write_guessing_glide(
    path: &std::path::Path,
    spec: &TinySpec,
    draft_vocab: usize,
    seed: u64,
) -> Result<()> {
    let target = tiny_config(spec);
    let config = tiny_glide_config(&target, draft_vocab);
    let (vocab, tensors) = tiny_glide_parts(&target, &config, seed, 0.02, false)?;
    super::glide::save_glide(path, &config, &vocab, &tensors)
}

/// A tiny GLIDE drafter's id map (the first `config.draft_vocab_size` ids) and weights
/// (without a head of its own unless `own_head`).
fn tiny_glide_parts(
    target: &ModelConfig,
    config: &GlideConfig,
    seed: u64,
    scale: f32,
    own_head: bool,
) -> Result<(DraftVocab, HashMap<String, Tensor>)> {
    let ids = (0..config.draft_vocab_size as u32).collect();
    let vocab = DraftVocab::new(ids, target.vocab_size)?;
    let mut tensors = tiny_glide_weights(target, config, seed, scale);
    if !own_head {
        tensors.remove(&Naming::HuggingFace.name(Param::LmHead));
    }
    Ok((vocab, tensors))
}

fn build_tiny_glide(
    target: &Model,
    config: GlideConfig,
    seed: u64,
    scale: f32,
    own_head: bool,
) -> Result<GlideModel> {
    let (vocab, tensors) = tiny_glide_parts(target.config(), &config, seed, scale, own_head)?;
    GlideModel::from_weights(
        config,
        &mut Weights::from_tensors(tensors),
        vocab,
        target,
        std::path::Path::new("<tiny glide>"),
    )
}

/// A complete tiny model: weights, tokenizer and ChatML template.
pub fn tiny_model(spec: &TinySpec) -> Result<LoadedModel> {
    tiny_model_on(spec, ModelDevice::Cpu)
}

/// [`tiny_model`] on `device`.
pub fn tiny_model_on(spec: &TinySpec, device: ModelDevice) -> Result<LoadedModel> {
    let config = tiny_config(spec);
    let tensors = tiny_weights(&config, spec.seed, spec.weight_scale);
    let model = Model::load_on(config, &mut Weights::from_tensors(tensors), device)?;
    Ok(LoadedModel {
        model,
        tokenizer: Some(tiny_tokenizer()),
        chat_template: Some(CHATML_TEMPLATE.to_string()),
        path: format!("<tiny seed {}>", spec.seed).into(),
    })
}

/// The weights of [`tiny_draft_model`]: the target's weights of `spec`, each plus uniform noise
/// of up to `noise` times its tensor's spread, drawn from `seed`.
pub fn tiny_draft_weights(
    spec: &TinySpec,
    noise: f32,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let config = tiny_config(spec);
    let mut tensors = tiny_weights(&config, spec.seed, spec.weight_scale);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    for name in names {
        let t = &tensors[&name];
        let shape = t.dims().to_vec();
        let mut data = t.flatten_all()?.to_vec1::<f32>()?;
        let mean = data.iter().sum::<f32>() / data.len() as f32;
        let spread = (data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / data.len() as f32)
            .sqrt()
            .max(1e-3);
        for x in &mut data {
            *x += (rng.random::<f32>() * 2.0 - 1.0) * noise * spread;
        }
        tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    Ok(tensors)
}

/// Writes a Hugging Face style folder (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json with the ChatML template) holding a tiny model of `spec` with
/// `tensors`: what the binary's end-to-end tests load.
pub fn write_folder(
    dir: &std::path::Path,
    spec: &TinySpec,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let cfg = tiny_config(spec);
    let io = |e: std::io::Error| crate::Error::file(dir, e);
    let config = serde_json::json!({
        "model_type": "qwen2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": true,
        "eos_token_id": cfg.eos_token_ids,
    });
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    candle_core::safetensors::save(tensors, dir.join("model.safetensors"))?;
    tiny_tokenizer()
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| crate::Error::Tokenizer(e.to_string()))?;
    let tc = serde_json::json!({ "chat_template": CHATML_TEMPLATE, "eos_token": "<|im_end|>" });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).map_err(io)?;
    Ok(())
}

/// A draft-model proposer for `target` over [`tiny_draft_model`]`(spec, noise, seed)`.
pub fn tiny_drafter(
    spec: &TinySpec,
    noise: f32,
    seed: u64,
    target: &LoadedModel,
) -> Result<crate::speculative::DraftModelProposer> {
    let d = tiny_draft_model_on(spec, noise, seed, target.model.device())?;
    let target_tokenizer = target
        .tokenizer
        .as_ref()
        .ok_or_else(|| crate::Error::Tokenizer("the tiny target has no tokenizer".into()))?;
    crate::speculative::DraftModelProposer::new(
        std::sync::Arc::new(d.model),
        d.tokenizer.as_ref(),
        &d.path,
        &target.model,
        target_tokenizer,
    )
}

/// A drafter for [`tiny_model`]`(spec)`: the same weights, each plus uniform noise of up to
/// `noise` times its own spread, drawn from `seed`. Small noise gives a drafter that agrees with
/// the target often but not always, so speculative tests see both accepted and rejected drafts.
pub fn tiny_draft_model(spec: &TinySpec, noise: f32, seed: u64) -> Result<LoadedModel> {
    tiny_draft_model_on(spec, noise, seed, ModelDevice::Cpu)
}

/// [`tiny_draft_model`] on `device`.
pub fn tiny_draft_model_on(
    spec: &TinySpec,
    noise: f32,
    seed: u64,
    device: ModelDevice,
) -> Result<LoadedModel> {
    let config = tiny_config(spec);
    let tensors = tiny_draft_weights(spec, noise, seed)?;
    let model = Model::load_on(config, &mut Weights::from_tensors(tensors), device)?;
    Ok(LoadedModel {
        model,
        tokenizer: Some(tiny_tokenizer()),
        chat_template: Some(CHATML_TEMPLATE.to_string()),
        path: format!("<tiny draft of seed {}, noise {noise}>", spec.seed).into(),
    })
}
