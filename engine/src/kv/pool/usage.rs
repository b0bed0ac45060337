//! A pool's sizes and counts: the bytes of a block, how many blocks fit a budget, how full the
//! pool is ([`KvUsage`]), and the check that its counts agree.

use specd_kernels::cpu::bf16;

use super::{KvPool, Storage, BLOCK_SIZE};
use crate::model::ModelConfig;

/// How full a pool is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks held by block tables.
    pub blocks_used: usize,
    /// Blocks the pool may hand out.
    pub blocks_total: usize,
    /// Positions committed across all tables (fewer than `blocks_used * BLOCK_SIZE`: the last
    /// block of a sequence is partly filled, and reservations hold empty slots; a block that
    /// several tables share counts once for each).
    pub tokens_cached: usize,
    /// Blocks no table holds, kept for the prefix they hold until new positions need them
    /// (counted free: [`KvPool::blocks_free`]).
    pub blocks_parked: usize,
}

impl KvUsage {
    /// Blocks used over blocks total, 0 for an empty pool.
    pub fn utilization(&self) -> f64 {
        if self.blocks_total == 0 {
            0.0
        } else {
            self.blocks_used as f64 / self.blocks_total as f64
        }
    }
}

impl KvPool {
    /// Bytes of one f32 block of `config`'s model.
    pub fn block_bytes_for(config: &ModelConfig) -> usize {
        2 * config.num_layers
            * config.num_kv_heads
            * config.head_dim
            * BLOCK_SIZE
            * std::mem::size_of::<f32>()
    }

    /// How many f32 blocks of `config`'s model fit in `bytes` (at least one).
    pub fn blocks_in_budget(config: &ModelConfig, bytes: usize) -> usize {
        (bytes / Self::block_bytes_for(config)).max(1)
    }

    /// Bytes of one block (f32 or bf16 on the CPU, bf16 on a GPU).
    pub fn block_bytes(&self) -> usize {
        match &self.storage {
            Storage::Host(_) => self.block_floats() * std::mem::size_of::<f32>(),
            Storage::HostBf16(_) => self.block_floats() * std::mem::size_of::<bf16>(),
            Storage::Gpu(g) => g.block_bytes(),
        }
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_SIZE)
    }

    /// Usage counts.
    pub fn usage(&self) -> KvUsage {
        KvUsage {
            blocks_used: self.used,
            blocks_total: self.max_blocks,
            tokens_cached: self.tokens,
            blocks_parked: self.prefix.parked(),
        }
    }

    /// Blocks no table holds (parked ones included: they are taken when needed).
    pub fn blocks_free(&self) -> usize {
        self.max_blocks - self.used
    }

    /// Bytes of block memory allocated so far (the high-water mark of use).
    pub fn allocated_bytes(&self) -> usize {
        self.allocated() * self.block_bytes()
    }

    /// Checks that the pool's counts agree with its free list, its reference counts and its
    /// prefix cache (for tests).
    pub fn check_consistency(&self) -> std::result::Result<(), String> {
        let allocated = self.allocated();
        let parked = self.prefix.parked();
        if allocated != self.used + self.free.len() + parked {
            return Err(format!(
                "{allocated} blocks allocated, but {} used + {} free + {parked} parked",
                self.used,
                self.free.len()
            ));
        }
        let held = self.refs.iter().filter(|&&r| r > 0).count();
        if held != self.used {
            return Err(format!("{held} blocks referenced, but {} used", self.used));
        }
        let mut seen = vec![false; allocated];
        for &id in &self.free {
            if std::mem::replace(&mut seen[id as usize], true) {
                return Err(format!("block {id} is on the free list twice"));
            }
            if self.refs[id as usize] > 0 || self.prefix.is_cached(id) {
                return Err(format!("free block {id} is held or cached"));
            }
        }
        self.prefix.check()
    }
}
