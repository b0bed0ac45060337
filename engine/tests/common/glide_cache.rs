//! Shared by the GLIDE tests on the CPU (`glide.rs`, `glide_golden.rs`, `glide_q8.rs`) and the
//! GPU (`gpu_glide.rs`): a target's cache of some tokens (and its last hidden row), a GLIDE
//! drafter's logits rows read against it (at once, or drafted row by row by a chaining
//! drafter), the golden fixtures' inputs and logits, and the rows verification keeps for a
//! drafter that reads the target's hidden state.
// Each test crate uses a part.
#![allow(dead_code)]

use std::path::Path;

use specd_engine::kv::{BlockTable, KvPool};
use specd_engine::model::{
    DraftRows, FeatureRow, FeatureSource, GlideModel, Logits, Model, SeqInput, TargetKv,
};
use specd_engine::speculative::{Sequence, Speculator};

/// A golden.py fixture's input and PyTorch's answer: its tokens, how many of them the target
/// has verified, and the drafter's logits for every token.
pub struct Golden {
    pub tokens: Vec<u32>,
    pub verified: usize,
    pub expected: Vec<Vec<f32>>,
}

impl Golden {
    pub fn read(dir: &Path) -> Self {
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let tokens: Vec<u32> = golden["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let verified = golden["verified"].as_u64().unwrap() as usize;
        let expected = candle_core::safetensors::load(
            dir.join("logits.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .remove("logits")
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
        assert_eq!(expected.len(), tokens.len());
        Self {
            tokens,
            verified,
            expected,
        }
    }
}

/// A chaining drafter's rows of `tokens`: the first `verified + 1` in one forward (the last of
/// them reading `hidden`, the target's row before it), then one row per forward, each reading
/// the final row the forward before handed back.
pub fn chained_rows(
    glide: &GlideModel,
    tokens: &[u32],
    verified: usize,
    target_kv: &KvPool,
    target_table: &BlockTable,
    hidden: Vec<f32>,
) -> Vec<Vec<f32>> {
    let mut pool = glide.new_pool(64);
    let mut table = BlockTable::new();
    let mut feature = (verified, hidden, FeatureSource::Target);
    let mut rows = Vec::new();
    let mut fed = 0;
    for end in verified + 1..=tokens.len() {
        let (out, own) = glide
            .forward_drafting(
                &mut pool,
                &mut [SeqInput {
                    table: &mut table,
                    tokens: &tokens[fed..end],
                    logits: Logits::All,
                }],
                TargetKv {
                    kv: target_kv,
                    tables: &[target_table],
                },
                &[Some(FeatureRow {
                    position: feature.0,
                    hidden: &feature.1,
                    source: feature.2,
                })],
                false,
            )
            .unwrap();
        let DraftRows::Logits(out) = out else {
            panic!("logits asked for")
        };
        rows.extend(out[0].to_vec2::<f32>().unwrap());
        let own = own
            .expect("a chaining drafter hands its rows back")
            .remove(0);
        assert_eq!(own.len(), end - fed, "one final row per row fed");
        feature = (end, own.last().unwrap().clone(), FeatureSource::Drafter);
        fed = end;
    }
    rows
}

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
    let row = cache_keeping_last_hidden(m, &mut pool, &mut table, tokens);
    (pool, table, row)
}

/// Caches `tokens` (at least one) in `pool` under `table` and returns the target's final
/// normed hidden row at the last of them.
pub fn cache_keeping_last_hidden(
    m: &Model,
    pool: &mut KvPool,
    table: &mut BlockTable,
    tokens: &[u32],
) -> Vec<f32> {
    let (_, mut hidden) = m
        .forward_keeping_hidden(
            pool,
            &mut [SeqInput {
                table,
                tokens,
                logits: Logits::Last,
            }],
        )
        .unwrap();
    hidden.remove(0).remove(0)
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
                TargetKv {
                    kv: target_kv,
                    tables: &[target_table],
                },
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
