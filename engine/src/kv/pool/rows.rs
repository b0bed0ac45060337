//! The keys and values in a pool's blocks: writing one position of a table, reading a table's
//! positions as one chunk per block, and attention over those chunks on the CPU.

use specd_kernels::cpu::{self as kern, bf16, KvChunks, KvElem};

use super::{KvPool, Storage, BLOCK_SIZE};
use crate::kv::BlockTable;

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

impl KvPool {
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
    pub(super) fn chunks<'a, T>(
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
}
