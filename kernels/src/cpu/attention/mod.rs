//! Causal multi-head attention of new tokens over a KV cache, for a batch of sequences.
//!
//! Work is split into items of (sequence, key/value head, block of up to [`ROW_BLOCK`] new
//! rows). An item reads each cached key and value row of its head once and uses it for every
//! query head of the group (grouped-query attention) and every new row of the block (the k + 1
//! rows of a verification), so the cache streams once per item, not once per query head and
//! row. Items run on the engine's thread pool when the batch holds enough work.
//!
//! Each (row, query head) output is computed by the same arithmetic in the same order whatever
//! the batch, the blocking, the thread split or the instruction set: scores in position order,
//! their maximum, `exp` and sum in position order, then the weighted values in position order.
//! So a sequence's attention is bit-identical alone or in a batch.

use std::ops::Range;

pub use half::bf16;

mod item;
mod lanes;

use self::item::{Item, ItemScratch};

/// Runs a closure over index ranges that together cover `0..n`, possibly on several threads.
/// The engine plugs in the thread pool its matrix products already use, so that attention
/// does not wake a second pool on the same cores.
pub trait ParallelFor: Sync {
    /// Calls `f` on disjoint ranges covering `0..n` and returns when all calls are done.
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync));
}

/// Everything on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl ParallelFor for Serial {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        f(0..n)
    }
}

/// The head layout of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Each query sees only the last `window` positions, itself included.
    pub sliding_window: Option<usize>,
}

/// An element of a KV cache: f32, or bf16 (half the memory; widened exactly to f32 as read, so
/// attention over bf16 keys and values gives the bits it gives over their f32 widenings).
///
/// Sealed: the vector loads of the attention loops know exactly these two layouts.
pub trait KvElem: Copy + Send + Sync + 'static + sealed::Sealed {
    /// Whether the element is a bf16 (else an f32).
    const BF16: bool;
    fn widen(self) -> f32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::bf16 {}
}

impl KvElem for f32 {
    const BF16: bool = false;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl KvElem for bf16 {
    const BF16: bool = true;
    /// bf16 is the top half of an f32: a shift, which vectorizes.
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// A sequence's cached keys and values as runs of consecutive token rows (one run for a
/// contiguous cache, one per block for a paged one). Each row is `n_kv_heads * head_dim`
/// elements.
#[derive(Debug, Clone, Copy)]
pub struct KvChunks<'a, T = f32> {
    pub keys: &'a [&'a [T]],
    pub values: &'a [&'a [T]],
}

/// One sequence of a batched attention call: `n` new rows whose first sits at position
/// `start`, over a cache that already holds positions `0..start + n`.
#[derive(Debug)]
pub struct AttentionRows<'a, T = f32> {
    /// New row `t`'s query head `h` starts at `q[t * q_stride + h * head_dim]` (`q_stride` is
    /// at least `n_heads * head_dim`: the queries may sit inside wider rows, such as a fused
    /// QKV product's).
    pub q: &'a [f32],
    pub q_stride: usize,
    pub start: usize,
    pub kv: KvChunks<'a, T>,
    /// `[n, n_heads * head_dim]`, overwritten.
    pub out: &'a mut [f32],
}

/// New rows an item takes at most: their scores stay in cache together.
const ROW_BLOCK: usize = 8;

/// Below this many multiply-adds a batch runs on the calling thread (waking the pool would
/// cost more).
const SERIAL_WORK: usize = 1 << 18;

/// Computes attention for `n` new query rows of one sequence whose first new token sits at
/// position `start`; the cache must already hold keys and values for positions `0..start + n`.
///
/// `q` is `[n, n_heads * head_dim]`; the result is written to `out` of the same shape.
pub fn attention<T: KvElem>(
    q: &[f32],
    start: usize,
    kv: KvChunks<'_, T>,
    shape: AttentionShape,
    out: &mut [f32],
    par: &dyn ParallelFor,
) {
    assert_eq!(out.len(), q.len(), "attention: output shape");
    let q_stride = shape.n_heads * shape.head_dim;
    let seq = AttentionRows {
        q,
        q_stride,
        start,
        kv,
        out,
    };
    attention_batch(&mut [seq], shape, par);
}

