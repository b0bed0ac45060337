//! Putting a model on a GPU: the checks against what the kernels take, the weights and the
//! rotary table uploaded; a GLIDE drafter on its target's GPU, sharing what it can of the
//! target's.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use specd_kernels::cuda::{Buffer, Gpu};

use super::scratch::Scratch;
use super::weights::{self, GpuWeights};
use super::{gpu_err, kv, CudaCross, CudaModel, StepTimer};
use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::glide::GlideHost;
use crate::model::host_weights::HostWeights;

impl CudaModel {
    pub(crate) fn load(
        config: &ModelConfig,
        host: HostWeights,
        tied: bool,
        ordinal: usize,
    ) -> Result<Self> {
        let gpu = Gpu::open(ordinal).map_err(gpu_err)?;
        for (what, n) in [
            ("hidden size", config.hidden_size),
            ("intermediate size", config.intermediate_size),
        ] {
            if !n.is_multiple_of(32) {
                return Err(Error::Device(format!(
                    "the model's {what} is {n}; the CUDA kernels need a multiple of 32"
                )));
            }
        }
        if config.head_dim > 256 || !config.head_dim.is_multiple_of(8) {
            return Err(Error::Device(format!(
                "the model's head dimension is {}; the CUDA attention kernel takes multiples of 8 up to 256",
                config.head_dim
            )));
        }
        let weights = weights::upload(&gpu, host, tied)?;
        let cos_sin = Arc::new(rope_table(&gpu, config)?);
        let weight_bytes = weights::weight_bytes(&weights, tied);
        let step_weight_bytes = weights::step_bytes(&weights);
        Ok(Self::assemble(
            gpu,
            config,
            weights,
            None,
            (weight_bytes, step_weight_bytes),
            cos_sin,
        ))
    }

    /// A GLIDE drafter of `base`'s shapes on `target`'s GPU (and stream): its layers, final
    /// norm and cross-attention uploaded, the target's embedding shared, and as head its own
    /// matrix or the target's head rows `vocab_ids`; its cross-attention reads target layer
    /// `target_layer`.
    pub(crate) fn load_glide(
        target: &CudaModel,
        base: &ModelConfig,
        host: GlideHost,
        vocab_ids: &[u32],
        target_layer: usize,
    ) -> Result<Self> {
        let gpu = target.gpu.clone();
        gpu.bind().map_err(gpu_err)?;
        if !base.intermediate_size.is_multiple_of(32) {
            return Err(Error::Device(format!(
                "the GLIDE drafter's intermediate size is {}; the CUDA kernels need a multiple \
                 of 32",
                base.intermediate_size
            )));
        }
        if base.head_dim > 256 || !base.head_dim.is_multiple_of(8) {
            return Err(Error::Device(format!(
                "the GLIDE drafter's head dimension is {}; the CUDA attention kernel takes \
                 multiples of 8 up to 256",
                base.head_dim
            )));
        }
        let (weights, layers, feature) =
            weights::upload_glide(&gpu, host, &target.weights, vocab_ids)?;
        let t = &target.config;
        // Its own rotary table is the target's when its heads are as wide (the frequencies
        // depend on the head dimension only).
        let cos_sin = if base.rope_inv_freq() == t.rope_inv_freq() {
            target.cos_sin.clone()
        } else {
            Arc::new(rope_table(&gpu, base)?)
        };
        let cross = CudaCross {
            layers,
            feature,
            layer: target_layer,
            n_heads: t.num_heads,
            n_kv: t.num_kv_heads,
            head_dim: t.head_dim,
            interleaved: t.rope_layout == RopeLayout::Interleaved,
            chunk_blocks: kv::chunk_blocks(t),
            n_layers: t.num_layers,
            cos_sin: target.cos_sin.clone(),
            vocab_ids: {
                let ids: Vec<i32> = vocab_ids.iter().map(|&i| i as i32).collect();
                gpu.upload(&ids, "the GLIDE drafter's id map", "free GPU memory")
                    .map_err(gpu_err)?
            },
        };
        let bytes = weights::step_bytes(&weights)
            + weights::cross_bytes(&cross.layers, cross.feature.as_ref());
        Ok(Self::assemble(
            gpu,
            base,
            weights,
            Some(cross),
            (bytes, bytes),
            cos_sin,
        ))
    }

    fn assemble(
        gpu: Arc<Gpu>,
        config: &ModelConfig,
        weights: GpuWeights,
        cross: Option<CudaCross>,
        (weight_bytes, step_weight_bytes): (usize, usize),
        cos_sin: Arc<Buffer<f32>>,
    ) -> Self {
        let graphs = std::env::var("SPECD_CUDA_GRAPHS").map_or(true, |v| v != "0");
        let timer = if std::env::var("SPECD_GPU_TIMING").map_or(true, |v| v != "0") {
            match gpu.timer() {
                Ok(events) => Some(Mutex::new(StepTimer {
                    events,
                    open: false,
                })),
                Err(e) => {
                    eprintln!("specd: no timing events for the GPU's step times: {e}");
                    None
                }
            }
        } else {
            None
        };
        Self {
            gpu,
            config: config.clone(),
            weights,
            cross,
            weight_bytes,
            step_weight_bytes,
            cos_sin,
            scratch: Mutex::new(Scratch::new()),
            graphs: AtomicBool::new(graphs),
            forwards: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            captures: AtomicU64::new(0),
            launches: AtomicU64::new(0),
            host_ns: AtomicU64::new(0),
            timer,
            gpu_ns: AtomicU64::new(0),
        }
    }
}

/// The rotary table of `config`'s model on the GPU: (cos, sin) of every position and frequency,
/// `[max_position][head_dim / 2]`.
fn rope_table(gpu: &Gpu, config: &ModelConfig) -> Result<Buffer<f32>> {
    let half = config.head_dim / 2;
    let inv_freq = config.rope_inv_freq();
    let mut table = Vec::with_capacity(config.max_position_embeddings * half * 2);
    for p in 0..config.max_position_embeddings {
        for &f in &inv_freq {
            let a = p as f64 * f;
            table.push(a.cos() as f32);
            table.push(a.sin() as f32);
        }
    }
    gpu.upload(
        &table,
        "the rotary embedding table",
        "use a shorter context",
    )
    .map_err(gpu_err)
}
