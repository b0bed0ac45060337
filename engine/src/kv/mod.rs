//! The paged KV cache.
//!
//! - [`pool`]: [`KvPool`], the KV memory of one model in blocks of [`BLOCK_SIZE`] positions
//!   (all layers), with reserve / commit / truncate / free and usage counts.
//! - [`table`]: [`BlockTable`], the blocks of one sequence.
//! - `prefix`: the prefix cache, full blocks remembered by the tokens they hold, which a new
//!   sequence with the same start takes instead of computing them again.
//!
//! A forward reads a sequence's keys and values through its block table as one chunk per
//! block, and writes new positions into reserved slots. [`SequenceCache`] bundles a private
//! pool with one table, for running a single sequence outside the engine.

pub mod pool;
pub(crate) mod prefix;
pub mod table;

pub use pool::{KvPool, KvUsage, BLOCK_SIZE};
pub use table::BlockTable;

use serde::{Deserialize, Serialize};

/// The element type of a KV cache on the CPU (`--kv-dtype`; on a GPU it is always bf16).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    /// 4 bytes an element: attention reads exactly what the forward computed.
    #[default]
    F32,
    /// 2 bytes an element: half the memory and half the bytes attention streams at depth; keys
    /// and values are rounded to bf16 (8 bits of mantissa) as they are stored.
    Bf16,
}

/// One sequence's cache with a pool of its own, which grows up to the context length. For
/// single-sequence use (tools, tests); the engine shares one pool among all sequences.
#[derive(Debug)]
pub struct SequenceCache {
    pub(crate) pool: KvPool,
    pub(crate) table: BlockTable,
}

impl Clone for SequenceCache {
    /// A copy with its own pool: the copy and the original then evolve independently.
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            table: BlockTable {
                blocks: self.table.blocks.clone(),
                len: self.table.len,
            },
        }
    }
}

impl SequenceCache {
    /// An empty cache for `layers` layers of `row` floats per token, up to `max_len` positions.
    pub fn new(layers: usize, row: usize, max_len: usize) -> Self {
        Self::with_pool(KvPool::new(layers, row, KvPool::blocks_for(max_len)))
    }

    /// An empty cache in `pool`, which it keeps to itself.
    pub fn with_pool(pool: KvPool) -> Self {
        Self {
            pool,
            table: BlockTable::new(),
        }
    }

    /// Committed positions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.pool.truncate(&mut self.table, len);
    }

    /// Bytes of block memory allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.pool.allocated_bytes()
    }

    /// The pool and the table, for a forward.
    pub fn parts(&mut self) -> (&mut KvPool, &mut BlockTable) {
        (&mut self.pool, &mut self.table)
    }

    /// The stored rows of `layer` for positions `0..len`, for tests comparing caches.
    pub fn layer_snapshot(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        self.pool.layer_snapshot(&self.table, layer)
    }
}
