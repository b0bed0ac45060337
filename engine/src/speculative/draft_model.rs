//! An independent small model as drafter, with its own KV cache kept in step with the target's.
//!
//! Invariant between steps: the drafter's cache holds a prefix of the committed tokens, never
//! the last one. Proposing first feeds whatever committed tokens it lacks (the corrected or bonus
//! token of the last step, plus the last draft when all drafts were accepted, or the whole prompt
//! at the start) in one forward, then drafts one token per forward; the last draft is never fed.
//! [`Proposer::rollback`] cuts the cache back to the tokens verification kept.

use std::path::Path;
use std::sync::Arc;

use super::proposer::{Draft, ProposeInput, Proposer, ProposerState, TargetView};
use super::rounds::{draft_rounds, Next};
use crate::error::{Error, Result};
use crate::generate::PREFILL_CHUNK;
use crate::kv::{BlockTable, KvPool};
use crate::model::{Logits, Model, SeqInput, Tokenizer};

/// A draft model proposer.
#[derive(Debug, Clone)]
pub struct DraftModelProposer {
    model: Arc<Model>,
    /// The target's vocabulary size: drafter logits are cut or padded to it, so that the
    /// drafter never proposes a token the target cannot take and `q` lives on `p`'s support.
    target_vocab: usize,
}

impl DraftModelProposer {
    /// Uses `draft` to draft for `target`. Refuses a drafter whose tokenizer differs from the
    /// target's: its token ids would mean other texts.
    pub fn new(
        draft: Arc<Model>,
        draft_tokenizer: Option<&Tokenizer>,
        draft_path: &Path,
        target: &Model,
        target_tokenizer: &Tokenizer,
    ) -> Result<Self> {
        let incompatible = |message: String| Error::IncompatibleDraft {
            path: draft_path.to_path_buf(),
            message,
        };
        let Some(dt) = draft_tokenizer else {
            return Err(incompatible(
                "it has no tokenizer to check against the target's".into(),
            ));
        };
        let (tv, dv) = (
            target_tokenizer.inner().get_vocab(true),
            dt.inner().get_vocab(true),
        );
        if tv.len() != dv.len() {
            return Err(incompatible(format!(
                "its tokenizer has {} tokens, the target's {}: draft and target must share a vocabulary",
                dv.len(),
                tv.len()
            )));
        }
        if let Some((text, id)) = tv.iter().find(|(t, id)| dv.get(*t) != Some(id)) {
            return Err(incompatible(format!(
                "token {text:?} is id {id} for the target but {:?} for the drafter: draft and target must share a vocabulary",
                dv.get(text)
            )));
        }
        Ok(Self {
            model: draft,
            target_vocab: target.config().vocab_size,
        })
    }

    /// The draft model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn logits_row(&self, t: &candle_core::Tensor) -> Result<Vec<f32>> {
        let mut row = t.squeeze(0)?.to_vec1::<f32>()?;
        row.resize(self.target_vocab, f32::NEG_INFINITY);
        Ok(row)
    }

    /// One drafter forward over `inputs` (one wanted row each, or none for a catch-up chunk):
    /// on a GPU, when every sequence drafts greedily without a penalty, only each row's argmax
    /// and its probability come back; otherwise the rows of logits.
    fn step(
        &self,
        kv: &mut KvPool,
        inputs: &mut [SeqInput<'_>],
        on_device: bool,
    ) -> Result<Vec<Next<'static>>> {
        if inputs.iter().all(|s| s.logits == Logits::None) {
            self.model.forward(kv, inputs)?;
            return Ok(Vec::new());
        }
        if on_device {
            return Ok(self
                .model
                .forward_top(kv, inputs)?
                .into_iter()
                .map(|t| Next::Top(t[0]))
                .collect());
        }
        self.model
            .forward(kv, inputs)?
            .iter()
            .map(|t| Ok(Next::Row(self.logits_row(t)?)))
            .collect()
    }
}

impl Proposer for DraftModelProposer {
    fn name(&self) -> &'static str {
        "draft"
    }

    fn new_pool(&self, max_blocks: usize) -> KvPool {
        self.model.new_pool(max_blocks)
    }

    fn has_own_cache(&self) -> bool {
        true
    }

    fn catches_up_apart(&self) -> bool {
        true
    }

    fn prefill(&self, kv: &mut KvPool, state: &mut ProposerState, tokens: &[u32]) -> Result<()> {
        let table = state.table.get_or_insert_with(BlockTable::new);
        let head = &tokens[..tokens.len().saturating_sub(1)];
        if table.len() >= head.len() {
            return Ok(());
        }
        let from = table.len();
        for chunk in head[from..].chunks(PREFILL_CHUNK) {
            self.model.forward(
                kv,
                &mut [SeqInput {
                    table,
                    tokens: chunk,
                    logits: Logits::None,
                }],
            )?;
        }
        Ok(())
    }

    fn propose(
        &self,
        _target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>> {
        // The device picks greedy drafts itself (a GPU model, no sampling transform).
        // (A head wider than the target's vocabulary needs the host's cut first.)
        let on_device = self.model.device().is_cuda()
            && self.model.head_rows() <= self.target_vocab
            && batch
                .iter()
                .all(|s| s.sampling.is_greedy() && s.sampling.repetition_penalty == 1.0);
        let ctx = self.model.config().max_position_embeddings;
        draft_rounds(
            batch,
            kv,
            ctx,
            |kv, inputs, _| self.step(kv, inputs, on_device),
            None,
        )
    }
}
