//! Block tables: which pool blocks hold a sequence's positions.

use super::pool::BLOCK_SIZE;

/// The blocks of one sequence in one pool, in position order: position `p` lives in slot
/// `p % BLOCK_SIZE` of block `blocks[p / BLOCK_SIZE]`. Only the pool changes a table, so its
/// counts stay right; a table must go back to its pool ([`super::KvPool::free`]) before it is
/// dropped, or its blocks stay used.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub(crate) blocks: Vec<u32>,
    pub(crate) len: usize,
}

impl BlockTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Committed positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is committed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block ids, in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Positions the table's blocks can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * BLOCK_SIZE
    }
}
