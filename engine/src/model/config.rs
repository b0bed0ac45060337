//! One `ModelConfig` for every model specd runs, read from a Hugging Face `config.json` or from
//! GGUF metadata.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// The model families of the Llama lineage that share one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    /// Parses a Hugging Face `model_type` or a GGUF `general.architecture`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Dimension i rotates with i + d/2 (Hugging Face checkpoints, GGUF qwen2).
    HalfSplit,
    /// Dimension 2i rotates with 2i + 1 (GGUF llama, whose Q/K rows are permuted at conversion).
    Interleaved,
}

/// Rotary frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors stored in the GGUF (`rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

/// Everything the forward needs to know about a model's shape.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub rope_layout: RopeLayout,
    /// Maximum context length in tokens.
    pub max_position_embeddings: usize,
    /// Each token attends only to the last `sliding_window` positions (itself included).
    pub sliding_window: Option<usize>,
    pub qkv_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Checks the invariants the forward relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |m: String| Err(Error::config(path, m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return fail(format!("`{name}` must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return fail(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return fail(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return fail(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json` (plus `generation_config.json` beside it, for EOS ids).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let json: Json = serde_json::from_str(&text).map_err(|e| Error::file(path, e))?;
        let mut cfg = Self::from_hf_json(&json, path)?;
        let gen = path.with_file_name("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen) {
            let json: Json = serde_json::from_str(&text).map_err(|e| Error::file(&gen, e))?;
            for id in token_ids(json.get("eos_token_id")) {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Builds the configuration from the parsed JSON of a `config.json`.
    pub fn from_hf_json(json: &Json, path: &Path) -> Result<Self> {
        let model_type = json
            .get("model_type")
            .and_then(Json::as_str)
            .ok_or_else(|| Error::config(path, "missing string field `model_type`"))?;
        let architecture =
            Architecture::parse(model_type).ok_or_else(|| Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture: model_type.to_string(),
            })?;
        let usize_field = |name: &str| -> Result<usize> {
            json.get(name)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::config(path, format!("missing integer field `{name}`")))
        };
        let hidden_size = usize_field("hidden_size")?;
        let num_heads = usize_field("num_attention_heads")?;
        let num_kv_heads = json
            .get("num_key_value_heads")
            .and_then(Json::as_u64)
            .map_or(num_heads, |v| v as usize);
        let head_dim = match json.get("head_dim") {
            Some(v) if !v.is_null() => v
                .as_u64()
                .ok_or_else(|| Error::config(path, "`head_dim` is not an integer"))?
                as usize,
            _ if num_heads > 0 => hidden_size / num_heads,
            _ => 0,
        };
        let (rope_theta, rope_scaling) = hf_rope(json, path)?;
        let sliding_window = hf_sliding_window(json, architecture);
        let qkv_bias = match architecture {
            Architecture::Qwen2 => true,
            _ => json
                .get("attention_bias")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        };
        Ok(Self {
            architecture,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_layers: usize_field("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: json
                .get("rms_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_layout: RopeLayout::HalfSplit,
            max_position_embeddings: json
                .get("max_position_embeddings")
                .and_then(Json::as_u64)
                .map_or(4096, |v| v as usize),
            sliding_window,
            qkv_bias,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            bos_token_id: token_ids(json.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(json.get("eos_token_id")),
        })
    }

    /// Builds the configuration from GGUF metadata. `tensor_names` tells optional parts apart
    /// (QKV bias, untied head); `eos_token_ids` comes from the tokenizer metadata.
    pub fn from_gguf(
        content: &gguf_file::Content,
        path: &Path,
        eos_token_ids: Vec<u32>,
    ) -> Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::config(path, "missing GGUF key `general.architecture`"))?;
        let architecture = match Architecture::parse(arch_name) {
            Some(a @ (Architecture::Llama | Architecture::Qwen2)) => a,
            _ => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: arch_name.clone(),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_usize = |k: &str| -> Result<usize> {
            let full = key(k);
            md.get(&full)
                .ok_or_else(|| Error::config(path, format!("missing GGUF key `{full}`")))
                .and_then(|v| {
                    gguf_usize(v).ok_or_else(|| {
                        Error::config(path, format!("GGUF key `{full}` is not an integer"))
                    })
                })
        };
        let get_f64 = |k: &str| md.get(&key(k)).and_then(gguf_f64);
        let hidden_size = get_usize("embedding_length")?;
        let num_heads = get_usize("attention.head_count")?;
        let num_kv_heads = get_usize("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = match get_usize("attention.key_length") {
            Ok(v) => v,
            Err(_) if num_heads > 0 => hidden_size / num_heads,
            Err(e) => return Err(e),
        };
        let vocab_size = match md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
        {
            Some(tokens) => tokens.len(),
            None => content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| Error::MissingTensor {
                    path: path.to_path_buf(),
                    name: "token_embd.weight".into(),
                })?,
        };
        let rope_scaling = match md
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
        {
            Some("linear") => RopeScaling::Linear {
                factor: get_f64("rope.scaling.factor").unwrap_or(1.0),
            },
            None | Some("none") => RopeScaling::None,
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!("unsupported rope scaling type `{other}`"),
                ))
            }
        };
        Ok(Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: get_usize("feed_forward_length")?,
            num_layers: get_usize("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: get_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: get_f64("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            rope_layout: match architecture {
                Architecture::Qwen2 => RopeLayout::HalfSplit,
                _ => RopeLayout::Interleaved,
            },
            max_position_embeddings: get_usize("context_length").unwrap_or(4096),
            sliding_window: None,
            qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            bos_token_id: md
                .get("tokenizer.ggml.bos_token_id")
                .and_then(gguf_usize)
                .map(|v| v as u32),
            eos_token_ids,
        })
    }

    /// Inverse frequencies of the rotary embedding, one per pair of dimensions.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::FreqFactors(factors) => base
                .iter()
                .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, d)| f / *d as f64)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_ctx = *original_max_position_embeddings as f64;
                let low_wavelen = old_ctx / low_freq_factor;
                let high_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// RoPE's base and scaling from a Hugging Face config: transformers 5 keeps them in
