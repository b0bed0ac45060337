//! The CUDA backend: a model's weights, KV blocks and activations in GPU memory, one forward
//! per step through specd's kernels, replayed from CUDA graphs. A GLIDE drafter is a model of
//! this backend too ([`CudaModel::load_glide`]): it shares its target's GPU stream, embedding
//! and rotary table, and its cross-attention reads the target's pool through the
//! paged-attention kernel.
//!
//! Per step only the metadata goes in (token ids, positions, KV slots, block tables: a few
//! hundred bytes) and only what the caller asked for comes out: argmax tokens, greedy
//! verdicts, or (for sampling on the host) the wanted rows of logits.
//!
//! - this module: the model on a GPU ([`CudaModel`]), a GLIDE drafter's part of it, and what
//!   it reports and lets be switched (stats, graphs, the product kernel).
//! - `load`: putting a model on a GPU: the checks against the kernels' limits, the weights and
//!   the rotary table, and a GLIDE drafter on its target's GPU.
//! - `forward`: one forward: buffers chosen and metadata uploaded, the step replayed from a
//!   graph or launched directly, the outputs read back.
//! - `scratch`: what a model keeps between forwards: the buffer sets and the captured graphs.
//! - `plan`, `buffers`, `step`: a forward's metadata, its device buffers, and its launches.
//! - `weights`, `kv`: the weights and the KV blocks in GPU memory.

mod buffers;
mod forward;
mod kv;
mod load;
mod plan;
mod scratch;
mod step;
mod weights;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use specd_kernels::cuda::{Buffer, Gpu, GpuError, WeightFormat};

pub(crate) use kv::GpuBlocks;
use scratch::Scratch;
use weights::{GpuCross, GpuMatrix, GpuWeights};

use super::config::ModelConfig;
use super::device::GpuStats;
use super::glide::FeatureWeights;
use crate::error::{Error, Result};

/// The names of the row-product kernels built in.
pub(crate) fn matmul_kernels() -> Vec<String> {
    specd_kernels::cuda::MatmulKernel::CHOICES
        .iter()
        .map(|k| k.name())
        .collect()
}

pub(crate) fn gpu_err(e: GpuError) -> Error {
    Error::Device(e.to_string())
}

impl From<GpuError> for Error {
    fn from(e: GpuError) -> Self {
        gpu_err(e)
    }
}

/// A GLIDE drafter's part beyond the Llama layers: each layer's cross-attention weights, its
/// feature's ([`GlideFeature::LastHidden`](super::GlideFeature), one `[hidden, hidden]`
/// projection on a GPU), and what its cross-attention reads of the target.
#[derive(Debug)]
struct CudaCross {
    layers: Vec<GpuCross>,
    feature: Option<FeatureWeights<GpuMatrix, Buffer<f32>>>,
    /// The target layer whose keys and values are read.
    layer: usize,
    /// The target's attention shape.
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    interleaved: bool,
    /// The target's KV blocks per chunk and layers (its pool's layout).
    chunk_blocks: usize,
    n_layers: usize,
    /// The target's rotary table (shared with it).
    cos_sin: Arc<Buffer<f32>>,
    /// The target id of each row of the drafter's head (its draft vocabulary), so that a
    /// round's greedy picks become the next forward's token ids on the device.
    vocab_ids: Buffer<i32>,
}

/// A model on a GPU.
#[derive(Debug)]
pub(crate) struct CudaModel {
    gpu: Arc<Gpu>,
    config: ModelConfig,
    weights: GpuWeights,
    /// A GLIDE drafter's cross-attention (`None` for a Llama-family model).
    cross: Option<CudaCross>,
    weight_bytes: usize,
    step_weight_bytes: usize,
    /// (cos, sin) of every position and frequency, `[max_position][head_dim / 2]`.
    cos_sin: Arc<Buffer<f32>>,
    scratch: Mutex<Scratch>,
    graphs: AtomicBool,
    forwards: AtomicU64,
    replays: AtomicU64,
    captures: AtomicU64,
    launches: AtomicU64,
    host_ns: AtomicU64,
    /// Events around each forward's launches, and the GPU's time between them summed, unless
    /// `SPECD_GPU_TIMING=0`. On by default: with them a target-only step of the 1.5B on an
    /// H100 took ~77 µs less (743 against 703 tok/s through `bench-spec`; glide:4:c0.4 +6 %), though
    /// recording them costs the host a few microseconds; the same events recorded and not read
    /// did not shorten it (BENCHMARKS.md, session 30). Why reading them does is not known.
    timer: Option<Mutex<StepTimer>>,
    gpu_ns: AtomicU64,
}

