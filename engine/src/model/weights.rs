//! Weight loading: Hugging Face safetensors (single or sharded), GGUF (kept quantized, used
//! through candle's `QMatMul`) and in-memory tensors for tests.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The parameters of a Llama-family model, independent of the file format's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Embed,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    FinalNorm,
    LmHead,
}

/// Where a format keeps each parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    HuggingFace,
    Gguf,
}

impl Naming {
    /// The tensor name of `param` in this format.
    pub fn name(self, param: Param) -> String {
        use Param::*;
        match self {
            Naming::HuggingFace => match param {
                Embed => "model.embed_tokens.weight".into(),
                AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
                Q(i) => format!("model.layers.{i}.self_attn.q_proj.weight"),
                K(i) => format!("model.layers.{i}.self_attn.k_proj.weight"),
                V(i) => format!("model.layers.{i}.self_attn.v_proj.weight"),
                QBias(i) => format!("model.layers.{i}.self_attn.q_proj.bias"),
                KBias(i) => format!("model.layers.{i}.self_attn.k_proj.bias"),
                VBias(i) => format!("model.layers.{i}.self_attn.v_proj.bias"),
                O(i) => format!("model.layers.{i}.self_attn.o_proj.weight"),
                FfnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
                Gate(i) => format!("model.layers.{i}.mlp.gate_proj.weight"),
                Up(i) => format!("model.layers.{i}.mlp.up_proj.weight"),
                Down(i) => format!("model.layers.{i}.mlp.down_proj.weight"),
                FinalNorm => "model.norm.weight".into(),
                LmHead => "lm_head.weight".into(),
            },
            Naming::Gguf => match param {
                Embed => "token_embd.weight".into(),
                AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
                Q(i) => format!("blk.{i}.attn_q.weight"),
                K(i) => format!("blk.{i}.attn_k.weight"),
                V(i) => format!("blk.{i}.attn_v.weight"),
                QBias(i) => format!("blk.{i}.attn_q.bias"),
                KBias(i) => format!("blk.{i}.attn_k.bias"),
                VBias(i) => format!("blk.{i}.attn_v.bias"),
                O(i) => format!("blk.{i}.attn_output.weight"),
                FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
                Gate(i) => format!("blk.{i}.ffn_gate.weight"),
                Up(i) => format!("blk.{i}.ffn_up.weight"),
                Down(i) => format!("blk.{i}.ffn_down.weight"),
                FinalNorm => "output_norm.weight".into(),
                LmHead => "output.weight".into(),
            },
        }
    }
}

enum Store {
    Safetensors {
        shards: Vec<(PathBuf, MmapedSafetensors)>,
        index: HashMap<String, usize>,
    },
    Gguf {
        content: gguf_file::Content,
        reader: BufReader<File>,
    },
    Memory(HashMap<String, Tensor>),
}

/// How a model file's quantized matrices are held once loaded (`--weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WeightStorage {
    /// As the file stores them: GGUF blocks stay quantized and the kernels decode them.
    #[default]
    Stored,
    /// Dequantized at load: bf16 on a GPU, f32 on the CPU (about 4× and 7× a Q4_K_M file's
    /// bytes). Dense files load as they would anyway.
    Dense,
}

/// A set of named weights in one of the supported formats.
pub struct Weights {
    store: Store,
    naming: Naming,
    origin: PathBuf,
    /// [`WeightStorage::Dense`]: quantized matrices are dequantized as they are read.
    storage: WeightStorage,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("origin", &self.origin)
            .field("naming", &self.naming)
            .field("storage", &self.storage)
            .finish()
    }
}

