//! The pool's unit tests: counts and rows through reserve, commit, truncate and free; the
//! prefix cache's shared, parked and evicted blocks; bf16 storage.

use super::*;
use crate::error::Error;
use crate::kv::BlockTable;

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
