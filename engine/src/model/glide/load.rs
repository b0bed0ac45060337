//! Loading a drafter: reading a GLIDE file and checking it against its target, and reading its
//! weights in the shapes and precision of the target's device.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::Tensor;

#[cfg(doc)]
use super::save_glide;
use super::{
    cross_tensor_names, feature_tensor_names, CrossWeights, FeatureWeights, GlideDevice, GlideHost,
    GlideModel, CHAIN_NORM_TENSOR, CONFIG_KEY, VOCAB_TENSOR,
};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::cuda::CudaModel;
use crate::model::draft_vocab::DraftVocab;
use crate::model::glide_config::{GlideConfig, GlideFeature};
#[cfg(doc)]
use crate::model::host_weights::HostLayer;
use crate::model::host_weights::{load_layer, HostMatrix};
use crate::model::weights::{Param, Weights};
use crate::model::Model;

impl GlideModel {
    /// Loads a GLIDE file ([`save_glide`]'s format) for `target`, refusing one that is not a
    /// GLIDE file, whose configuration or id map does not parse, or that does not fit the
    /// target, with the file and the problem named.
    pub fn load(path: &Path, target: &Model) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, e))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CONFIG_KEY))
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!("no `{CONFIG_KEY}` in its metadata: not a GLIDE drafter file"),
                )
            })?;
        let config: GlideConfig = serde_json::from_str(json)
            .map_err(|e| Error::file(path, format!("its `{CONFIG_KEY}`: {e}")))?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
        let ids = tensors
            .remove(VOCAB_TENSOR)
            .ok_or_else(|| Error::file(path, format!("no `{VOCAB_TENSOR}` tensor (the id map)")))?;
        let ids: Vec<i64> = ids.to_dtype(candle_core::DType::I64)?.to_vec1()?;
        let target_vocab = target.config().vocab_size;
        let ids = ids
            .into_iter()
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        let vocab = DraftVocab::new(ids, target_vocab).map_err(|e| Error::IncompatibleDraft {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_weights(
            config,
            &mut Weights::from_tensors(tensors),
            vocab,
            target,
            path,
        )
    }

    /// Builds the drafter for `target` on its device from `weights` (Hugging Face names for the
    /// Llama layers, [`cross_tensor_names`] for the cross-attention, and `lm_head.weight` of
    /// `vocab.len()` rows; without it the head is the target's own rows for the drafter's
    /// tokens), refusing a drafter that does not fit the target (named with `path`). For a
    /// quantized target the drafter's dense matrices are quantized to Q8_0; for a dense one
    /// they stay as stored (bf16 on a GPU).
    pub fn from_weights(
        config: GlideConfig,
        weights: &mut Weights,
        vocab: DraftVocab,
        target: &Model,
        path: &Path,
    ) -> Result<Self> {
        let t = target.config();
        config.check_target(t, path)?;
        let incompatible = |message: String| Error::IncompatibleDraft {
            path: path.to_path_buf(),
            message,
        };
        if vocab.len() != config.draft_vocab_size || vocab.target_len() != t.vocab_size {
            return Err(incompatible(format!(
                "its id map has {} of {} tokens; its configuration says {} of {}",
                vocab.len(),
                vocab.target_len(),
                config.draft_vocab_size,
                t.vocab_size
            )));
        }
        let mut base = config.forward_config(t);
        let host = read_host(&config, &mut base, weights, &vocab, target)?;
        let weights = match target.cuda_model() {
            None => GlideDevice::Cpu(Arc::new(host.into_cpu(target, vocab.ids())?)),
            Some(m) => GlideDevice::Cuda(Arc::new(CudaModel::load_glide(
                m,
                &base,
                host,
                vocab.ids(),
                config.target_layer,
            )?)),
        };
        Ok(Self {
            inv_freq: base.rope_inv_freq(),
            target_inv_freq: t.rope_inv_freq(),
            target: t.clone(),
            config,
            base,
            weights,
            vocab,
        })
    }
}