impl Weights {
    /// Memory-maps one or more safetensors files (Hugging Face naming).
    pub fn from_safetensors(paths: &[PathBuf], origin: &Path) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            // SAFETY: the mapping is read-only; like every mmap-based loader we rely on the
            // file not being truncated or rewritten while the model is loaded.
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| {
                Error::file(
                    p,
                    format!("not a valid safetensors file: {}", root_cause(&e)),
                )
            })?;
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            shards.push((p.clone(), st));
        }
        Ok(Self {
            store: Store::Safetensors { shards, index },
            naming: Naming::HuggingFace,
            origin: origin.to_path_buf(),
            storage: WeightStorage::Stored,
        })
    }

    /// Opens a GGUF file whose header has already been read.
    pub fn from_gguf(content: gguf_file::Content, file: File, path: &Path) -> Self {
        Self {
            store: Store::Gguf {
                content,
                reader: BufReader::new(file),
            },
            naming: Naming::Gguf,
            origin: path.to_path_buf(),
            storage: WeightStorage::Stored,
        }
    }

    /// Wraps in-memory tensors named as in Hugging Face checkpoints (tests, tiny models).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            store: Store::Memory(tensors),
            naming: Naming::HuggingFace,
            origin: PathBuf::from("<memory>"),
            storage: WeightStorage::Stored,
        }
    }

    /// How this reader holds quantized matrices.
    pub fn storage(&self) -> WeightStorage {
        self.storage
    }

    /// Holds quantized matrices as `storage` says from now on.
    pub fn with_storage(mut self, storage: WeightStorage) -> Self {
        self.storage = storage;
        self
    }

    /// The file (or folder) the weights came from, for error messages.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The naming scheme of the underlying format.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Whether the weights hold `param`.
    pub fn contains(&self, param: Param) -> bool {
        self.contains_name(&self.naming.name(param))
    }

    /// Whether the weights hold a tensor called `name`.
    pub fn contains_name(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors { index, .. } => index.contains_key(name),
            Store::Gguf { content, .. } => content.tensor_infos.contains_key(name),
            Store::Memory(t) => t.contains_key(name),
        }
    }

    /// Reads a tensor by name as f32 (dequantized if stored quantized), checking its shape.
    pub fn tensor_named(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Store::Gguf { .. } = self.store {
            let q = self.qtensor_named(name, shape)?;
            return Ok(q.dequantize(&Device::Cpu)?);
        }
        match self.dense_store_matrix(name, shape)? {
            QMatMul::QTensor(q) => Ok(q.dequantize(&Device::Cpu)?),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(to_f32(t)?),
        }
    }

    /// A tensor of a safetensors or in-memory store, as stored.
    fn stored(&self, name: &str) -> Result<Tensor> {
        match &self.store {
            Store::Safetensors { shards, index } => {
                let &i = index.get(name).ok_or_else(|| missing(&self.origin, name))?;
                let (path, st) = &shards[i];
                st.load(name, &Device::Cpu)
                    .map_err(|e| Error::file(path, format!("tensor `{name}`: {}", root_cause(&e))))
            }
            Store::Memory(tensors) => tensors
                .get(name)
                .cloned()
                .ok_or_else(|| missing(&self.origin, name)),
            Store::Gguf { .. } => unreachable!("GGUF tensors are read through qtensor_named"),
        }
    }

    /// A tensor of shape `shape` of a safetensors or in-memory store: as stored, or, for a
    /// matrix `[out, in]` stored as a u8 tensor `[out, in / 32 · 34]`, GGUF's Q8_0 blocks of
    /// its rows (what `specd quantize-glide` writes), kept quantized.
    fn dense_store_matrix(&self, name: &str, shape: &[usize]) -> Result<QMatMul> {
        let t = self.stored(name)?;
        if t.dtype() != DType::U8 {
            check_shape(&self.origin, name, t.dims(), shape)?;
            return Ok(QMatMul::Tensor(t));
        }
        let q8 = GgmlDType::Q8_0;
        let &[rows, cols] = shape else {
            return Err(Error::file(
                &self.origin,
                format!("tensor `{name}` is stored as bytes (Q8_0 blocks) but is not a matrix"),
            ));
        };
        if !cols.is_multiple_of(q8.block_size()) {
            return Err(Error::file(
                &self.origin,
                format!(
                    "tensor `{name}` is stored as Q8_0 blocks, but its rows of {cols} values \
                     are not whole blocks of {}",
                    q8.block_size()
                ),
            ));
        }
        let row_bytes = cols / q8.block_size() * q8.type_size();
        check_shape(&self.origin, name, t.dims(), &[rows, row_bytes])?;
        let bytes: Vec<u8> = t.flatten_all()?.to_vec1()?;
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            q8,
            &bytes,
            vec![rows, cols],
            &Device::Cpu,
        )?;
        if self.storage == WeightStorage::Dense {
            return Ok(QMatMul::Tensor(q.dequantize(&Device::Cpu)?));
        }
        Ok(QMatMul::QTensor(std::sync::Arc::new(q)))
    }

    /// Reads a parameter as f32, checking its shape.
    pub fn tensor(&mut self, param: Param, shape: &[usize]) -> Result<Tensor> {
        let name = self.naming.name(param);
        self.tensor_named(&name, shape)
    }

    fn qtensor_named(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let Store::Gguf { content, reader } = &mut self.store else {
            unreachable!("qtensor_named is only called on GGUF weights")
        };
        let info = content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.origin.clone(),
                name: name.to_string(),
            })?;
        check_shape(&self.origin, name, info.shape.dims(), shape)?;
        content
            .tensor(reader, name, &Device::Cpu)
            .map_err(|e| Error::file(&self.origin, format!("tensor `{name}`: {}", root_cause(&e))))
    }

    /// Reads a weight matrix of shape `[out, in]` for a matrix product. GGUF weights stay
    /// quantized (lossless re-encodings aside, see `cpu_friendly`); dense weights become f32.
    pub fn matrix(&mut self, param: Param, out_dim: usize, in_dim: usize) -> Result<QMatMul> {
        let name = self.naming.name(param);
        self.matrix_named(&name, out_dim, in_dim)
    }

    /// Like [`Weights::matrix`], by tensor name.
    pub fn matrix_named(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<QMatMul> {
        match self.store {
            Store::Gguf { .. } => {
                let q = self.qtensor_named(name, &[out_dim, in_dim])?;
                if self.storage == WeightStorage::Dense {
                    return Ok(QMatMul::Tensor(q.dequantize(&Device::Cpu)?));
                }
                let q = cpu_friendly(q)?;
                Ok(QMatMul::from_qtensor(q)?)
            }
            _ => match self.dense_store_matrix(name, &[out_dim, in_dim])? {
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(QMatMul::Tensor(to_f32(t)?)),
                q => Ok(q),
            },
        }
    }

    /// Like [`Weights::matrix`]; with `keep_dtype`, dense weights keep the file's precision
    /// (bf16 or f16 stay so, for a GPU) instead of becoming f32.
    pub fn matrix_as(
        &mut self,
        param: Param,
        out_dim: usize,
        in_dim: usize,
        keep_dtype: bool,
    ) -> Result<QMatMul> {
        let name = self.naming.name(param);
        if !keep_dtype || matches!(self.store, Store::Gguf { .. }) {
            let m = self.matrix_named(&name, out_dim, in_dim)?;
            return match m {
                // Dequantized for a GPU: bf16, as a dense file's weights would be there.
                QMatMul::Tensor(t) if keep_dtype && self.storage == WeightStorage::Dense => {
                    Ok(QMatMul::Tensor(t.to_dtype(DType::BF16)?))
                }
                m => Ok(m),
            };
        }
        self.dense_store_matrix(&name, &[out_dim, in_dim])
    }

    /// Reads an embedding table of shape `[vocab, hidden]`, kept quantized for GGUF (rows are
    /// dequantized on lookup).
    pub fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<QMatMul> {
        self.matrix(Param::Embed, vocab, hidden)
    }
}