/// The timing events of a model's forwards: a span opens with the first forward after
/// [`CudaModel::forward`] or [`CudaModel::draft_chain`] begins (its start is recorded, `open`),
/// the end is recorded after each forward, and reading them ([`CudaModel::add_gpu_time`])
/// closes the span. A forward spans itself; a chained GLIDE round, read once after its last
/// forward, spans all of its forwards, which stay queued back to back.
#[derive(Debug)]
pub(super) struct StepTimer {
    pub(super) events: specd_kernels::cuda::GpuTimer,
    pub(super) open: bool,
}

impl CudaModel {
    /// Whether the output head is stored quantized (a GLIDE drafter of this target then
    /// quantizes its own matrices).
    pub(crate) fn head_is_quantized(&self) -> bool {
        is_quantized(&self.weights.head)
    }

    /// Whether every layer matrix, cross-attention ones included, is stored quantized.
    pub(crate) fn layers_quantized(&self) -> bool {
        let cross = self.cross.as_ref().map_or(&[][..], |c| &c.layers[..]);
        self.weights.layers.iter().all(|l| is_quantized(&l.qkv))
            && cross.iter().all(|c| is_quantized(&c.q))
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.gpu.ordinal()
    }

    pub(crate) fn kv_storage(&self, max_blocks: usize) -> GpuBlocks {
        GpuBlocks::new(self.gpu.clone(), &self.config, max_blocks)
    }

    pub(crate) fn memory_free(&self) -> Result<usize> {
        Ok(self.gpu.memory().map_err(gpu_err)?.0)
    }

    /// Turns graph capture and replay on or off (on by default; `SPECD_CUDA_GRAPHS=0` starts
    /// with it off).
    pub(crate) fn set_graphs(&self, on: bool) {
        self.graphs.store(on, Ordering::Relaxed);
    }

    /// Starts or stops a profiler's collection range (see `Gpu::profiler_range`).
    pub(crate) fn profiler_range(&self, on: bool) -> Result<()> {
        self.gpu.profiler_range(on).map_err(gpu_err)
    }

    /// Device-to-device copy bandwidth in bytes per second (read plus written), measured on a
    /// 1 GiB buffer.
    pub(crate) fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 30;
        let what = "a bandwidth measurement";
        let a = self.gpu.alloc::<u8>(n, what, "free GPU memory")?;
        let b = self.gpu.alloc::<u8>(n, what, "free GPU memory")?;
        for _ in 0..3 {
            self.gpu.copy(b.ptr(), a.ptr(), n)?;
        }
        self.gpu.synchronize()?;
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            self.gpu.copy(b.ptr(), a.ptr(), n)?;
        }
        self.gpu.synchronize()?;
        Ok(2.0 * (n * reps) as f64 / t.elapsed().as_secs_f64())
    }

    /// Switches the row-product kernel by name (`8x8`, `16x8`, ..., `simple`), dropping the
    /// graphs captured with the old one.
    pub(crate) fn set_matmul(&self, name: &str) -> Result<()> {
        let k = specd_kernels::cuda::MatmulKernel::from_name(name).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "unknown product kernel `{name}`: one of {}",
                matmul_kernels().join(", ")
            ))
        })?;
        self.gpu.set_matmul_kernel(k);
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graphs
            .clear();
        Ok(())
    }

    pub(crate) fn stats(&self) -> GpuStats {
        GpuStats {
            device: self.gpu.name().to_string(),
            matmul: self.gpu.matmul_kernel().name(),
            weight_bytes: self.weight_bytes,
            step_weight_bytes: self.step_weight_bytes,
            forwards: self.forwards.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            captures: self.captures.load(Ordering::Relaxed),
            launches: self.launches.load(Ordering::Relaxed),
            host_us: self.host_ns.load(Ordering::Relaxed) / 1000,
            gpu_us: self.gpu_ns.load(Ordering::Relaxed) / 1000,
        }
    }
}

/// Whether any part of `m` is stored in a quantized format.
fn is_quantized(m: &GpuMatrix) -> bool {
    m.parts.iter().any(|p| p.view.format != WeightFormat::Bf16)
}