/// Reads a GLIDE drafter's weights of `base`'s shapes (layers, cross-attention, final norm,
/// and its own head if the file has one), quantized to Q8_0 for a quantized `target`: a
/// quantized target is served at its quantization's precision, and the drafter's dense
/// matrices follow it, which cuts the bytes a drafted token reads by four. For a GPU target
/// the layers are padded to the CUDA kernels' shapes ([`HostLayer::padded_for_gpu`]: the same
/// function) and `base` says the padded shapes.
fn read_host(
    config: &GlideConfig,
    base: &mut ModelConfig,
    weights: &mut Weights,
    vocab: &DraftVocab,
    target: &Model,
) -> Result<GlideHost> {
    let t = target.config();
    let h = base.hidden_size;
    let cross_dim = t.num_heads * t.head_dim;
    let quantize = target.head_is_quantized();
    // Dense weights stay in the file's precision for a GPU (bf16 there).
    let keep_dtype = target.device().is_cuda();
    let prepare = |m: HostMatrix| if quantize { m.quantized_q8() } else { Ok(m) };
    let single = |m| HostMatrix {
        parts: vec![m],
        bias: None,
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    let mut cross = Vec::with_capacity(config.num_layers);
    let file_shapes = base.clone();
    for i in 0..config.num_layers {
        let mut layer = load_layer(&file_shapes, weights, i, keep_dtype)?;
        if keep_dtype {
            let mut padded = file_shapes.clone();
            layer = layer.padded_for_gpu(&mut padded)?;
            *base = padded;
        }
        layers.push(if quantize {
            layer.quantized_q8()?
        } else {
            layer
        });
        let [norm, q, o] = cross_tensor_names(i);
        cross.push(CrossWeights {
            norm: weights.tensor_named(&norm, &[h])?.to_vec1()?,
            q: prepare(single(weights.matrix_named(&q, cross_dim, h)?))?,
            o: prepare(single(weights.matrix_named(&o, h, cross_dim)?))?,
        });
    }
    let head = if weights.contains(Param::LmHead) {
        let m = weights.matrix_as(Param::LmHead, vocab.len(), h, keep_dtype)?;
        Some(prepare(single(m))?)
    } else {
        None
    };
    let feature = match config.feature {
        GlideFeature::None => None,
        GlideFeature::LastHidden | GlideFeature::LastHiddenChain => {
            let [norm, down, proj] = feature_tensor_names();
            let rank = config.feature_rank;
            let mut down = match rank {
                0 => None,
                _ => Some(single(weights.matrix_named(&down, rank, h)?)),
            };
            let inner = if rank == 0 { h } else { rank };
            let mut proj = single(weights.matrix_named(&proj, h, inner)?);
            // On a GPU the two products are one: `proj · down` ([h, h]) is stored instead, so
            // the feature takes one product and no conversion between them.
            if let Some(d) = down.take_if(|_| keep_dtype) {
                proj = single(QMatMul::Tensor(composed(&proj, &d)?));
            }
            let chain_norm = match config.chain_norm {
                true => Some(weights.tensor_named(CHAIN_NORM_TENSOR, &[h])?.to_vec1()?),
                false => None,
            };
            Some(FeatureWeights {
                norm: weights.tensor_named(&norm, &[h])?.to_vec1()?,
                chain_norm,
                down: down.map(prepare).transpose()?,
                proj: prepare(proj)?,
            })
        }
    };
    Ok(GlideHost {
        layers,
        cross,
        norm: weights.tensor(Param::FinalNorm, &[h])?.to_vec1()?,
        head,
        feature,
    })
}

/// The dense product `outer · inner` of two single-part matrices (dequantized), as f32.
fn composed(outer: &HostMatrix, inner: &HostMatrix) -> Result<Tensor> {
    let dense = |m: &HostMatrix| match &m.parts[..] {
        [QMatMul::Tensor(t) | QMatMul::TensorF16(t)] => Ok(t.to_dtype(candle_core::DType::F32)?),
        [QMatMul::QTensor(q)] => Ok(q.dequantize(&candle_core::Device::Cpu)?),
        _ => Err(Error::Device(
            "a GLIDE feature's matrices must be single parts to be composed".into(),
        )),
    };
    Ok(dense(outer)?.matmul(&dense(inner)?)?)
}
