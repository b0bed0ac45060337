//! Shared by the GLIDE tests on the CPU (`glide.rs`) and the GPU (`gpu_glide.rs`): a target's
//! cache of some tokens (and its last hidden row), a GLIDE drafter's logits rows read against
//! it, and the rows verification keeps for a drafter that reads the target's hidden state.

use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::{GlideModel, Logits, Model, SeqInput};
use specd_engine::speculative::{Sequence, Speculator};

/// The target's cache of `tokens` (none: an empty cache) in a pool of its own.
pub fn target_cache(m: &Model, tokens: &[u32]) -> (KvPool, BlockTable) {
    let mut pool = m.new_pool(64);
    let mut table = BlockTable::new();
    if !tokens.is_empty() {
        m.forward(
            &mut pool,
            &mut [SeqInput {
                table: &mut table,
                tokens,
                logits: Logits::None,
            }],
        )
        .unwrap();
    }
    (pool, table)
}

/// The target's cache of `tokens` (at least one) in a pool of its own, and its final normed
/// hidden row at the last of them: what a drafter's feature reads at the position after.
pub fn target_cache_and_hidden(m: &Model, tokens: &[u32]) -> (KvPool, BlockTable, Vec<f32>) {
    let mut pool = m.new_pool(64);
    let mut table = BlockTable::new();
    let (_, mut hidden) = m
        .forward_keeping_hidden(
            &mut pool,
            &mut [SeqInput {
                table: &mut table,
                tokens,
                logits: Logits::Last,
            }],
        )
        .unwrap();
    let row = hidden.remove(0).remove(0);
    (pool, table, row)
}

/// The drafter's logits rows for `tokens` fed from position 0, `chunk` tokens per forward,
/// reading the target's cache `target_kv` / `target_table`.
pub fn glide_rows(
    glide: &GlideModel,
    tokens: &[u32],
    chunk: usize,
    target_kv: &KvPool,
    target_table: &BlockTable,
) -> Vec<Vec<f32>> {
    let mut pool = glide.new_pool(64);
    let mut table = BlockTable::new();
    let mut rows = Vec::new();
    for part in tokens.chunks(chunk) {
        let out = glide
            .forward(
                &mut pool,
                &mut [SeqInput {
                    table: &mut table,
                    tokens: part,
                    logits: Logits::All,
                }],
                target_kv,
                &[target_table],
            )
            .unwrap();
        rows.extend(out[0].to_vec2::<f32>().unwrap());
    }
    rows
}

/// Steps the prefilled `seqs` with `spec` until all finish; after every step, each running
/// sequence must hold the target's row that chose its last committed token, at that token's
/// position, and `same(kept, whole)` compares it with the row a forward of `target` over the
/// sequence's tokens before it computes. Returns the rows checked.
pub fn step_checking_kept_rows(
    target: &Model,
    spec: &mut Speculator<'_>,
    seqs: &mut [Sequence],
    mut same: impl FnMut(&[f32], &[f32]),
) -> usize {
    let mut checked = 0;
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut batch: Vec<&mut Sequence> = seqs.iter_mut().filter(|s| !s.is_finished()).collect();
        spec.step(&mut batch).unwrap();
        for s in batch.iter().filter(|s| !s.is_finished()) {
            let tokens = s.tokens();
            let (position, kept) = s
                .proposer_state()
                .feature()
                .expect("a verified sequence holds its feature");
            assert_eq!(position, tokens.len() - 1, "the last committed token's row");
            let (_, _, whole) = target_cache_and_hidden(target, &tokens[..position]);
            same(kept, &whole);
            checked += 1;
        }
    }
    checked
}
