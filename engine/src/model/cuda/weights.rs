//! Model weights in GPU memory: GGUF blocks in the formats the kernels decode (Q4_K, Q6_K,
//! Q8_0, Q5_0) kept as they are, everything else as bf16.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Tensor};
use specd_kernels::cuda::{Buffer, Gpu, WeightFormat, WeightView};

use super::gpu_err;
use crate::error::{Error, Result};
use crate::model::glide::{CrossWeights, FeatureWeights, GlideHost};
use crate::model::host_weights::{HostLayer, HostMatrix, HostWeights};
use crate::model::llama::{LayerWeights, LlamaWeights};

const ADVICE: &str = "use a smaller or quantized model (GGUF), or another GPU";

/// One stored block of rows of a matrix: its format and the output columns it fills.
#[derive(Debug, Clone)]
pub(crate) struct GpuPart {
    pub view: WeightView,
    /// First output column this part writes.
    pub col: usize,
    data: Arc<Buffer<u8>>,
}

/// A weight matrix `[rows, cols]` on the GPU: one part, or several when the file stores its
/// stacked pieces (Q, K, V) in different formats; and its bias.
#[derive(Debug, Clone)]
pub(crate) struct GpuMatrix {
    pub parts: Vec<GpuPart>,
    pub bias: Option<Arc<Buffer<f32>>>,
    /// Output columns (rows of the stored matrix).
    pub rows: usize,
}

/// A model's weights on the GPU.
pub(crate) type GpuWeights = LlamaWeights<GpuMatrix, Buffer<f32>>;

/// A GLIDE drafter's cross-attention weights of one layer on the GPU.
pub(crate) type GpuCross = CrossWeights<GpuMatrix, Buffer<f32>>;

/// A GLIDE drafter's feature weights on the GPU: its norm (and the chained rows' own, if the
/// file has one) and one `[hidden, hidden]` projection (the file's low-rank pair composed at
/// load).
pub(crate) type GpuFeature = FeatureWeights<GpuMatrix, Buffer<f32>>;

/// Bytes of weights a model holds on the GPU (each shared buffer counted once).
pub(crate) fn weight_bytes(w: &GpuWeights, tied: bool) -> usize {
    let m = |m: &GpuMatrix| m.parts.iter().map(|p| p.data.bytes()).sum::<usize>();
    let layers: usize = w
        .layers
        .iter()
        .map(|l| m(&l.qkv) + m(&l.o) + m(&l.gate_up) + m(&l.down))
        .sum();
    layers + m(&w.embed) + if tied { 0 } else { m(&w.head) }
}

/// Bytes of weights one decode step reads: every layer's matrices, norms and biases, the final
/// norm and the head (the embedding contributes one row, left out).
pub(crate) fn step_bytes(w: &GpuWeights) -> usize {
    let m = |m: &GpuMatrix| {
        m.parts.iter().map(|p| p.data.bytes()).sum::<usize>()
            + m.bias.as_ref().map_or(0, |b| b.bytes())
    };
    let layers: usize = w
        .layers
        .iter()
        .map(|l| {
            m(&l.qkv)
                + m(&l.o)
                + m(&l.gate_up)
                + m(&l.down)
                + l.attn_norm.bytes()
                + l.ffn_norm.bytes()
        })
        .sum();
    layers + w.norm.bytes() + m(&w.head)
}

/// Bytes of a GLIDE drafter's cross-attention and feature weights.
pub(crate) fn cross_bytes(cross: &[GpuCross], feature: Option<&GpuFeature>) -> usize {
    let m = |m: &GpuMatrix| m.parts.iter().map(|p| p.data.bytes()).sum::<usize>();
    let crossed: usize = cross
        .iter()
        .map(|c| c.norm.bytes() + m(&c.q) + m(&c.o))
        .sum();
    crossed
        + feature.map_or(0, |f| {
            f.norm.bytes() + f.chain_norm.as_ref().map_or(0, |c| c.bytes()) + m(&f.proj)
        })
}

