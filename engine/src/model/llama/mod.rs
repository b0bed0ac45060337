//! The Llama-family forward (Llama 2/3, Mistral, Qwen2): GQA, RoPE, RMSNorm, SwiGLU, optional
//! QKV bias, tied or untied head — one forward for every device.
//!
//! The forward is ragged: each sequence of a batch appends its own number of new tokens to its
//! own cache. All new tokens of the batch go through the matrix products together (one product
//! of `T = Σ n_i` rows per weight); attention reads each sequence's own cache. The layer loop is
//! written once, in [`run_layers`], over the operations of [`ForwardOps`]; the CPU
//! (`cpu_forward.rs`) and CUDA (`cuda/`) backends implement those operations on their own
//! buffers, which is the whole device seam.
//!
//! - this module: the model ([`Model`]): loading on a device, its KV element type, its head.
//! - `batch`: what each sequence of a forward brings and what the forward hands back.
//! - `layers`: the device seam (`ForwardOps`), the weights in a backend's representation,
//!   and the layer loop over them.
//! - `forward`: the forward's entry points, the checks on a batch, and the device dispatch.
//! - `backend`: caches and pools on the model's device, GPU counters and knobs, and the
//!   weights a GLIDE drafter shares.

mod backend;
mod batch;
mod forward;
mod layers;

use std::sync::Arc;

use super::config::ModelConfig;
use super::cpu_forward::CpuWeights;
use super::cuda::CudaModel;
use super::device::Device;
use super::host_weights::load_host;
use super::weights::{WeightStorage, Weights};
use crate::error::{Error, Result};
use crate::kv::KvDtype;

pub(crate) use batch::{hidden_per_seq, CrossInput, ForwardOut, GlideInput, OutputMode, Wanted};
pub use batch::{HiddenRows, Logits, SampleInput, SeqInput, Top};
pub(crate) use forward::check_verdict_inputs;
pub(crate) use layers::{
    mlp_block, run_layers, self_attention_block, Act, ForwardOps, LayerWeights, LlamaWeights,
};

/// The weights of a model on its device.
#[derive(Debug, Clone)]
enum DeviceWeights {
    Cpu(Arc<CpuWeights>),
    Cuda(Arc<CudaModel>),
}

/// A loaded Llama-family model.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    weights: DeviceWeights,
    /// Rows of the output head in use (a drafter may keep only the first ones).
    head_rows: usize,
    inv_freq: Vec<f64>,
    /// Element type of the KV pools this model makes on the CPU.
    kv_dtype: KvDtype,
    /// How its file's quantized matrices are held (a draft model follows its target's).
    storage: WeightStorage,
}

impl Model {
    /// Builds the model on the CPU from weights whose shapes must match `config`.
    pub fn load(config: ModelConfig, weights: &mut Weights) -> Result<Self> {
        Self::load_on(config, weights, Device::Cpu)
    }

    /// Builds the model on `device` from weights whose shapes must match `config`. On a GPU
    /// the weights are uploaded (GGUF blocks as they are, dense weights as bf16).
    pub fn load_on(config: ModelConfig, weights: &mut Weights, device: Device) -> Result<Self> {
        let storage = weights.storage();
        let (host, tied) = load_host(&config, weights, device)?;
        let weights = match device {
            Device::Cpu => DeviceWeights::Cpu(Arc::new(host.into_cpu()?)),
            Device::Cuda(ordinal) => {
                DeviceWeights::Cuda(Arc::new(CudaModel::load(&config, host, tied, ordinal)?))
            }
        };
        let inv_freq = config.rope_inv_freq();
        Ok(Self {
            head_rows: config.vocab_size,
            config,
            weights,
            inv_freq,
            kv_dtype: KvDtype::F32,
            storage,
        })
    }

    /// Whether its quantized matrices stayed quantized or were dequantized at load.
    pub fn weight_storage(&self) -> WeightStorage {
        self.storage
    }

    /// The element type of this model's KV pools.
    pub fn kv_dtype(&self) -> KvDtype {
        match self.device() {
            Device::Cpu => self.kv_dtype,
            Device::Cuda(_) => KvDtype::Bf16,
        }
    }

    /// Makes this model's KV pools store `dtype` (`--kv-dtype`). A GPU's pools are bf16 only.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Result<Self> {
        if dtype == KvDtype::F32 && self.device() != Device::Cpu {
            return Err(Error::Device(
                "--kv-dtype f32 is for the CPU: a GPU's KV cache is bf16".into(),
            ));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        match &self.weights {
            DeviceWeights::Cpu(_) => Device::Cpu,
            DeviceWeights::Cuda(m) => Device::Cuda(m.ordinal()),
        }
    }

    /// Runs a few forwards on a scratch cache. On the CPU candle packs quantized weights into
    /// the layouts of its multi-row kernels on first use; on a GPU the first steps capture
    /// graphs. Doing it here keeps that cost out of the first request.
    pub fn warm_up(&self) -> Result<()> {
        let mut cache = self.new_cache();
        self.forward_cache(&mut cache, &[0; 4], Logits::Last)?;
        self.forward_cache(&mut cache, &[0], Logits::Last)?;
        Ok(())
    }

    /// Keeps only the first `rows` rows of the output head: logits then cover token ids
    /// `0..rows` only. For drafters: byte-level BPE vocabularies number tokens roughly by merge
    /// order, so the first ids are the frequent ones, and a head of 32k of Qwen's 152k rows
    /// costs a fifth of the full one. Speculation stays lossless (the drafter's distribution is
    /// simply zero on the other ids); only acceptance can change.
    pub fn restrict_head(&mut self, rows: usize) -> Result<()> {
        let vocab = self.config.vocab_size;
        if rows == 0 || rows > vocab {
            return Err(Error::InvalidRequest(format!(
                "the draft head must keep between 1 and {vocab} rows, got {rows}"
            )));
        }
        if let DeviceWeights::Cpu(w) = &mut self.weights {
            let mut cut = (**w).clone();
            cut.head = cut.head.first_rows(rows)?;
            *w = Arc::new(cut);
        }
        self.head_rows = rows;
        Ok(())
    }

    /// Number of logits a forward returns per row (the vocabulary, or a restricted head).
    pub fn head_rows(&self) -> usize {
        self.head_rows
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
}
