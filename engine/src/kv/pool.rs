//! The block pool: KV memory of one model, handed out in blocks of [`BLOCK_SIZE`] token slots.
//!
//! A block holds the keys and values of [`BLOCK_SIZE`] consecutive positions of one sequence for
//! every layer, laid out `[layer][keys | values][slot][row]`, so that one layer's keys of a block
//! are one contiguous chunk for the attention kernel. Block memory is allocated the first time a
//! block is handed out and recycled after that: a pool sized for a large budget costs only what
//! it has actually used.

use specd_kernels::cpu::{self as kern, bf16, KvChunks, KvElem};

use super::prefix::PrefixIndex;
use super::table::BlockTable;
use super::KvDtype;
use crate::error::{Error, Result};
use crate::model::cuda::GpuBlocks;
use crate::model::{Device, ModelConfig};

/// Token slots in one block.
pub const BLOCK_SIZE: usize = 16;

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

/// One sequence's part of [`KvPool::attention`]: new rows whose first sits at position
/// `start`, attending over positions `0..upto` of `table`.
pub(crate) struct PoolQuery<'a> {
    pub(crate) table: &'a BlockTable,
    pub(crate) upto: usize,
    /// New row `t`'s query heads start at `q[t * q_stride]`.
    pub(crate) q: &'a [f32],
    pub(crate) q_stride: usize,
    pub(crate) start: usize,
    /// `[rows, n_heads * head_dim]`.
    pub(crate) out: &'a mut [f32],
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

    /// A pool of `max_blocks` blocks of `dtype` for `config`'s model.
    pub fn for_model(config: &ModelConfig, max_blocks: usize, dtype: KvDtype) -> Self {
        Self::with_dtype(
            config.num_layers,
            config.num_kv_heads * config.head_dim,
            max_blocks,
            dtype,
        )
    }

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

    fn block_floats(&self) -> usize {
        2 * self.layers * BLOCK_SIZE * self.row
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

    /// Writes the keys and values of position `pos` of `table` for `layer`. The position must
    /// be reserved; it becomes part of the sequence on [`KvPool::commit`].
    pub(crate) fn write(
        &mut self,
        table: &BlockTable,
        pos: usize,
        layer: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let row = self.row;
        let id = table.blocks[pos / BLOCK_SIZE] as usize;
        let base = 2 * layer * BLOCK_SIZE * row + (pos % BLOCK_SIZE) * row;
        match &mut self.storage {
            Storage::Host(blocks) => {
                let block = &mut blocks[id];
                block[base..base + row].copy_from_slice(keys);
                let base = base + BLOCK_SIZE * row;
                block[base..base + row].copy_from_slice(values);
            }
            Storage::HostBf16(blocks) => {
                let block = &mut blocks[id];
                let narrow = |dst: &mut [bf16], src: &[f32]| {
                    for (d, &x) in dst.iter_mut().zip(src) {
                        *d = bf16::from_f32(x);
                    }
                };
                narrow(&mut block[base..base + row], keys);
                let base = base + BLOCK_SIZE * row;
                narrow(&mut block[base..base + row], values);
            }
            Storage::Gpu(_) => panic!("host write to a GPU KV pool"),
        }
    }

    /// The keys and values of positions `0..upto` of `table` for `layer`, one chunk per block.
    fn chunks<'a, T>(
        &self,
        blocks: &'a [Box<[T]>],
        table: &BlockTable,
        layer: usize,
        upto: usize,
    ) -> (Vec<&'a [T]>, Vec<&'a [T]>) {
        let row = self.row;
        let n_blocks = Self::blocks_for(upto);
        let mut keys = Vec::with_capacity(n_blocks);
        let mut values = Vec::with_capacity(n_blocks);
        for (b, &id) in table.blocks[..n_blocks].iter().enumerate() {
            let rows = (upto - b * BLOCK_SIZE).min(BLOCK_SIZE);
            let block = &blocks[id as usize];
            let base = 2 * layer * BLOCK_SIZE * row;
            keys.push(&block[base..base + rows * row]);
            let base = base + BLOCK_SIZE * row;
            values.push(&block[base..base + rows * row]);
        }
        (keys, values)
    }

    /// Attention for a batch of sequences over their caches in `layer`
    /// ([`kern::attention_batch`]), whatever the blocks' element type.
    pub(crate) fn attention(
        &self,
        layer: usize,
        queries: &mut [PoolQuery<'_>],
        shape: kern::AttentionShape,
        par: &dyn kern::ParallelFor,
    ) {
        fn run<T: KvElem>(
            pool: &KvPool,
            blocks: &[Box<[T]>],
            (layer, queries): (usize, &mut [PoolQuery<'_>]),
            shape: kern::AttentionShape,
            par: &dyn kern::ParallelFor,
        ) {
            let chunks: Vec<_> = queries
                .iter()
                .map(|q| pool.chunks(blocks, q.table, layer, q.upto))
                .collect();
            let mut seqs: Vec<kern::AttentionRows<'_, T>> = queries
                .iter_mut()
                .zip(&chunks)
                .map(|(q, (keys, values))| kern::AttentionRows {
                    q: q.q,
                    q_stride: q.q_stride,
                    start: q.start,
                    kv: KvChunks { keys, values },
                    out: &mut *q.out,
                })
                .collect();
            kern::attention_batch(&mut seqs, shape, par);
        }
        match &self.storage {
            Storage::Host(b) => run(self, b, (layer, queries), shape, par),
            Storage::HostBf16(b) => run(self, b, (layer, queries), shape, par),
            Storage::Gpu(_) => panic!("host attention over a GPU KV pool"),
        }
    }

    /// Makes `n` written positions part of `table`'s sequence.
    pub(crate) fn commit(&mut self, table: &mut BlockTable, n: usize) {
        debug_assert!(table.len + n <= table.blocks.len() * BLOCK_SIZE);
        table.len += n;
        self.tokens += n;
    }

    /// The stored rows of `layer` for positions `0..table.len()`, for tests comparing caches
    /// (copied back from a GPU, as f32).
    pub fn layer_snapshot(&self, table: &BlockTable, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let widen = |(k, v): (Vec<&[bf16]>, Vec<&[bf16]>)| {
            let all = |c: Vec<&[bf16]>| c.concat().iter().map(|x| x.to_f32()).collect();
            (all(k), all(v))
        };
        match &self.storage {
            Storage::Gpu(g) => g.snapshot(table, layer),
            Storage::Host(b) => {
                let (k, v) = self.chunks(b, table, layer, table.len());
                (k.concat(), v.concat())
            }
            Storage::HostBf16(b) => widen(self.chunks(b, table, layer, table.len())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: f32, n: usize) -> Vec<f32> {
        vec![v; n]
    }

    #[test]
    fn reserve_commit_truncate_free_keep_counts_and_rows() {
        let mut pool = KvPool::new(2, 3, 5);
        let mut a = BlockTable::new();
        pool.reserve(&mut a, 20).unwrap();
        assert_eq!(a.blocks().len(), 2);
        for p in 0..20 {
            for l in 0..2 {
                pool.write(&a, p, l, &row(p as f32, 3), &row(-(p as f32) - l as f32, 3));
            }
        }
        pool.commit(&mut a, 20);
        assert_eq!(pool.usage().tokens_cached, 20);
        let Storage::Host(blocks) = &pool.storage else {
            unreachable!("an f32 pool")
        };
        let (k, v) = pool.chunks(blocks, &a, 1, 20);
        assert_eq!(k.iter().map(|c| c.len()).collect::<Vec<_>>(), [48, 12]);
        assert_eq!(k[1][0], 16.0);
        assert_eq!(v[1][0], -17.0);
        // Rollback into the first block gives the second back.
        pool.truncate(&mut a, 16);
        assert_eq!((pool.usage().blocks_used, a.len()), (1, 16));
        assert_eq!(pool.layer_snapshot(&a, 0).0.len(), 16 * 3);
        // All or nothing: 5 blocks total, 1 used, asking for 5 more fails and takes none.
        let mut b = BlockTable::new();
        let e = pool.reserve(&mut b, 5 * BLOCK_SIZE).unwrap_err();
        assert!(
            matches!(
                e,
                Error::KvExhausted {
                    needed: 5,
                    free: 4,
                    total: 5
                }
            ),
            "{e}"
        );
        assert_eq!(pool.usage().blocks_used, 1);
        pool.reserve(&mut b, 4 * BLOCK_SIZE).unwrap();
        assert_eq!(pool.blocks_free(), 0);
        pool.free(&mut a);
        pool.free(&mut b);
        assert_eq!(
            pool.usage(),
            KvUsage {
                blocks_used: 0,
                blocks_total: 5,
                tokens_cached: 0,
                blocks_parked: 0,
            }
        );
        pool.check_consistency().unwrap();
        // Memory stays allocated for reuse, and is never more than was used at once.
        assert_eq!(pool.allocated_bytes(), 5 * pool.block_bytes());
    }

    /// Writes `n` positions after `table`'s committed ones, each row filled with its token.
    fn fill(pool: &mut KvPool, table: &mut BlockTable, tokens: &[u32]) {
        pool.reserve(table, tokens.len()).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            let p = table.len() + i;
            pool.write(table, p, 0, &row(t as f32, 2), &row(-(t as f32), 2));
        }
        pool.commit(table, tokens.len());
    }

    #[test]
    fn a_cached_prefix_is_shared_parked_and_taken_back_last() {
        let mut pool = KvPool::new(1, 2, 6);
        let prompt: Vec<u32> = (0..40).collect();
        let mut a = BlockTable::new();
        fill(&mut pool, &mut a, &prompt);
        pool.cache_prefix(&a, &prompt);
        assert_eq!(
            pool.blocks_cached(),
            2,
            "the two whole blocks of 40 positions"
        );
        // Another sequence with the same first 35 tokens takes both whole blocks.
        let other: Vec<u32> = prompt[..35].iter().copied().chain([900, 901]).collect();
        let mut b = BlockTable::new();
        assert_eq!(pool.attach_prefix(&mut b, &other), 2 * BLOCK_SIZE);
        assert_eq!(b.blocks(), &a.blocks()[..2]);
        assert_eq!(
            pool.layer_snapshot(&b, 0).0,
            pool.layer_snapshot(&a, 0).0[..64]
        );
        fill(&mut pool, &mut b, &other[32..]);
        assert_eq!(pool.usage().blocks_used, 4, "a: 3 blocks, b: 1 of its own");
        pool.check_consistency().unwrap();
        // Only a prefix of whole blocks is taken, and only the same tokens.
        let mut c = BlockTable::new();
        assert_eq!(pool.attach_prefix(&mut c, &prompt[..31]), BLOCK_SIZE);
        pool.free(&mut c);
        assert_eq!(pool.attach_prefix(&mut c, &[7; 40]), 0);
        // Freed by both, the cached blocks are parked (counted free), the rest freed.
        pool.free(&mut a);
        pool.free(&mut b);
        let u = pool.usage();
        assert_eq!((u.blocks_used, u.blocks_parked), (0, 2));
        assert_eq!(pool.blocks_free(), 6);
        pool.check_consistency().unwrap();
        // The parked prefix is found again...
        let mut d = BlockTable::new();
        assert_eq!(pool.attach_prefix(&mut d, &prompt), 2 * BLOCK_SIZE);
        pool.free(&mut d);
        // ...until new positions need blocks beyond the free ones: then the parked ones go, the
        // later block of the prefix first, before the pool allocates more memory.
        let allocated = pool.allocated_bytes();
        let mut e = BlockTable::new();
        pool.reserve(&mut e, 2 * BLOCK_SIZE).unwrap();
        assert_eq!(pool.usage().blocks_parked, 2, "two free blocks first");
        pool.reserve(&mut e, 3 * BLOCK_SIZE).unwrap();
        assert_eq!(pool.usage().blocks_parked, 1);
        assert_eq!(
            pool.allocated_bytes(),
            allocated,
            "no new memory while blocks are parked"
        );
        assert_eq!(pool.attach_prefix(&mut d, &prompt), BLOCK_SIZE);
        pool.free(&mut d);
        pool.reserve(&mut e, 6 * BLOCK_SIZE).unwrap();
        assert_eq!(pool.usage().blocks_parked, 0);
        assert!(pool.allocated_bytes() > allocated);
        pool.free(&mut d);
        pool.free(&mut e);
        pool.check_consistency().unwrap();
    }

    #[test]
    fn reserving_an_exact_fit_takes_no_extra_block() {
        let mut pool = KvPool::new(1, 1, 4);
        let mut a = BlockTable::new();
        pool.reserve(&mut a, 16).unwrap();
        assert_eq!(pool.blocks_needed(&a, 0), 0);
        pool.commit(&mut a, 16);
        assert_eq!(pool.blocks_needed(&a, 1), 1);
        pool.free(&mut a);
    }

    #[test]
    fn a_bf16_pool_takes_half_the_bytes_and_keeps_rows_rounded_to_bf16() {
        let (f32_pool, mut pool) = (
            KvPool::new(2, 4, 3),
            KvPool::with_dtype(2, 4, 3, KvDtype::Bf16),
        );
        assert_eq!(2 * pool.block_bytes(), f32_pool.block_bytes());
        assert_eq!(
            (pool.dtype(), f32_pool.dtype()),
            (KvDtype::Bf16, KvDtype::F32)
        );
        let mut a = BlockTable::new();
        pool.reserve(&mut a, 3).unwrap();
        let keys = [1.0f32, 1.0 + 1.0 / 256.0, -3.3, 1e-3];
        for p in 0..3 {
            pool.write(&a, p, 1, &keys, &[p as f32; 4]);
        }
        pool.commit(&mut a, 3);
        let (k, v) = pool.layer_snapshot(&a, 1);
        let rounded: Vec<f32> = keys.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(&k[..4], &rounded[..]);
        assert_ne!(k[1], keys[1], "1 + 2^-8 is not a bf16");
        assert_eq!(&v[8..], &[2.0; 4]);
        pool.free(&mut a);
        pool.check_consistency().unwrap();
    }
}
