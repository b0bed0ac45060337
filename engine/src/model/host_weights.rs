//! A Llama-family model's weights as read from the file, before they go to a device: matrices
//! in candle's form (GGUF blocks or dense tensors, stacked parts and biases), norms as f32.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::Tensor;

use super::config::ModelConfig;
use super::cpu_forward::{CpuWeights, Projection};
use super::device::Device;
use super::llama::{LayerWeights, LlamaWeights};
use super::weights::{Param, Weights};
use crate::error::{Error, Result};

/// The weights as read from the file, before they go to a device: matrices in candle's form
/// (GGUF blocks or dense tensors), norms and biases as f32.
pub(crate) type HostWeights = LlamaWeights<HostMatrix, Vec<f32>>;

/// A weight matrix read from the file: its parts (stacked into one when their storage allows)
/// and its bias.
#[derive(Debug, Clone)]
pub(crate) struct HostMatrix {
    pub parts: Vec<candle_core::quantized::QMatMul>,
    pub bias: Option<Vec<f32>>,
}

impl HostMatrix {
    pub(crate) fn into_cpu(self) -> Result<Projection> {
        Projection::new(self.parts, self.bias)
    }

    /// The matrix with its dense parts quantized to Q8_0 (parts already quantized, and parts
    /// whose rows are not whole Q8_0 blocks, stay as they are).
    pub(crate) fn quantized_q8(self) -> Result<Self> {
        let parts = self
            .parts
            .into_iter()
            .map(|m| match m {
                QMatMul::Tensor(t) | QMatMul::TensorF16(t)
                    if t.dims()
                        .last()
                        .is_some_and(|&c| c % GgmlDType::Q8_0.block_size() == 0) =>
                {
                    let t = t.to_dtype(candle_core::DType::F32)?;
                    Ok(QMatMul::from_qtensor(QTensor::quantize(
                        &t,
                        GgmlDType::Q8_0,
                    )?)?)
                }
                other => Ok(other),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            parts,
            bias: self.bias,
        })
    }
}

/// One decoder layer's weights as read from the file.
pub(crate) type HostLayer = LayerWeights<HostMatrix, Vec<f32>>;

impl HostLayer {
    /// [`HostMatrix::quantized_q8`] for each of the layer's matrices.
    pub(crate) fn quantized_q8(self) -> Result<Self> {
        Ok(LayerWeights {
            attn_norm: self.attn_norm,
            qkv: self.qkv.quantized_q8()?,
            o: self.o.quantized_q8()?,
            ffn_norm: self.ffn_norm,
            gate_up: self.gate_up.quantized_q8()?,
            down: self.down.quantized_q8()?,
        })
    }

    pub(crate) fn into_cpu(self) -> Result<LayerWeights<Projection, Vec<f32>>> {
        Ok(LayerWeights {
            attn_norm: self.attn_norm,
            qkv: self.qkv.into_cpu()?,
            o: self.o.into_cpu()?,
            ffn_norm: self.ffn_norm,
            gate_up: self.gate_up.into_cpu()?,
            down: self.down.into_cpu()?,
        })
    }
}

impl HostWeights {
    pub(crate) fn into_cpu(self) -> Result<CpuWeights> {
        Ok(LlamaWeights {
            embed: self.embed.into_cpu()?,
            layers: self
                .layers
                .into_iter()
                .map(HostLayer::into_cpu)
                .collect::<Result<_>>()?,
            norm: self.norm,
            head: self.head.into_cpu()?,
        })
    }
}

/// Reads every weight of `config`'s model. Dense weights stay in their file's precision when
/// they go to a GPU (bf16 there) and become f32 for the CPU. Also says whether the head is the
/// embedding table itself (tied), so that a GPU holds it once.
pub(crate) fn load_host(
    config: &ModelConfig,
    weights: &mut Weights,
    device: Device,
) -> Result<(HostWeights, bool)> {
    let c = config;
    let h = c.hidden_size;
    let keep_dtype = device.is_cuda();
    let mat = |w: &mut Weights, p: Param, rows: usize, cols: usize| {
        w.matrix_as(p, rows, cols, keep_dtype)
    };
    let single = |m| HostMatrix {
        parts: vec![m],
        bias: None,
    };
    let embed = single(mat(weights, Param::Embed, c.vocab_size, h)?);
    let layers = (0..c.num_layers)
        .map(|i| load_layer(c, weights, i, keep_dtype))
        .collect::<Result<Vec<_>>>()?;
    let norm = weights.tensor(Param::FinalNorm, &[h])?.to_vec1()?;
    let tied = !weights.contains(Param::LmHead);
    let head = if !tied {
        single(mat(weights, Param::LmHead, c.vocab_size, h)?)
    } else if c.tie_word_embeddings || weights.naming() == super::weights::Naming::Gguf {
        embed.clone()
    } else {
        return Err(Error::MissingTensor {
            path: weights.origin().to_path_buf(),
            name: weights.naming().name(Param::LmHead),
        });
    };
    let host = LlamaWeights {
        embed,
        layers,
        norm,
        head,
    };
    Ok((host, tied))
}

/// Decoder layer `i` of a model of `config`'s shapes (`keep_dtype`: dense weights stay in the
/// file's precision, for a GPU).
pub(crate) fn load_layer(
    config: &ModelConfig,
    weights: &mut Weights,
    i: usize,
    keep_dtype: bool,
) -> Result<HostLayer> {
    let c = config;
    let (h, kv, hd) = (c.hidden_size, c.num_kv_heads * c.head_dim, c.head_dim);
    let q_dim = c.num_heads * hd;
    let mat = |w: &mut Weights, p: Param, rows: usize, cols: usize| {
        w.matrix_as(p, rows, cols, keep_dtype)
    };
    let single = |m| HostMatrix {
        parts: vec![m],
        bias: None,
    };
    let bias = if c.qkv_bias {
        let q = weights.tensor(Param::QBias(i), &[q_dim])?;
        let k = weights.tensor(Param::KBias(i), &[kv])?;
        let v = weights.tensor(Param::VBias(i), &[kv])?;
        Some(Tensor::cat(&[q, k, v], 0)?.to_vec1::<f32>()?)
    } else {
        None
    };
    let qkv = HostMatrix {
        parts: vec![
            mat(weights, Param::Q(i), q_dim, h)?,
            mat(weights, Param::K(i), kv, h)?,
            mat(weights, Param::V(i), kv, h)?,
        ],
        bias,
    };
    let gate_up = HostMatrix {
        parts: vec![
            mat(weights, Param::Gate(i), c.intermediate_size, h)?,
            mat(weights, Param::Up(i), c.intermediate_size, h)?,
        ],
        bias: None,
    };
    Ok(LayerWeights {
        attn_norm: weights.tensor(Param::AttnNorm(i), &[h])?.to_vec1()?,
        qkv,
        o: single(mat(weights, Param::O(i), h, q_dim)?),
        ffn_norm: weights.tensor(Param::FfnNorm(i), &[h])?.to_vec1()?,
        gate_up,
        down: single(mat(weights, Param::Down(i), h, c.intermediate_size)?),
    })
}