/// `rope_parameters`, older configs in `rope_theta` and `rope_scaling` at the top level.
fn hf_rope(json: &Json, path: &Path) -> Result<(f64, RopeScaling)> {
    let rope_params = json.get("rope_parameters").filter(|v| v.is_object());
    let rope_theta = rope_params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| json.get("rope_theta"))
        .and_then(Json::as_f64)
        .unwrap_or(10_000.0);
    let scaling = rope_params.or_else(|| json.get("rope_scaling").filter(|v| v.is_object()));
    let rope_scaling = match scaling {
        Some(s) => parse_hf_rope_scaling(s, path)?,
        None => RopeScaling::None,
    };
    Ok((rope_theta, rope_scaling))
}

/// The attention window of a Hugging Face config: Mistral's `sliding_window`, Qwen2's only when
/// `use_sliding_window` is set; Llama has none.
fn hf_sliding_window(json: &Json, architecture: Architecture) -> Option<usize> {
    let window = || json.get("sliding_window").and_then(Json::as_u64);
    match architecture {
        Architecture::Mistral => window(),
        Architecture::Qwen2 => json
            .get("use_sliding_window")
            .and_then(Json::as_bool)
            .unwrap_or(false)
            .then(window)
            .flatten(),
        Architecture::Llama => None,
    }
    .map(|v| v as usize)
}

fn parse_hf_rope_scaling(s: &Json, path: &Path) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let f = |name: &str| -> Result<f64> {
        s.get(name)
            .and_then(Json::as_f64)
            .ok_or_else(|| Error::config(path, format!("rope scaling needs number `{name}`")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
        },
        other => {
            return Err(Error::config(
                path,
                format!("unsupported rope scaling type `{other}`"),
            ))
        }
    })
}

/// Token ids from a JSON value that is an integer, a list of integers or absent.
fn token_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// An integer GGUF value of any width.
pub(crate) fn gguf_usize(v: &gguf_file::Value) -> Option<usize> {
    use gguf_file::Value as V;
    match *v {
        V::U8(x) => Some(x as usize),
        V::I8(x) => usize::try_from(x).ok(),
        V::U16(x) => Some(x as usize),
        V::I16(x) => usize::try_from(x).ok(),
        V::U32(x) => Some(x as usize),
        V::I32(x) => usize::try_from(x).ok(),
        V::U64(x) => usize::try_from(x).ok(),
        V::I64(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

fn gguf_f64(v: &gguf_file::Value) -> Option<f64> {
    use gguf_file::Value as V;
    match *v {
        V::F32(x) => Some(x as f64),
        V::F64(x) => Some(x),
        _ => gguf_usize(v).map(|x| x as f64),
    }
}
