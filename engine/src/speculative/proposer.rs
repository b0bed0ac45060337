//! The `Proposer` trait: whatever drafts tokens for the target to verify.

use rand::rngs::StdRng;

use crate::error::Result;
use crate::kv::{BlockTable, KvPool};
use crate::model::Model;
use crate::sampling::SamplingParams;

/// Tokens proposed for one sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub tokens: Vec<u32>,
    /// `probs[i]`: the distribution `tokens[i]` was drawn from (after the request's sampling
    /// transform), for stochastic acceptance. `None` for deterministic proposers (one-hot) and
    /// for greedy requests, where acceptance needs no distribution.
    pub probs: Option<Vec<Vec<f32>>>,
    /// Whether the tokens come from prompt lookup (the n-gram proposer, or glide+ngram taking
    /// the n-gram proposal over GLIDE's) rather than from a drafter model.
    pub lookup: bool,
}

/// A proposer's per-sequence state, owned by the sequence.
#[derive(Debug, Default)]
pub struct ProposerState {
    /// The drafter's own KV cache (draft models): its blocks in the proposer's pool.
    pub(crate) table: Option<BlockTable>,
    /// Whether the drafter reads the target's last hidden state (GLIDE with a feature): the
    /// verification then keeps the target's final normed rows of the sequence.
    pub(crate) wants_feature: bool,
    /// Those rows of the last verification, and the position of its first row's token.
    pub(crate) verified_rows: Option<(usize, Vec<Vec<f32>>)>,
    /// The hidden state the drafter's row at this position takes: the target's row before it,
    /// kept from the verification that chose that position's token.
    pub(crate) feature: Option<(usize, Vec<f32>)>,
}

impl ProposerState {
    /// Positions held in the drafter's cache, if the proposer keeps one.
    pub fn cached_len(&self) -> Option<usize> {
        self.table.as_ref().map(BlockTable::len)
    }

    /// The drafter's block table, if any (tests compare caches through it).
    pub fn table(&self) -> Option<&BlockTable> {
        self.table.as_ref()
    }

    /// The target's hidden state that the drafter's next round reads at its first row, and
    /// that row's position (GLIDE with a feature, between a verification and the next round).
    pub fn feature(&self) -> Option<(usize, &[f32])> {
        self.feature.as_ref().map(|(p, h)| (*p, h.as_slice()))
    }
}

/// What a proposer may read of the target, for drafters that use its state (GLIDE attends to
/// the target's KV cache and shares its token embedding): the model and its KV pool, read-only.
#[derive(Debug, Clone, Copy)]
pub struct TargetView<'a> {
    pub model: &'a Model,
    pub kv: &'a KvPool,
}

/// What a proposer gets for one sequence.
#[derive(Debug)]
pub struct ProposeInput<'a> {
    /// The committed tokens: prompt and generated output.
    pub tokens: &'a [u32],
    /// The sequence's blocks in the target's pool ([`TargetView::kv`]); its length is the
    /// number of positions the target has verified and cached (all committed tokens but the
    /// last, which the next verification feeds).
    pub target_table: &'a BlockTable,
    pub state: &'a mut ProposerState,
    /// Propose at most this many tokens (fewer is fine, none too).
    pub max: usize,
    pub sampling: &'a SamplingParams,
    /// The request's RNG: stochastic drafters draw from it.
    pub rng: &'a mut StdRng,
    /// Stop drafting when the drafter's top probability falls below this.
    pub confidence: Option<f32>,
}

/// Drafts tokens for a batch of sequences. Implementations keep any per-sequence state in
/// [`ProposerState`] (and KV memory in the pool the caller passes, one per proposer) so that
/// one proposer serves every sequence.
pub trait Proposer: Send + Sync {
    /// A short name (`ngram`, `draft`).
    fn name(&self) -> &'static str;

    /// State for a new sequence.
    fn new_state(&self) -> ProposerState {
        ProposerState::default()
    }

