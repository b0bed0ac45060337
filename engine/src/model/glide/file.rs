//! The GLIDE file format: one safetensors file with the configuration in its metadata, the id
//! map and the weights under their tensor names; writing one, and rewriting one quantized.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

#[cfg(doc)]
use super::GlideModel;
use crate::error::{Error, Result};
use crate::model::draft_vocab::DraftVocab;
use crate::model::glide_config::GlideConfig;
#[cfg(doc)]
use crate::model::glide_config::GlideFeature;
use crate::model::weights::q8_0_bytes;

/// The safetensors metadata key holding a GLIDE file's [`GlideConfig`] (JSON).
pub const CONFIG_KEY: &str = "glide_config";
/// The tensor holding a GLIDE file's id map: the target id of each head row (i64 or u32).
pub const VOCAB_TENSOR: &str = "draft_vocab.ids";

/// Writes a GLIDE file: one safetensors file with `config` in its metadata, `vocab`'s id map,
/// and the weights `tensors` (the names [`GlideModel::from_weights`] reads).
pub fn save_glide(
    path: &Path,
    config: &GlideConfig,
    vocab: &DraftVocab,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let ids: Vec<i64> = vocab.ids().iter().map(|&i| i64::from(i)).collect();
    let ids = Tensor::from_vec(ids, vocab.len(), &candle_core::Device::Cpu)?;
    let mut all: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    all.push((VOCAB_TENSOR, &ids));
    let json = serde_json::to_string(config).expect("a config serializes");
    let metadata = HashMap::from([(CONFIG_KEY.to_string(), json)]);
    safetensors::serialize_to_file(all, Some(metadata), path).map_err(|e| Error::file(path, e))
}

/// Rewrites the GLIDE file `input` as `output` with every matrix in GGUF's Q8_0 blocks (a u8
/// tensor of `[rows, cols / 32 · 34]` bytes, which [`GlideModel::load`] reads back quantized;
/// about 8.5 bits a weight against bf16's 16), the id map, norms and metadata as they are.
/// For a quantized target specd serves a drafter's matrices in Q8_0 anyway, quantized at load
/// by the same function, so the rewritten file drafts bit for bit as the original there.
/// Returns the number of matrices quantized (none for a file already so).
pub fn quantize_glide(input: &Path, output: &Path) -> Result<usize> {
    let bytes = std::fs::read(input).map_err(|e| Error::file(input, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(input, e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    if !metadata.contains_key(CONFIG_KEY) {
        return Err(Error::file(
            input,
            format!("no `{CONFIG_KEY}` in its metadata: not a GLIDE drafter file"),
        ));
    }
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
    let mut quantized = 0;
    for (name, t) in tensors.iter_mut() {
        if name != VOCAB_TENSOR {
            if let Some(q) = q8_0_bytes(t)? {
                *t = q;
                quantized += 1;
            }
        }
    }
    let all: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize_to_file(all, Some(metadata), output)
        .map_err(|e| Error::file(output, e))?;
    Ok(quantized)
}

/// Tensor names of a GLIDE file beyond the Llama ones (Hugging Face naming).
pub fn cross_tensor_names(layer: usize) -> [String; 3] {
    [
        format!("model.layers.{layer}.cross_attn_layernorm.weight"),
        format!("model.layers.{layer}.cross_attn.q_proj.weight"),
        format!("model.layers.{layer}.cross_attn.o_proj.weight"),
    ]
}

/// Tensor names of a GLIDE file's feature ([`GlideFeature::LastHidden`]): its norm, its
/// down-projection (low rank only) and its projection.
pub fn feature_tensor_names() -> [String; 3] {
    [
        "model.feature_norm.weight".into(),
        "model.feature_down.weight".into(),
        "model.feature_proj.weight".into(),
    ]
}

/// The tensor of the chained rows' own norm weights (`chain_norm` in a GLIDE file's
/// configuration).
pub const CHAIN_NORM_TENSOR: &str = "model.chain_norm.weight";