fn vector(gpu: &Gpu, v: &[f32], what: &str) -> Result<Buffer<f32>> {
    gpu.upload(v, what, ADVICE).map_err(gpu_err)
}

/// Uploads decoder layer `i`.
fn upload_layer(
    gpu: &Gpu,
    i: usize,
    l: &HostLayer,
) -> Result<LayerWeights<GpuMatrix, Buffer<f32>>> {
    let what = |m: &str| format!("layer {i}'s {m} weights");
    Ok(LayerWeights {
        attn_norm: vector(gpu, &l.attn_norm, &what("attention norm"))?,
        qkv: matrix(gpu, &l.qkv, &what("QKV"))?,
        o: matrix(gpu, &l.o, &what("output projection"))?,
        ffn_norm: vector(gpu, &l.ffn_norm, &what("MLP norm"))?,
        gate_up: matrix(gpu, &l.gate_up, &what("gate/up"))?,
        down: matrix(gpu, &l.down, &what("down projection"))?,
    })
}

/// Uploads every weight; a tied head shares the embedding's memory.
pub(crate) fn upload(gpu: &Gpu, host: HostWeights, tied: bool) -> Result<GpuWeights> {
    let embed = matrix(gpu, &host.embed, "the embedding table")?;
    let head = if tied {
        embed.clone()
    } else {
        matrix(gpu, &host.head, "the output head")?
    };
    let layers = host
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| upload_layer(gpu, i, l))
        .collect::<Result<Vec<_>>>()?;
    let weights = LlamaWeights {
        embed,
        layers,
        norm: vector(gpu, &host.norm, "the final norm")?,
        head,
    };
    reserve_dequant_scratch(gpu, weights_matrices(&weights))?;
    Ok(weights)
}

/// Uploads a GLIDE drafter's weights: its layers, cross-attention and final norm; the
/// embedding is `target`'s (shared), and the head the drafter's own or, without one, `target`'s
/// head rows `vocab_ids`.
pub(crate) fn upload_glide(
    gpu: &Gpu,
    host: GlideHost,
    target: &GpuWeights,
    vocab_ids: &[u32],
) -> Result<(GpuWeights, Vec<GpuCross>, Option<GpuFeature>)> {
    let layers = host
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| upload_layer(gpu, i, l))
        .collect::<Result<Vec<_>>>()?;
    let mut cross = Vec::with_capacity(host.cross.len());
    for (i, c) in host.cross.iter().enumerate() {
        let what = |m: &str| format!("GLIDE layer {i}'s cross-attention {m}");
        cross.push(CrossWeights {
            norm: vector(gpu, &c.norm, &what("norm"))?,
            q: matrix(gpu, &c.q, &what("query projection"))?,
            o: matrix(gpu, &c.o, &what("output projection"))?,
        });
    }
    let head = match &host.head {
        Some(h) => matrix(gpu, h, "the GLIDE drafter's head")?,
        None => select_rows(gpu, &target.head, vocab_ids)?,
    };
    let weights = LlamaWeights {
        embed: target.embed.clone(),
        layers,
        norm: vector(gpu, &host.norm, "the GLIDE drafter's final norm")?,
        head,
    };
    let feature = match &host.feature {
        None => None,
        Some(f) if f.down.is_some() => {
            return Err(Error::Device(
                "a GLIDE feature's low-rank pair must be composed into one matrix for a GPU".into(),
            ))
        }
        Some(f) => Some(FeatureWeights {
            norm: vector(gpu, &f.norm, "the GLIDE feature's norm")?,
            chain_norm: match &f.chain_norm {
                Some(c) => Some(vector(gpu, c, "the GLIDE chained rows' norm")?),
                None => None,
            },
            down: None,
            proj: matrix(gpu, &f.proj, "the GLIDE feature's projection")?,
        }),
    };
    let crossed = cross.iter().flat_map(|c| [&c.q, &c.o]);
    let featured = feature.iter().map(|f| &f.proj);
    reserve_dequant_scratch(
        gpu,
        weights_matrices(&weights).chain(crossed).chain(featured),
    )?;
    Ok((weights, cross, feature))
}

