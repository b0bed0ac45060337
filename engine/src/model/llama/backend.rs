//! What a model offers beside its forward: KV caches and pools on its device, the GPU's
//! counters and knobs, and the weights a GLIDE drafter shares with its target.

use super::{DeviceWeights, Model};
use crate::error::Result;
use crate::kv::{KvPool, SequenceCache};
use crate::model::cpu_forward::Projection;
use crate::model::cuda::CudaModel;
use crate::model::device::GpuStats;

impl Model {
    /// A new, empty cache with a pool of its own for one sequence of this model (tools and
    /// tests; the engine shares one [`KvPool`] among its sequences).
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::with_pool(
            self.new_pool(KvPool::blocks_for(self.config.max_position_embeddings)),
        )
    }

    /// A pool of `max_blocks` blocks for this model, on its device (block memory is allocated
    /// as blocks are first used).
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        match &self.weights {
            DeviceWeights::Cpu(_) => KvPool::for_model(&self.config, max_blocks, self.kv_dtype),
            DeviceWeights::Cuda(m) => {
                KvPool::on_gpu(m.kv_storage(max_blocks), &self.config, max_blocks)
            }
        }
    }

    /// Forward counters on a GPU (`None` on the CPU).
    pub fn gpu_stats(&self) -> Option<GpuStats> {
        match &self.weights {
            DeviceWeights::Cpu(_) => None,
            DeviceWeights::Cuda(m) => Some(m.stats()),
        }
    }

    /// On a GPU, the device-to-device copy bandwidth in bytes per second (read plus written),
    /// the ceiling of a memory-bound decode step; `None` on the CPU.
    pub fn copy_bandwidth(&self) -> Result<Option<f64>> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(None),
            DeviceWeights::Cuda(m) => m.copy_bandwidth().map(Some),
        }
    }

    /// On a GPU, starts (`on`) or stops the range a profiler started with collection off
    /// collects (Nsight Compute's `--profile-from-start off`), after the queued work has run;
    /// no effect on the CPU.
    pub fn cuda_profiler_range(&self, on: bool) -> Result<()> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(()),
            DeviceWeights::Cuda(m) => m.profiler_range(on),
        }
    }

    /// On a GPU, whether forwards of up to a few hundred rows are captured into CUDA graphs
    /// and replayed (on by default); no effect on the CPU.
    pub fn set_cuda_graphs(&self, on: bool) {
        if let DeviceWeights::Cuda(m) = &self.weights {
            m.set_graphs(on);
        }
    }

    /// On a GPU, switches the row-product kernel (`8x8`, `16x8`, `32x8`, `8x8u16`, ...:
    /// tensor-core tile shapes; `simple`: CUDA cores); for benchmarks. No effect on the CPU.
    pub fn set_cuda_matmul(&self, name: &str) -> Result<()> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(()),
            DeviceWeights::Cuda(m) => m.set_matmul(name),
        }
    }

    /// The names [`Model::set_cuda_matmul`] takes (empty without CUDA).
    pub fn cuda_matmul_kernels() -> Vec<String> {
        crate::model::cuda::matmul_kernels()
    }

    /// Bytes of one KV block of this model on its device (f32 on the CPU, bf16 on a GPU).
    pub fn kv_block_bytes(&self) -> usize {
        self.new_pool(1).block_bytes()
    }

    /// Bytes of device memory free now, for sizing KV pools (`None` on the CPU).
    pub fn device_memory_free(&self) -> Result<Option<usize>> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(None),
            DeviceWeights::Cuda(m) => m.memory_free().map(Some),
        }
    }

    /// The token embedding on the CPU (a GLIDE drafter shares it); `None` on a GPU.
    pub(crate) fn cpu_embedding(&self) -> Option<Projection> {
        match &self.weights {
            DeviceWeights::Cpu(w) => Some(w.embed.clone()),
            DeviceWeights::Cuda(_) => None,
        }
    }

    /// The output head on the CPU (a GLIDE drafter may take rows of it); `None` on a GPU.
    pub(crate) fn cpu_head(&self) -> Option<&Projection> {
        match &self.weights {
            DeviceWeights::Cpu(w) => Some(&w.head),
            DeviceWeights::Cuda(_) => None,
        }
    }

    /// The model on a GPU (a GLIDE drafter shares its stream, embedding and head); `None` on
    /// the CPU.
    pub(crate) fn cuda_model(&self) -> Option<&CudaModel> {
        match &self.weights {
            DeviceWeights::Cpu(_) => None,
            DeviceWeights::Cuda(m) => Some(m),
        }
    }

    /// Whether the output head is stored quantized (a GGUF target's): a GLIDE drafter then
    /// quantizes its own matrices.
    pub(crate) fn head_is_quantized(&self) -> bool {
        match &self.weights {
            DeviceWeights::Cpu(w) => w.head.is_quantized(),
            DeviceWeights::Cuda(m) => m.head_is_quantized(),
        }
    }
}
