//! Models: configuration, weights, tokenizer and the Llama-family forward.

pub mod config;
mod cpu_forward;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_disabled.rs"]
pub(crate) mod cuda;
pub mod device;
pub mod draft_vocab;
pub mod glide;
pub mod glide_config;
mod host_weights;
pub mod linear;
pub mod llama;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

pub use config::{Architecture, ModelConfig, RopeLayout, RopeScaling};
pub use device::{Device, GpuStats};
pub use draft_vocab::DraftVocab;
pub use glide::{DraftRows, FeatureRow, FeatureSource, GlideModel, TargetKv};
pub use glide_config::{GlideConfig, GlideFeature, GlideTarget};
pub use linear::SMALL_BATCH_ROWS;
pub use llama::{HiddenRows, Logits, Model, SampleInput, SeqInput, Top};
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::{q8_0_bytes, Naming, Param, WeightStorage, Weights};

use crate::error::{Error, Result};
use crate::kv::KvDtype;

/// A model ready to run, with what generation needs beside the weights.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub model: Model,
    /// Absent only for a Hugging Face folder without tokenizer.json.
    pub tokenizer: Option<Tokenizer>,
    /// The model's own Jinja chat template, if it ships one.
    pub chat_template: Option<String>,
    /// Where the model was loaded from.
    pub path: PathBuf,
}

/// Options for [`load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A tokenizer.json to use instead of the model's own tokenizer.
    pub tokenizer: Option<PathBuf>,
    /// Where the model runs.
    pub device: Device,
    /// The element type of its KV cache (`None`: f32 on the CPU, bf16 on a GPU).
    pub kv_dtype: Option<KvDtype>,
    /// Whether a quantized file's matrices stay quantized or are dequantized at load.
    pub weights: WeightStorage,
}

/// Loads a model from a GGUF file or a Hugging Face folder (config.json, *.safetensors,
/// tokenizer.json); `path` may also name the folder's config.json.
pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, e))?;
    let device = options.device;
    let mut loaded = if meta.is_dir() {
        load_hf_dir(path, device, options.weights)?
    } else if path.file_name().is_some_and(|n| n == "config.json") {
        load_hf_dir(
            path.parent().unwrap_or(Path::new(".")),
            device,
            options.weights,
        )?
    } else {
        load_gguf(path, device, options.weights)?
    };
    if let Some(dtype) = options.kv_dtype {
        loaded.model = loaded.model.with_kv_dtype(dtype)?;
    }
    if let Some(tok) = &options.tokenizer {
        let mut t = Tokenizer::from_file(tok)?;
        t.add_eos_token_ids(&loaded.model.config().eos_token_ids);
        loaded.tokenizer = Some(t);
    }
    Ok(loaded)
}

/// `storage` changes nothing in a dense folder; the model records it, so that a quantized draft
/// model follows its target.
fn load_hf_dir(dir: &Path, device: Device, storage: WeightStorage) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let config = ModelConfig::from_hf_config(&config_path)?;
    let shards = safetensors_files(dir)?;
    let mut weights = Weights::from_safetensors(&shards, dir)?.with_storage(storage);
    let model = Model::load_on(config, &mut weights, device)?;

    let tok_path = dir.join("tokenizer.json");
    let mut tokenizer = if tok_path.exists() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    let mut chat_template = None;
    let tc_path = dir.join("tokenizer_config.json");
    if tc_path.exists() {
        let text = std::fs::read_to_string(&tc_path).map_err(|e| Error::file(&tc_path, e))?;
        let tc: Json = serde_json::from_str(&text).map_err(|e| Error::file(&tc_path, e))?;
        chat_template = template_from_tokenizer_config(&tc);
        if let Some(t) = tokenizer.as_mut() {
            t.set_special_texts(
                token_text(tc.get("bos_token")),
                token_text(tc.get("eos_token")),
            );
        }
    }
    if chat_template.is_none() {
        // Newer checkpoints keep the template in its own file.
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::file(&jinja, e))?);
        }
    }
    if let Some(t) = tokenizer.as_mut() {
        t.add_eos_token_ids(&model.config().eos_token_ids);
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: dir.to_path_buf(),
    })
}

/// The safetensors files of a folder: the shards its index names, or its single file.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::file(&index, e))?;
        let json: Json = serde_json::from_str(&text).map_err(|e| Error::file(&index, e))?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| Error::file(&index, "missing object `weight_map`"))?;
        let mut files: Vec<String> = map
            .values()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::file(&index, "`weight_map` values must be file names"))
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(Error::file(
                missing,
                "shard named in model.safetensors.index.json is missing",
            ));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::file(
            dir,
            "no *.safetensors weights in the model folder",
        ));
    }
    Ok(found)
}

fn template_from_tokenizer_config(tc: &Json) -> Option<String> {
    match tc.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        // A list of named templates: take the default one.
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

fn load_gguf(path: &Path, device: Device, storage: WeightStorage) -> Result<LoadedModel> {
    let mut file = File::open(path).map_err(|e| Error::file(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        Error::file(
            path,
            format!("not a valid GGUF file: {}", weights::root_cause(&e)),
        )
    })?;
    let tokenizer = if content.metadata.contains_key("tokenizer.ggml.model") {
        Some(Tokenizer::from_gguf(&content, path)?)
    } else {
        None
    };
    let eos = tokenizer
        .as_ref()
        .map(|t| t.eos_token_ids().to_vec())
        .unwrap_or_default();
    let chat_template = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let mut config = ModelConfig::from_gguf(&content, path, eos)?;
    config.validate(path)?;
    let has_rope_freqs = content.tensor_infos.contains_key("rope_freqs.weight");
    let mut weights = Weights::from_gguf(content, file, path).with_storage(storage);
    if has_rope_freqs {
        let factors = weights.tensor_named("rope_freqs.weight", &[config.head_dim / 2])?;
        config.rope_scaling = RopeScaling::FreqFactors(factors.to_vec1::<f32>()?);
    }
    let model = Model::load_on(config, &mut weights, device)?;
    model.warm_up()?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: path.to_path_buf(),
    })
}

/// File name of the default target model in the models folder (scripts/fetch-models).
pub const DEFAULT_TARGET_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
/// File name of the default draft model in the models folder (scripts/fetch-models).
pub const DEFAULT_DRAFT_FILE: &str = "qwen2.5-coder-0.5b-instruct.gguf";
/// File name of the default GLIDE drafter (made for the default target): looked for in the
/// models folder, then in the repository's `models/glide/`.
pub const DEFAULT_GLIDE_FILE: &str = "glide-qwen2.5-coder-1.5b-instruct.safetensors";

/// The folder scripts/fetch-models fills: `$SPECD_HOME/models`, by default
/// `~/.cache/specd/models`.
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("SPECD_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/specd")))
        .unwrap_or_else(|| PathBuf::from(".specd"));
    home.join("models")
}

/// The path of a fetched default model, or an error saying how to fetch it.
pub fn default_model(file: &str) -> Result<PathBuf> {
    let path = models_dir().join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::file(
            &path,
            "the default model is missing: run `scripts/fetch-models` to download it (or pass --model PATH)",
        ))
    }
}