/// The rows `ids` of a single-part matrix (a head), in order, in its format: stored rows are
/// independent runs of bytes in every format, copied on the device.
fn select_rows(gpu: &Gpu, m: &GpuMatrix, ids: &[u32]) -> Result<GpuMatrix> {
    let ([part], None) = (&m.parts[..], &m.bias) else {
        return Err(Error::Device(
            "the target's head is stored in several parts or has a bias: a GLIDE drafter \
             without a head of its own cannot take its rows"
                .into(),
        ));
    };
    let view = part.view;
    let row_bytes = view.format.row_bytes(view.cols);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= view.rows) {
        return Err(Error::InvalidRequest(format!(
            "head row {bad} is outside the target's head of {} rows",
            view.rows
        )));
    }
    let data = gpu
        .alloc::<u8>(
            ids.len() * row_bytes,
            "the GLIDE drafter's head rows",
            ADVICE,
        )
        .map_err(gpu_err)?;
    // Runs of consecutive ids are one copy each.
    let mut j = 0;
    while j < ids.len() {
        let mut n = 1;
        while j + n < ids.len() && ids[j + n] == ids[j] + n as u32 {
            n += 1;
        }
        let src = view.ptr + (ids[j] as usize * row_bytes) as u64;
        gpu.copy(data.at(j * row_bytes), src, n * row_bytes)
            .map_err(gpu_err)?;
        j += n;
    }
    Ok(GpuMatrix {
        parts: vec![GpuPart {
            view: WeightView {
                format: view.format,
                ptr: data.ptr(),
                rows: ids.len(),
                cols: view.cols,
            },
            col: 0,
            data: Arc::new(data),
        }],
        bias: None,
        rows: ids.len(),
    })
}

/// The matrices the products of a forward read: every layer's, and the head.
fn weights_matrices(w: &GpuWeights) -> impl Iterator<Item = &GpuMatrix> {
    w.layers
        .iter()
        .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down])
        .chain([&w.head])
}

/// Reserves the prefill dequantization scratch for the largest quantized matrix of `mats`.
fn reserve_dequant_scratch<'a>(gpu: &Gpu, mats: impl Iterator<Item = &'a GpuMatrix>) -> Result<()> {
    let scratch = dequant_scratch_len(mats);
    if scratch > 0 {
        gpu.reserve_dequant_scratch(scratch).map_err(gpu_err)?;
    }
    Ok(())
}

/// The most bf16 values the prefill GEMM's dequantization scratch holds (64 MiB): larger
/// matrices are dequantized and multiplied a slice at a time.
const DEQUANT_SCRATCH_MAX: usize = 32 << 20;

/// Scratch for the largest quantized matrix the products read, up to [`DEQUANT_SCRATCH_MAX`]
/// (0 when every matrix is bf16).
fn dequant_scratch_len<'a>(mats: impl Iterator<Item = &'a GpuMatrix>) -> usize {
    let largest = |m: &GpuMatrix| {
        m.parts
            .iter()
            .filter(|p| p.view.format != WeightFormat::Bf16)
            .map(|p| p.view.rows * p.view.cols)
            .max()
            .unwrap_or(0)
    };
    mats.map(largest)
        .max()
        .unwrap_or(0)
        .min(DEQUANT_SCRATCH_MAX)
}

/// The kernels' format for a GGUF block type, if they decode it.
fn gpu_format(dtype: GgmlDType) -> Option<WeightFormat> {
    Some(match dtype {
        GgmlDType::Q4K => WeightFormat::Q4K,
        GgmlDType::Q6K => WeightFormat::Q6K,
        GgmlDType::Q8_0 => WeightFormat::Q8_0,
        GgmlDType::Q5_0 => WeightFormat::Q5_0,
        _ => return None,
    })
}

