//! The GLIDE proposer: a [`GlideModel`] drafting with its own cache, kept like a draft model's
//! ([`super::draft_model`]'s rounds and bookkeeping), whose cross-attention reads the target's
//! cache of the sequence through the [`TargetView`]. Its rows over the reduced vocabulary are
//! spread onto the target's (minus infinity elsewhere), so greedy drafts are target ids and a
//! sampled draft's distribution is zero outside the subset: acceptance stays exact.
//!
//! A sequence drafts with GLIDE only once the target has prefilled its prompt
//! ([`Proposer::reads_target_cache`]); the drafter reads the prompt itself at its first
//! proposal (no separate prefill, which would run before the target's).
//!
//! Wherever GLIDE is served, so is its combination with prompt lookup
//! ([`GlideNgramProposer`], `glide+ngram`): the proposer carries it.

use std::sync::Arc;

use super::draft_model::{draft_rounds, Next};
use super::glide_ngram::{GlideNgramConfig, GlideNgramProposer};
use super::proposer::{Draft, ProposeInput, Proposer, TargetView};
use crate::error::Result;
use crate::generate::PREFILL_CHUNK;
use crate::kv::{BlockTable, KvPool};
use crate::model::{GlideModel, Logits, SeqInput};

/// A GLIDE proposer.
#[derive(Debug, Clone)]
pub struct GlideProposer {
    model: Arc<GlideModel>,
    /// The same drafter combined with prompt lookup (default settings).
    with_ngram: GlideNgramProposer,
}

impl GlideProposer {
    pub fn new(model: Arc<GlideModel>) -> Self {
        let with_ngram = GlideNgramProposer::new(model.clone(), GlideNgramConfig::default())
            .expect("the default glide+ngram settings are valid");
        Self { model, with_ngram }
    }

    pub fn model(&self) -> &GlideModel {
        &self.model
    }

    /// This drafter combined with prompt lookup (`glide+ngram`), sharing its pool.
    pub fn with_ngram(&self) -> &GlideNgramProposer {
        &self.with_ngram
    }
}

/// GLIDE's drafts for `batch`: its own cache first reads the committed tokens it lacks, then
/// drafts one token per round, chosen on its reduced vocabulary (spread onto the target's
/// only when sampling needs the whole row).
pub(super) fn glide_drafts(
    model: &GlideModel,
    target: TargetView<'_>,
    kv: &mut KvPool,
    batch: &mut [ProposeInput<'_>],
) -> Result<Vec<Draft>> {
    let target_tables: Vec<&BlockTable> = batch.iter().map(|s| s.target_table).collect();
    let ctx = target.model.config().max_position_embeddings;
    let vocab = model.vocab();
    draft_rounds(batch, kv, ctx, |kv, inputs, seqs| {
        let tables: Vec<&BlockTable> = seqs.iter().map(|&i| target_tables[i]).collect();
        let wanted = inputs.iter().any(|s| s.logits != Logits::None);
        let out = model.forward(kv, inputs, target.kv, &tables)?;
        if !wanted {
            return Ok(Vec::new());
        }
        out.iter()
            .map(|t| Ok(Next::Reduced(t.squeeze(0)?.to_vec1::<f32>()?, vocab)))
            .collect()
    })
}

/// Feeds GLIDE's own cache the committed tokens (all but the last) it lacks, drafting nothing
/// and computing no head rows: for sequences that took another proposal this step, so that
/// the cache holds what it would have held had GLIDE drafted (a row's keys depend only on the
/// tokens and the target positions before it). All sequences go together, at most
/// [`PREFILL_CHUNK`] tokens each per forward.
pub(super) fn glide_read_committed(
    model: &GlideModel,
    target: TargetView<'_>,
    kv: &mut KvPool,
    batch: &mut [ProposeInput<'_>],
) -> Result<()> {
    loop {
        let mut inputs: Vec<SeqInput<'_>> = Vec::new();
        let mut tables: Vec<&BlockTable> = Vec::new();
        for s in batch.iter_mut() {
            let head = s.tokens.len() - 1;
            let table = s.state.table.get_or_insert_with(BlockTable::new);
            if table.len() > head {
                kv.truncate(table, head);
            }
            let from = table.len();
            if from == head {
                continue;
            }
            inputs.push(SeqInput {
                table,
                tokens: &s.tokens[from..head.min(from + PREFILL_CHUNK)],
                logits: Logits::None,
            });
            tables.push(s.target_table);
        }
        if inputs.is_empty() {
            return Ok(());
        }
        model.forward(kv, &mut inputs, target.kv, &tables)?;
    }
}

impl Proposer for GlideProposer {
    fn name(&self) -> &'static str {
        "glide"
    }

    fn new_pool(&self, max_blocks: usize) -> KvPool {
        self.model.new_pool(max_blocks)
    }

    fn has_own_cache(&self) -> bool {
        true
    }

    fn reads_target_cache(&self) -> bool {
        true
    }

    fn propose(
        &self,
        target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>> {
        glide_drafts(&self.model, target, kv, batch)
    }
}
