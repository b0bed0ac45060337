//! The GLIDE proposer: a [`GlideModel`] drafting with its own cache, kept like a draft model's
//! ([`super::draft_model`]'s rounds and bookkeeping), whose cross-attention reads the target's
//! cache of the sequence through the [`TargetView`]. Its rows over the reduced vocabulary are
//! spread onto the target's (minus infinity elsewhere), so greedy drafts are target ids and a
//! sampled draft's distribution is zero outside the subset: acceptance stays exact.
//!
//! A sequence drafts with GLIDE only once the target has prefilled its prompt
//! ([`Proposer::reads_target_cache`]); the drafter reads the prompt itself at its first
//! proposal (no separate prefill, which would run before the target's).

use std::sync::Arc;

use super::draft_model::{
    draft_rounds, own_cache_blocks_needed, own_cache_catch_up, own_cache_reserve, Next,
};
use super::proposer::{Draft, ProposeInput, Proposer, ProposerState, TargetView};
use crate::error::Result;
use crate::kv::{BlockTable, KvPool};
use crate::model::{GlideModel, Logits};

/// A GLIDE proposer.
#[derive(Debug, Clone)]
pub struct GlideProposer {
    model: Arc<GlideModel>,
}

impl GlideProposer {
    pub fn new(model: Arc<GlideModel>) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &GlideModel {
        &self.model
    }
}

impl Proposer for GlideProposer {
    fn name(&self) -> &'static str {
        "glide"
    }

    fn new_pool(&self, max_blocks: usize) -> KvPool {
        self.model.new_pool(max_blocks)
    }

    fn blocks_needed(
        &self,
        _kv: &KvPool,
        state: &ProposerState,
        committed: usize,
        k: usize,
    ) -> usize {
        own_cache_blocks_needed(state, committed, k)
    }

    fn reads_target_cache(&self) -> bool {
        true
    }

    fn catch_up(&self, state: &ProposerState, committed: usize) -> usize {
        own_cache_catch_up(state, committed)
    }

    fn reserve(
        &self,
        kv: &mut KvPool,
        state: &mut ProposerState,
        committed: usize,
        k: usize,
    ) -> Result<()> {
        own_cache_reserve(kv, state, committed, k)
    }

    fn propose(
        &self,
        target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>> {
        let target_tables: Vec<&BlockTable> = batch.iter().map(|s| s.target_table).collect();
        let ctx = target.model.config().max_position_embeddings;
        let vocab = self.model.vocab();
        draft_rounds(batch, kv, ctx, |kv, inputs, seqs| {
            let tables: Vec<&BlockTable> = seqs.iter().map(|&i| target_tables[i]).collect();
            let wanted = inputs.iter().any(|s| s.logits != Logits::None);
            let out = self.model.forward(kv, inputs, target.kv, &tables)?;
            if !wanted {
                return Ok(Vec::new());
            }
            out.iter()
                .map(|t| {
                    let reduced = t.squeeze(0)?.to_vec1::<f32>()?;
                    Ok(Next::Row(vocab.expand_logits(&reduced)))
                })
                .collect()
        })
    }
}
