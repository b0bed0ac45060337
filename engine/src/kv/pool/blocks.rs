//! Handing blocks to block tables and taking them back: reserving room (a free block, a parked
//! one, or new memory), committing written positions, truncating and freeing, and the blocks
//! of cached prefixes a table takes or leaves for others.

use specd_kernels::cpu::bf16;

use super::{KvPool, Storage, BLOCK_SIZE};
use crate::error::{Error, Result};
use crate::kv::BlockTable;

impl KvPool {
    /// Blocks `table` lacks to hold `n` more positions after its committed ones.
    pub fn blocks_needed(&self, table: &BlockTable, n: usize) -> usize {
        Self::blocks_for(table.len() + n).saturating_sub(table.blocks().len())
    }

    /// Makes room in `table` for `n` positions after its committed ones. All or nothing: when
    /// the pool has too few free blocks, nothing is taken and [`Error::KvExhausted`] says how
    /// many were missing.
    pub fn reserve(&mut self, table: &mut BlockTable, n: usize) -> Result<()> {
        let needed = self.blocks_needed(table, n);
        if needed > self.blocks_free() {
            return Err(Error::KvExhausted {
                needed,
                free: self.blocks_free(),
                total: self.max_blocks,
            });
        }
        let before = table.blocks.len();
        for _ in 0..needed {
            // A free block, else the block parked longest, else a new one: the pool's memory
            // stays what its sequences used at most, the cache living in what they left.
            let id = match self.free.pop().or_else(|| self.prefix.evict_oldest()) {
                Some(id) => id,
                None => match self.allocate() {
                    Ok(id) => id,
                    Err(e) => {
                        // All or nothing: give back what this call took.
                        for id in table.blocks.drain(before..).rev() {
                            self.refs[id as usize] = 0;
                            self.free.push(id);
                        }
                        return Err(e);
                    }
                },
            };
            self.refs[id as usize] = 1;
            table.blocks.push(id);
        }
        self.used += needed;
        Ok(())
    }

    /// A new block of zeros, its id the next one.
    fn allocate(&mut self) -> Result<u32> {
        let floats = self.block_floats();
        let id = match &mut self.storage {
            Storage::Host(blocks) => {
                blocks.push(vec![0f32; floats].into());
                blocks.len() - 1
            }
            Storage::HostBf16(blocks) => {
                blocks.push(vec![bf16::ZERO; floats].into());
                blocks.len() - 1
            }
            Storage::Gpu(g) => g.grow()? as usize,
        };
        if self.refs.len() <= id {
            self.refs.resize(id + 1, 0);
        }
        Ok(id as u32)
    }

    /// Makes `n` written positions part of `table`'s sequence.
    pub(crate) fn commit(&mut self, table: &mut BlockTable, n: usize) {
        debug_assert!(table.len + n <= table.blocks.len() * BLOCK_SIZE);
        table.len += n;
        self.tokens += n;
    }

    /// Cuts `table` back to its first `len` positions (rollback of rejected drafts) and gives
    /// back the blocks it no longer needs: free, or parked if cached and no other table holds
    /// them.
    pub fn truncate(&mut self, table: &mut BlockTable, len: usize) {
        let len = len.min(table.len);
        self.tokens -= table.len - len;
        table.len = len;
        let keep = Self::blocks_for(len);
        // Last block first: a prefix's later blocks are parked, and so evicted, before earlier.
        while table.blocks.len() > keep {
            let id = table.blocks.pop().expect("more blocks than kept");
            let refs = &mut self.refs[id as usize];
            *refs -= 1;
            if *refs == 0 {
                self.used -= 1;
                if self.prefix.is_cached(id) {
                    self.prefix.park(id);
                } else {
                    self.free.push(id);
                }
            }
        }
    }

    /// Gives the empty `table` the cached blocks holding the longest prefix of `tokens` made of
    /// whole blocks, as committed positions; returns how many positions it took.
    pub fn attach_prefix(&mut self, table: &mut BlockTable, tokens: &[u32]) -> usize {
        assert!(table.blocks.is_empty(), "a prefix goes into an empty table");
        for id in self.prefix.lookup(tokens) {
            let refs = &mut self.refs[id as usize];
            if *refs == 0 {
                self.prefix.unpark(id);
                self.used += 1;
            }
            *refs += 1;
            table.blocks.push(id);
        }
        let n = table.blocks.len() * BLOCK_SIZE;
        table.len = n;
        self.tokens += n;
        n
    }

    /// Caches the whole blocks of `table`'s committed positions that are not cached yet, in
    /// order, position `p` holding `tokens[p]` (positions past `tokens` are left out); stops at
    /// a block whose prefix another block already holds (a sequence that computed it
    /// alongside).
    pub fn cache_prefix(&mut self, table: &BlockTable, tokens: &[u32]) {
        // A sequence cancelled mid-step leaves with the step's kept positions cached but its
        // tokens not committed: only positions whose tokens are known are cached.
        let full = table.len.min(tokens.len()) / BLOCK_SIZE;
        for (i, &id) in table.blocks[..full].iter().enumerate() {
            if self.prefix.is_cached(id) {
                continue;
            }
            let parent = i.checked_sub(1).map(|p| table.blocks[p]);
            let block = &tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            if !self.prefix.insert(id, parent, block) {
                return;
            }
        }
    }

    /// Blocks cached for their prefix, held by tables or parked.
    pub fn blocks_cached(&self) -> usize {
        self.prefix.cached()
    }

    /// Returns every block of `table` to the pool and empties it.
    pub fn free(&mut self, table: &mut BlockTable) {
        self.truncate(table, 0);
    }
}
