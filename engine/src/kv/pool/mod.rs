//! The block pool: KV memory of one model, handed out in blocks of [`BLOCK_SIZE`] token slots.
//!
//! A block holds the keys and values of [`BLOCK_SIZE`] consecutive positions of one sequence for
//! every layer, laid out `[layer][keys | values][slot][row]`, so that one layer's keys of a block
//! are one contiguous chunk for the attention kernel. Block memory is allocated the first time a
//! block is handed out and recycled after that: a pool sized for a large budget costs only what
//! it has actually used.
//!
//! - this module: the pool ([`KvPool`]), where its blocks live, and its constructors.
//! - `usage`: sizes and counts: a block's bytes, blocks in a budget, how full the pool is, and
//!   the check that its counts agree ([`KvUsage`]).
//! - `blocks`: handing blocks to block tables and taking them back: reserve, commit, truncate,
//!   free, and the prefix cache's blocks.
//! - `rows`: the keys and values in the blocks: writing a position, reading a table's chunks,
//!   attention over them.

mod blocks;
mod rows;
#[cfg(test)]
mod tests;
mod usage;

use specd_kernels::cpu::bf16;

use super::prefix::PrefixIndex;
use super::KvDtype;
use crate::model::cuda::GpuBlocks;
use crate::model::{Device, ModelConfig};

pub(crate) use rows::PoolQuery;
pub use usage::KvUsage;

/// Token slots in one block.
pub const BLOCK_SIZE: usize = 16;

/// Where a pool's blocks live.
#[derive(Debug)]
enum Storage {
    /// Host memory, f32: every block handed out so far; the index is the block id.
    Host(Vec<Box<[f32]>>),
    /// Host memory, bf16 (`--kv-dtype bf16`): half the bytes; rows are rounded to bf16 as they
    /// are written and widened exactly as attention reads them.
    HostBf16(Vec<Box<[bf16]>>),
    /// GPU memory, bf16, allocated in chunks of blocks.
    Gpu(GpuBlocks),
}

/// The KV memory of one model: block storage, the free list, the prefix cache and usage counts.
///
/// A block is *used* while a table holds it (several may: a cached prefix), *parked* while
/// none does but it is cached for its content ([`super::prefix`]), and *free* otherwise.
#[derive(Debug)]
pub struct KvPool {
    layers: usize,
    row: usize,
    max_blocks: usize,
    storage: Storage,
    /// Ids of allocated blocks neither used nor parked, reused last-freed first.
    free: Vec<u32>,
    /// Per allocated block: the tables holding it.
    refs: Vec<u32>,
    prefix: PrefixIndex,
    used: usize,
    tokens: usize,
}

impl Clone for KvPool {
    /// A copy with its own block memory (on the GPU a copy of the device memory; for tests).
    fn clone(&self) -> Self {
        Self {
            layers: self.layers,
            row: self.row,
            max_blocks: self.max_blocks,
            storage: match &self.storage {
                Storage::Host(b) => Storage::Host(b.clone()),
                Storage::HostBf16(b) => Storage::HostBf16(b.clone()),
                Storage::Gpu(g) => Storage::Gpu(
                    g.try_clone()
                        .unwrap_or_else(|e| panic!("copying a GPU KV pool: {e}")),
                ),
            },
            free: self.free.clone(),
            refs: self.refs.clone(),
            prefix: self.prefix.clone(),
            used: self.used,
            tokens: self.tokens,
        }
    }
}

impl KvPool {
    /// A pool for a model with `layers` layers and `row` floats of keys (and of values) per token
    /// and layer, holding at most `max_blocks` blocks, in f32.
    pub fn new(layers: usize, row: usize, max_blocks: usize) -> Self {
        Self::with_dtype(layers, row, max_blocks, KvDtype::F32)
    }

    /// As [`KvPool::new`], storing elements of `dtype`.
    pub fn with_dtype(layers: usize, row: usize, max_blocks: usize, dtype: KvDtype) -> Self {
        Self {
            layers,
            row,
            max_blocks,
            storage: match dtype {
                KvDtype::F32 => Storage::Host(Vec::new()),
                KvDtype::Bf16 => Storage::HostBf16(Vec::new()),
            },
            free: Vec::new(),
            refs: Vec::new(),
            prefix: PrefixIndex::default(),
            used: 0,
            tokens: 0,
        }
    }

    /// A pool of `config`'s model whose blocks live in GPU memory.
    pub(crate) fn on_gpu(blocks: GpuBlocks, config: &ModelConfig, max_blocks: usize) -> Self {
        Self {
            layers: config.num_layers,
            row: config.num_kv_heads * config.head_dim,
            max_blocks,
            storage: Storage::Gpu(blocks),
            free: Vec::new(),
            refs: Vec::new(),
            prefix: PrefixIndex::default(),
            used: 0,
            tokens: 0,
        }
    }

    /// A pool of `max_blocks` blocks of `dtype` for `config`'s model.
    pub fn for_model(config: &ModelConfig, max_blocks: usize, dtype: KvDtype) -> Self {
        Self::with_dtype(
            config.num_layers,
            config.num_kv_heads * config.head_dim,
            max_blocks,
            dtype,
        )
    }

    /// Layers and floats of keys (and of values) per token and layer this pool holds.
    pub(crate) fn row_shape(&self) -> (usize, usize) {
        (self.layers, self.row)
    }

    /// The device the blocks live on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Host(_) | Storage::HostBf16(_) => Device::Cpu,
            Storage::Gpu(g) => Device::Cuda(g.ordinal()),
        }
    }

    /// The GPU blocks, for the CUDA forward.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn gpu_blocks(&self) -> Option<&GpuBlocks> {
        match &self.storage {
            Storage::Gpu(g) => Some(g),
            Storage::Host(_) | Storage::HostBf16(_) => None,
        }
    }

    /// The element type of the blocks (bf16 on a GPU).
    pub fn dtype(&self) -> KvDtype {
        match &self.storage {
            Storage::Host(_) => KvDtype::F32,
            Storage::HostBf16(_) | Storage::Gpu(_) => KvDtype::Bf16,
        }
    }

    fn allocated(&self) -> usize {
        match &self.storage {
            Storage::Host(b) => b.len(),
            Storage::HostBf16(b) => b.len(),
            Storage::Gpu(g) => g.allocated(),
        }
    }

    fn block_floats(&self) -> usize {
        2 * self.layers * BLOCK_SIZE * self.row
    }
}
