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

    /// The layer with its dense matrices padded with zeros to the CUDA kernels' multiples of 32
    /// input columns, and `config` updated to match: the MLP widened with zero gate and up rows
    /// and zero down columns (silu(0) · 0 adds nothing), the query heads of each key/value group
    /// widened with zero query rows and zero output-projection columns (a zero head's output is
    /// multiplied by zeros). The result is exactly the same function. Only for a small drafter
    /// of free shapes (a GLIDE drafter); a layer already of such shapes comes back unchanged.
    pub(crate) fn padded_for_gpu(self, config: &mut ModelConfig) -> Result<Self> {
        const COLS: usize = 32;
        let c = config.clone();
        let mut layer = self;
        if !c.intermediate_size.is_multiple_of(COLS) {
            let inter = c.intermediate_size.next_multiple_of(COLS);
            let rows: Vec<usize> = (0..c.intermediate_size).collect();
            for part in &mut layer.gate_up.parts {
                *part = QMatMul::Tensor(place(dense(part)?, 0, &rows, inter)?);
            }
            let down = dense(&layer.down.parts[0])?;
            layer.down.parts[0] = QMatMul::Tensor(place(down, 1, &rows, inter)?);
            config.intermediate_size = inter;
        }
        let (hd, n_kv) = (c.head_dim, c.num_kv_heads);
        if !(c.num_heads * hd).is_multiple_of(COLS) {
            let group = c.num_heads / n_kv;
            let wide = (group..)
                .find(|g| (n_kv * g * hd).is_multiple_of(COLS))
                .expect("32 heads per group always fit");
            // Head j of group k moves to k · wide + j; each head is hd rows of Q, hd columns of O.
            let slots: Vec<usize> = (0..c.num_heads)
                .flat_map(|h| {
                    let at = (h / group * wide + h % group) * hd;
                    at..at + hd
                })
                .collect();
            let q_dim = n_kv * wide * hd;
            if let Some(bias) = &mut layer.qkv.bias {
                let mut wide_bias = vec![0f32; q_dim];
                for (&at, &b) in slots.iter().zip(&bias[..c.num_heads * hd]) {
                    wide_bias[at] = b;
                }
                wide_bias.extend_from_slice(&bias[c.num_heads * hd..]);
                *bias = wide_bias;
            }
            let q = dense(&layer.qkv.parts[0])?;
            layer.qkv.parts[0] = QMatMul::Tensor(place(q, 0, &slots, q_dim)?);
            let o = dense(&layer.o.parts[0])?;
            layer.o.parts[0] = QMatMul::Tensor(place(o, 1, &slots, q_dim)?);
            config.num_heads = n_kv * wide;
        }
        Ok(layer)
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

    /// Every layer of a model (a target's or a drafter's) on the CPU.
    pub(crate) fn all_into_cpu(
        layers: Vec<Self>,
    ) -> Result<Vec<LayerWeights<Projection, Vec<f32>>>> {
        layers.into_iter().map(Self::into_cpu).collect()
    }
}

impl HostWeights {
    pub(crate) fn into_cpu(self) -> Result<CpuWeights> {
        Ok(LlamaWeights {
            embed: self.embed.into_cpu()?,
            layers: HostLayer::all_into_cpu(self.layers)?,
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

/// The dense tensor of a matrix part (padding applies to dense weights only).
fn dense(m: &QMatMul) -> Result<Tensor> {
    match m {
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.clone()),
        QMatMul::QTensor(_) => Err(Error::Device(
            "a quantized drafter matrix cannot be padded to the CUDA kernels' shapes".into(),
        )),
    }
}

/// `t` widened along `dim` to `len`, its slices `0..` placed at indices `at` (one each, in
/// order), zeros elsewhere.
fn place(t: Tensor, dim: usize, at: &[usize], len: usize) -> Result<Tensor> {
    let mut shape = t.dims().to_vec();
    shape[dim] = len;
    let zeros = Tensor::zeros(shape, t.dtype(), t.device())?;
    let index = Tensor::from_vec(
        at.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        at.len(),
        t.device(),
    )?;
    Ok(zeros.index_add(&index, &t, dim)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{BlockTable, KvPool};
    use crate::model::cpu_forward;
    use crate::model::llama::{ForwardOut, Logits, OutputMode, SeqInput, Wanted};
    use crate::model::tiny::{tiny_config, tiny_weights, TinySpec};

    fn logits(config: &ModelConfig, w: &CpuWeights, tokens: &[u32]) -> Vec<Vec<f32>> {
        let mut kv = KvPool::for_model(config, 8, crate::kv::KvDtype::F32);
        let mut table = BlockTable::new();
        kv.reserve(&mut table, tokens.len()).unwrap();
        let mut batch = [SeqInput {
            table: &mut table,
            tokens,
            logits: Logits::All,
        }];
        let inv_freq = config.rope_inv_freq();
        let out = cpu_forward::forward(
            config,
            &inv_freq,
            w,
            &mut kv,
            &mut batch,
            Wanted {
                mode: OutputMode::Logits,
                sample: &[],
                keep_hidden: false,
            },
        )
        .unwrap();
        match out.0 {
            ForwardOut::Logits(l) => l[0].to_vec2().unwrap(),
            _ => unreachable!(),
        }
    }

    /// Heads of 8 dimensions, 6 query heads over 2 key/value heads (48 columns), an MLP of 48:
    /// padded to 64 and 64, the forward gives the same logits (up to summation order).
    #[test]
    fn padding_to_the_gpu_shapes_keeps_the_function() {
        let spec = TinySpec {
            seed: 3,
            weight_scale: 0.3,
            ..Default::default()
        };
        let mut config = tiny_config(&spec);
        (config.num_heads, config.num_kv_heads, config.head_dim) = (6, 2, 8);
        config.intermediate_size = 48;
        let mut weights = Weights::from_tensors(tiny_weights(&config, 3, 0.3));
        let (host, _) = load_host(&config, &mut weights, Device::Cpu).unwrap();
        let mut padded = host.clone();
        let mut wide = config.clone();
        padded.layers = host
            .layers
            .iter()
            .map(|l| {
                let mut c = config.clone();
                let l = l.clone().padded_for_gpu(&mut c).unwrap();
                wide = c;
                l
            })
            .collect();
        assert_eq!((wide.num_heads, wide.intermediate_size), (8, 64));
        assert!(config.qkv_bias, "the bias is padded too");
        let tokens: Vec<u32> = (0..11).map(|i| (i * 29 + 3) % 200).collect();
        let a = logits(&config, &host.into_cpu().unwrap(), &tokens);
        let b = logits(&wide, &padded.into_cpu().unwrap(), &tokens);
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
            }
        }
    }
}
