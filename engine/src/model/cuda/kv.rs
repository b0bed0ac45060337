//! KV blocks in GPU memory: bf16, allocated in chunks of blocks as a pool first uses them (like
//! the CPU pool's blocks), each block laid out `[layer][keys | values][16 slots][kv_dim]`.

use std::sync::Arc;

use specd_kernels::cuda::{bf16_to_f32, Buffer, DevicePtr, Gpu};

use super::gpu_err;
use crate::error::{Error, Result};
use crate::kv::{BlockTable, BLOCK_SIZE};
use crate::model::ModelConfig;

/// Bytes aimed at per chunk allocation.
const CHUNK_BYTES: usize = 64 << 20;
/// Most blocks in one chunk.
const MAX_CHUNK_BLOCKS: usize = 256;

/// Blocks per chunk for `config`'s model (fixed per model: the kernels' block addressing, and
/// the CUDA graphs that bake it in, depend on it).
pub(crate) fn chunk_blocks(config: &ModelConfig) -> usize {
    (CHUNK_BYTES / block_bytes(config)).clamp(1, MAX_CHUNK_BLOCKS)
}

/// bf16 values in one block.
pub(crate) fn block_elems(config: &ModelConfig) -> usize {
    2 * config.num_layers * BLOCK_SIZE * config.num_kv_heads * config.head_dim
}

fn block_bytes(config: &ModelConfig) -> usize {
    block_elems(config) * 2
}

/// The block memory of one KV pool on a GPU.
#[derive(Debug)]
pub(crate) struct GpuBlocks {
    gpu: Arc<Gpu>,
    kv_dim: usize,
    block_elems: usize,
    chunk_blocks: usize,
    max_blocks: usize,
    chunks: Vec<Buffer<u16>>,
    /// Blocks handed out so far: ids `0..allocated`.
    allocated: usize,
}

impl GpuBlocks {
    pub(crate) fn new(gpu: Arc<Gpu>, config: &ModelConfig, max_blocks: usize) -> Self {
        Self {
            gpu,
            kv_dim: config.num_kv_heads * config.head_dim,
            block_elems: block_elems(config),
            chunk_blocks: chunk_blocks(config),
            max_blocks,
            chunks: Vec::new(),
            allocated: 0,
        }
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.gpu.ordinal()
    }

    pub(crate) fn allocated(&self) -> usize {
        self.allocated
    }

    pub(crate) fn block_bytes(&self) -> usize {
        self.block_elems * 2
    }

    /// The id of a new block, allocating a chunk when the last one is full.
    pub(crate) fn grow(&mut self) -> Result<u32> {
        if self.allocated >= self.max_blocks {
            return Err(Error::KvExhausted {
                needed: 1,
                free: 0,
                total: self.max_blocks,
            });
        }
        if self.allocated == self.chunks.len() * self.chunk_blocks {
            let blocks = self.chunk_blocks.min(self.max_blocks - self.allocated);
            let what = format!(
                "a chunk of {blocks} KV cache blocks ({} of {} blocks allocated)",
                self.allocated, self.max_blocks
            );
            let advice = "lower the KV cache size (--kv-mib), the batch or the context";
            let chunk = self
                .gpu
                .alloc::<u16>(blocks * self.block_elems, &what, advice)
                .map_err(gpu_err)?;
            self.chunks.push(chunk);
        }
        self.allocated += 1;
        Ok((self.allocated - 1) as u32)
    }

    /// Device addresses of the chunks, in order.
    pub(crate) fn chunk_ptrs(&self) -> Vec<DevicePtr> {
        self.chunks.iter().map(Buffer::ptr).collect()
    }

    /// The chunks this pool holds when full.
    pub(crate) fn max_chunks(&self) -> usize {
        self.max_blocks.div_ceil(self.chunk_blocks)
    }

    /// Blocks per chunk.
    pub(crate) fn chunk_blocks(&self) -> usize {
        self.chunk_blocks
    }

    fn row_ptr(&self, block: u32, layer: usize, values: bool, slot: usize) -> DevicePtr {
        let b = block as usize;
        let chunk = &self.chunks[b / self.chunk_blocks];
        let elem = (b % self.chunk_blocks) * self.block_elems
            + ((layer * 2 + usize::from(values)) * BLOCK_SIZE + slot) * self.kv_dim;
        chunk.at(elem)
    }

    /// Keys and values of `layer` for the table's committed positions, as f32.
    pub(crate) fn snapshot(&self, table: &BlockTable, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let mut keys = Vec::with_capacity(table.len() * self.kv_dim);
        let mut values = Vec::with_capacity(table.len() * self.kv_dim);
        for (b, &id) in table.blocks().iter().enumerate() {
            let rows = table.len().saturating_sub(b * BLOCK_SIZE).min(BLOCK_SIZE);
            if rows == 0 {
                break;
            }
            for (out, v) in [(&mut keys, false), (&mut values, true)] {
                let got: Vec<u16> = self
                    .gpu
                    .read(self.row_ptr(id, layer, v, 0), rows * self.kv_dim)
                    .expect("reading a KV block back from the GPU");
                out.extend(got.into_iter().map(bf16_to_f32));
            }
        }
        (keys, values)
    }

    /// A copy with its own memory.
    pub(crate) fn try_clone(&self) -> Result<Self> {
        let mut chunks = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            let copy = self
                .gpu
                .alloc::<u16>(c.len(), "a copy of a KV pool", "free GPU memory")
                .map_err(gpu_err)?;
            self.gpu
                .copy(copy.ptr(), c.ptr(), c.bytes())
                .map_err(gpu_err)?;
            chunks.push(copy);
        }
        Ok(Self {
            gpu: self.gpu.clone(),
            kv_dim: self.kv_dim,
            block_elems: self.block_elems,
            chunk_blocks: self.chunk_blocks,
            max_blocks: self.max_blocks,
            chunks,
            allocated: self.allocated,
        })
    }
}