/// A matrix in a kernel format, ready to upload.
enum Encoded {
    /// GGUF blocks as stored.
    Blocks(WeightFormat, Vec<u8>),
    /// bf16 values.
    Bf16(Vec<half::bf16>),
}

impl Encoded {
    fn format(&self) -> WeightFormat {
        match self {
            Encoded::Blocks(f, _) => *f,
            Encoded::Bf16(_) => WeightFormat::Bf16,
        }
    }

    fn upload(&self, gpu: &Gpu, what: &str) -> Result<Buffer<u8>> {
        match self {
            Encoded::Blocks(_, b) => gpu.upload(b, what, ADVICE),
            Encoded::Bf16(v) => gpu.upload_raw(v, what, ADVICE),
        }
        .map_err(gpu_err)
    }

    fn append(&mut self, other: Encoded) {
        match (self, other) {
            (Encoded::Blocks(_, a), Encoded::Blocks(_, b)) => a.extend_from_slice(&b),
            (Encoded::Bf16(a), Encoded::Bf16(b)) => a.extend_from_slice(&b),
            _ => unreachable!("only matrices of one format are stacked"),
        }
    }
}

/// A matrix in a kernel format (GGUF blocks as stored, or bf16) with its rows and columns.
fn encode(m: &QMatMul) -> Result<(Encoded, usize, usize)> {
    let dense = |t: &Tensor| -> Result<(Encoded, usize, usize)> {
        let (rows, cols) = t.dims2()?;
        let v = t
            .to_dtype(DType::BF16)?
            .flatten_all()?
            .to_vec1::<half::bf16>()?;
        Ok((Encoded::Bf16(v), rows, cols))
    };
    match m {
        QMatMul::QTensor(q) => {
            let (rows, cols) = q.shape().dims2()?;
            match gpu_format(q.dtype()) {
                Some(f) if f.supports_cols(cols) => {
                    Ok((Encoded::Blocks(f, q.data()?.into_owned()), rows, cols))
                }
                _ => dense(&dequantized(q)?),
            }
        }
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => dense(t),
    }
}

fn dequantized(q: &QTensor) -> Result<Tensor> {
    Ok(q.dequantize(&candle_core::Device::Cpu)?)
}

/// Uploads a host matrix: its parts stacked when they share a format, else one part each.
fn matrix(gpu: &Gpu, h: &HostMatrix, what: &str) -> Result<GpuMatrix> {
    let mut encoded = Vec::with_capacity(h.parts.len());
    for p in &h.parts {
        encoded.push(encode(p)?);
    }
    let cols = encoded[0].2;
    if !cols.is_multiple_of(32) {
        return Err(Error::Device(format!(
            "{what}: {cols} input columns; the CUDA kernels need a multiple of 32"
        )));
    }
    // Mixed formats (a GGUF may store V in another type than Q and K) stay one part each.
    if encoded.len() > 1
        && encoded
            .iter()
            .all(|e| e.0.format() == encoded[0].0.format())
    {
        let mut rest = encoded.split_off(1);
        let (first, rows, _) = &mut encoded[0];
        for (e, r, _) in rest.drain(..) {
            first.append(e);
            *rows += r;
        }
    }
    let mut parts = Vec::with_capacity(encoded.len());
    let mut col = 0;
    for (enc, rows, cols) in encoded {
        let data = enc.upload(gpu, what)?;
        parts.push(GpuPart {
            view: WeightView {
                format: enc.format(),
                ptr: data.ptr(),
                rows,
                cols,
            },
            col,
            data: Arc::new(data),
        });
        col += rows;
    }
    let bias = match &h.bias {
        Some(b) => Some(Arc::new(gpu.upload(b, what, ADVICE).map_err(gpu_err)?)),
        None => None,
    };
    Ok(GpuMatrix {
        parts,
        bias,
        rows: col,
    })
}