/// [`attention`] for several sequences at once, in parallel over sequences, key/value heads and
/// blocks of new rows. Each sequence's result is bit-identical to [`attention`] on it alone.
pub fn attention_batch<T: KvElem>(
    seqs: &mut [AttentionRows<'_, T>],
    shape: AttentionShape,
    par: &dyn ParallelFor,
) {
    attention_with(Simd::detect(), seqs, shape, par)
}

/// One sequence as the items read it.
struct SeqView<'a, T> {
    q: &'a [f32],
    q_stride: usize,
    start: usize,
    kv: KvChunks<'a, T>,
    /// The position of each chunk's first row.
    chunk_starts: Vec<usize>,
    /// Output row length, `n_heads * head_dim`.
    q_row: usize,
    out: SharedOut,
}

/// An output buffer shared by threads that write disjoint (row, head) slices of it.
struct SharedOut(*mut f32);
// SAFETY: every item writes only the heads of its key/value head for the rows of its block;
// items are disjoint, and the buffer outlives them (`for_each_range` returns when all finish).
unsafe impl Sync for SharedOut {}
// SAFETY: as for `Sync`.
unsafe impl Send for SharedOut {}

fn attention_with<T: KvElem>(
    simd: Simd,
    seqs: &mut [AttentionRows<'_, T>],
    shape: AttentionShape,
    par: &dyn ParallelFor,
) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        ..
    } = shape;
    assert!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        "attention: {n_heads} query heads over {n_kv_heads} key/value heads"
    );
    let (q_row, kv_row) = (n_heads * head_dim, n_kv_heads * head_dim);
    let mut views = Vec::with_capacity(seqs.len());
    let mut items = Vec::new();
    let mut work = 0usize;
    for (s, seq) in seqs.iter_mut().enumerate() {
        assert!(
            seq.out.len().is_multiple_of(q_row),
            "attention: output of {} values is not rows of {q_row}",
            seq.out.len()
        );
        let n = seq.out.len() / q_row;
        assert!(
            seq.q_stride >= q_row && (n == 0 || seq.q.len() >= (n - 1) * seq.q_stride + q_row),
            "attention: {} query values with stride {} for {n} rows of {q_row}",
            seq.q.len(),
            seq.q_stride
        );
        let mut chunk_starts = Vec::with_capacity(seq.kv.keys.len());
        let mut total = 0;
        for (k, v) in seq.kv.keys.iter().zip(seq.kv.values) {
            assert_eq!(k.len(), v.len(), "attention: key and value chunks differ");
            chunk_starts.push(total);
            total += k.len() / kv_row;
        }
        assert!(
            total >= seq.start + n,
            "attention: cache holds {total} rows, need {}",
            seq.start + n
        );
        let blocks = n.div_ceil(ROW_BLOCK);
        for b in 0..blocks {
            // Even blocks: 9 rows go as 5 + 4, not 8 + 1.
            let rows = b * n / blocks..(b + 1) * n / blocks;
            work += rows.len() * n_heads * (seq.start + rows.end) * head_dim;
            for kv_head in 0..n_kv_heads {
                items.push(Item {
                    seq: s,
                    kv_head,
                    rows: rows.clone(),
                });
            }
        }
        views.push(SeqView {
            q: seq.q,
            q_stride: seq.q_stride,
            start: seq.start,
            kv: seq.kv,
            chunk_starts,
            q_row,
            out: SharedOut(seq.out.as_mut_ptr()),
        });
    }
    let run = |range: Range<usize>| {
        let mut scratch = ItemScratch::default();
        for it in &items[range] {
            it.run(simd, &views[it.seq], shape, &mut scratch);
        }
    };
    if work <= SERIAL_WORK {
        run(0..items.len());
    } else {
        par.for_each_range(items.len(), &run);
    }
}

/// The widest vector instructions this CPU has for the attention loops (`lanes.rs`: the same
/// operations in the same order for each, so every width gives the portable build's bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

#[cfg(test)]
mod tests;
