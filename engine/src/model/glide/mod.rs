//! A GLIDE drafter (Du et al., "GLIDE with a CAPE", ICML 2024): per layer, self-attention over
//! its own cache, then cross-attention whose queries (rotated as the target's) read the keys
//! and values one target layer cached for the verified positions, then an MLP, with RMSNorms;
//! tokens are embedded with the target's own table, and the head scores a reduced vocabulary
//! ([`DraftVocab`]).
//!
//! The forward is the Llama one ([`self_attention_block`], [`mlp_block`]) with the
//! cross-attention block between them, over the same [`ForwardOps`] seam. The drafter runs on
//! its target's device: on the CPU through the CPU backend ([`cross_attention`]), on a
//! GPU as a model of the CUDA backend on the target's stream, whose cross-attention reads the
//! target's pool through the paged-attention kernel.
//!
//! Which target positions a row sees: a row at position `p` of a sequence whose target cache
//! holds `V` verified positions sees target positions `0 .. min(p, V)`, the verified ones
//! before it. This is the paper's block-wise mask, which training uses: the rows drafted after
//! a verification form a block that sees only the positions verified before the block began,
//! and a row that catches up on a committed token (the prompt, or the last of a fully accepted
//! draft) is a block of its own. The row at position 0 sees nothing.
//!
//! - `file`: the file format: writing, quantizing, tensor names.
//! - `load`: reading a file, and the drafter's weights for its target.
//! - `weights`: the drafter's weight sets, as read and on the CPU.
//! - `forward`: the forward's entry points, input checks and device dispatch.
//! - `layers`: the layer stack over the forward seam, and the CPU cross-attention.

mod file;
mod forward;
mod layers;
mod load;
mod weights;

use std::sync::Arc;

use super::config::ModelConfig;
use super::cpu_forward::Projection;
use super::cuda::CudaModel;
use super::device::{Device, GpuStats};
use super::draft_vocab::DraftVocab;
use super::glide_config::GlideConfig;
#[cfg(doc)]
use super::llama::{mlp_block, self_attention_block, ForwardOps};
use crate::kv::{KvDtype, KvPool};

pub use file::{
    cross_tensor_names, feature_tensor_names, quantize_glide, save_glide, CHAIN_NORM_TENSOR,
    CONFIG_KEY, VOCAB_TENSOR,
};
pub use forward::{DraftRows, FeatureRow, FeatureSource, TargetKv};
pub(crate) use layers::{cross_attention, glide_layers};
pub(crate) use weights::{CrossWeights, FeatureWeights, GlideHost, GlideWeights};

/// A GLIDE drafter's weights on its target's device.
#[derive(Debug, Clone)]
enum GlideDevice {
    Cpu(Arc<GlideWeights<Projection, Vec<f32>>>),
    Cuda(Arc<CudaModel>),
}

/// A GLIDE drafter for one target model.
#[derive(Debug, Clone)]
pub struct GlideModel {
    config: GlideConfig,
    /// The drafter's own forward shapes: the target's, with the drafter's layers, heads and
    /// MLP width (the embedding is the target's, so the vocabulary and hidden size are too).
    base: ModelConfig,
    weights: GlideDevice,
    vocab: DraftVocab,
    inv_freq: Vec<f64>,
    target: ModelConfig,
    target_inv_freq: Vec<f64>,
}

impl GlideModel {
    /// The device the drafter runs on (its target's).
    pub fn device(&self) -> Device {
        match &self.weights {
            GlideDevice::Cpu(_) => Device::Cpu,
            GlideDevice::Cuda(m) => Device::Cuda(m.ordinal()),
        }
    }

    pub fn config(&self) -> &GlideConfig {
        &self.config
    }

    /// Whether the drafter's layer matrices are stored quantized (they are for a quantized
    /// target: [`GlideModel::from_weights`]).
    pub fn is_quantized(&self) -> bool {
        match &self.weights {
            GlideDevice::Cpu(w) => {
                w.base.layers.iter().all(|l| l.qkv.is_quantized())
                    && w.cross.iter().all(|c| c.q.is_quantized())
            }
            GlideDevice::Cuda(m) => m.layers_quantized(),
        }
    }

    /// On a GPU, the drafter's forwards, graph replays and time (host and, unless
    /// `SPECD_GPU_TIMING=0`, GPU); `None` on the CPU.
    pub fn gpu_stats(&self) -> Option<GpuStats> {
        match &self.weights {
            GlideDevice::Cpu(_) => None,
            GlideDevice::Cuda(m) => Some(m.stats()),
        }
    }

    /// The target ids of the head's rows.
    pub fn vocab(&self) -> &DraftVocab {
        &self.vocab
    }

    /// A pool of `max_blocks` blocks for the drafter's own cache, on its device.
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        match &self.weights {
            // One layer's own cache: f32 whatever the target's (`--kv-dtype`).
            GlideDevice::Cpu(_) => KvPool::for_model(&self.base, max_blocks, KvDtype::F32),
            GlideDevice::Cuda(m) => {
                KvPool::on_gpu(m.kv_storage(max_blocks), &self.base, max_blocks)
            }
        }
    }
}