/// A float matrix `[rows, cols]` (`cols` whole blocks of 32) as GGUF's Q8_0 blocks of its rows
/// in a u8 tensor `[rows, cols / 32 · 34]`: how a safetensors file stores a matrix that
/// [`Weights`] reads back quantized. `None` for a tensor that is not such a matrix.
pub fn q8_0_bytes(t: &Tensor) -> Result<Option<Tensor>> {
    let q8 = GgmlDType::Q8_0;
    if t.rank() != 2 || !t.dtype().is_float() || !t.dim(1)?.is_multiple_of(q8.block_size()) {
        return Ok(None);
    }
    let (rows, cols) = t.dims2()?;
    let blocks = QTensor::quantize(&t.to_dtype(DType::F32)?, q8)?
        .data()?
        .into_owned();
    let row_bytes = cols / q8.block_size() * q8.type_size();
    Ok(Some(Tensor::from_vec(
        blocks,
        (rows, row_bytes),
        &Device::Cpu,
    )?))
}

fn missing(origin: &Path, name: &str) -> Error {
    Error::MissingTensor {
        path: origin.to_path_buf(),
        name: name.to_string(),
    }
}

fn check_shape(origin: &Path, name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::TensorShape {
            path: origin.to_path_buf(),
            name: name.to_string(),
            actual: actual.to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

fn to_f32(t: Tensor) -> candle_core::Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t)
    } else {
        t.to_dtype(DType::F32)
    }
}

/// The innermost message of a candle error, without backtraces or context wrappers.
pub(crate) fn root_cause(e: &candle_core::Error) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.find("\n") {
        msg.truncate(i);
    }
    msg
}

/// Re-encodes weights whose format our kernels lack into one they have, without changing a
/// single value: Q4_0 stores `d * (q - 8)` with 4-bit `q`, which Q8_0 (`d * q`, `q` in i8)
/// represents exactly with the same block size and scale. (Q5_0, Q8_0, Q4_K and Q6_K run
/// natively through `kernels/`.)
fn cpu_friendly(q: QTensor) -> Result<QTensor> {
    if q.dtype() != GgmlDType::Q4_0 {
        return Ok(q);
    }
    let data = q.data()?;
    let mut out = Vec::with_capacity(data.len() / 18 * 34);
    for block in data.chunks_exact(18) {
        out.extend_from_slice(&block[..2]); // the f16 scale is kept as is
        let mut qs = [0i8; 32];
        for j in 0..16 {
            let b = block[2 + j];
            qs[j] = (b & 0x0F) as i8 - 8;
            qs[j + 16] = (b >> 4) as i8 - 8;
        }
        out.extend(qs.iter().map(|&v| v as u8));
    }
    let shape = q.shape().clone();
    let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, GgmlDType::Q8_0)?;
    Ok(QTensor::new(storage, shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requantized_blocks_hold_the_same_values() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let src = Tensor::from_vec(values, (4, 64), &Device::Cpu).unwrap();
        {
            let dtype = GgmlDType::Q4_0;
            let q = QTensor::quantize(&src, dtype).unwrap();
            let before = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let r = cpu_friendly(q).unwrap();
            assert_eq!(r.dtype(), GgmlDType::Q8_0);
            assert_eq!(
                cpu_friendly(QTensor::quantize(&src, GgmlDType::Q5_0).unwrap())
                    .unwrap()
                    .dtype(),
                GgmlDType::Q5_0,
                "Q5_0 runs natively"
            );
            let after = r
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(before, after, "{dtype:?} → Q8_0 changed values");
        }
    }
}