    /// A KV pool of `max_blocks` blocks for this proposer's sequences (an empty one for
    /// proposers without a cache).
    fn new_pool(&self, max_blocks: usize) -> KvPool {
        let _ = max_blocks;
        KvPool::new(0, 0, 0)
    }

    /// Whether the proposer keeps a KV cache of its own in its pool (a draft model, GLIDE),
    /// which reads every committed token before it drafts: the block, catch-up and reservation
    /// defaults below then count that cache; without one they are zero and reserve nothing.
    fn has_own_cache(&self) -> bool {
        false
    }

    /// Blocks of `kv` that drafting `k` tokens after `committed` committed tokens needs beyond
    /// what `state` holds, so that the caller can reserve them before the step. With its own
    /// cache, drafting feeds every committed token, then drafts 1..k-1 (the last is never fed).
    fn blocks_needed(
        &self,
        kv: &KvPool,
        state: &ProposerState,
        committed: usize,
        k: usize,
    ) -> usize {
        let _ = kv;
        if !self.has_own_cache() || k == 0 {
            return 0;
        }
        let held = state.table.as_ref().map_or(0, |t| t.blocks().len());
        KvPool::blocks_for(committed + k - 1).saturating_sub(held)
    }

    /// Whether drafting reads the target's cache of the sequence, so that a sequence whose
    /// prompt the target has not yet prefilled gets no draft (its first step verifies the last
    /// prompt token alone, and it drafts from the next step on).
    fn reads_target_cache(&self) -> bool {
        false
    }

    /// Whether the proposer reads missed committed tokens on its own ([`Proposer::prefill`])
    /// apart from drafting, so that the engine spreads a long catch-up (the prompt) over steps
    /// without drafting, and keeps it out of the step that prefills the target. Otherwise the
    /// catch-up happens inside [`Proposer::propose`].
    fn catches_up_apart(&self) -> bool {
        false
    }

    /// Committed tokens (of `committed`) that `state` has yet to read before it can draft: the
    /// catch-up cost of drafting now (0 for proposers without a cache).
    fn catch_up(&self, state: &ProposerState, committed: usize) -> usize {
        if !self.has_own_cache() {
            return 0;
        }
        committed.saturating_sub(1 + state.cached_len().unwrap_or(0))
    }

    /// Reserves what [`Proposer::blocks_needed`] counts.
    fn reserve(
        &self,
        kv: &mut KvPool,
        state: &mut ProposerState,
        committed: usize,
        k: usize,
    ) -> Result<()> {
        if !self.has_own_cache() || k == 0 {
            return Ok(());
        }
        let table = state.table.get_or_insert_with(BlockTable::new);
        let want = committed + k - 1;
        kv.reserve(table, want.saturating_sub(table.len()))
    }

    /// Brings the state up to date with a sequence's tokens (all but the last), so that the
    /// first proposal does not pay for them. Optional: `propose` catches up anyway.
    fn prefill(&self, kv: &mut KvPool, state: &mut ProposerState, tokens: &[u32]) -> Result<()> {
        let _ = (kv, state, tokens);
        Ok(())
    }

    /// Proposes up to `max` tokens for each sequence, one [`Draft`] per input in order; `kv` is
    /// the proposer's own pool, `target` what it may read of the target.
    fn propose(
        &self,
        target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>>;

    /// After verification: the first `valid` committed tokens are the only ones the state may
    /// still hold (rejected drafts go, and blocks no longer needed return to `kv`).
    fn rollback(&self, kv: &mut KvPool, state: &mut ProposerState, valid: usize) {
        if let Some(t) = &mut state.table {
            kv.truncate(t, valid);
        }
    }

    /// Returns everything `state` holds in `kv` (the sequence finished, was cancelled or
    /// preempted).
    fn release(&self, kv: &mut KvPool, state: &mut ProposerState) {
        if let Some(t) = &mut state.table {
            kv.free(t);
        }
    }
}
