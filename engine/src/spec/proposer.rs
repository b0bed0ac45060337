//! The `Proposer` trait: whatever drafts tokens for the target to verify.

use rand::rngs::StdRng;

use crate::error::Result;
use crate::kv::SequenceCache;
use crate::sampling::SamplingParams;

/// Tokens proposed for one sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub tokens: Vec<u32>,
    /// `probs[i]`: the distribution `tokens[i]` was drawn from (after the request's sampling
    /// transform), for stochastic acceptance. `None` for deterministic proposers (one-hot) and
    /// for greedy requests, where acceptance needs no distribution.
    pub probs: Option<Vec<Vec<f32>>>,
}

/// A proposer's per-sequence state, owned by the sequence.
#[derive(Debug, Default)]
pub struct ProposerState {
    /// The drafter's own KV cache (draft models).
    pub(crate) cache: Option<SequenceCache>,
}

impl ProposerState {
    /// Positions held in the drafter's cache, if the proposer keeps one.
    pub fn cached_len(&self) -> Option<usize> {
        self.cache.as_ref().map(SequenceCache::len)
    }

    /// The drafter's cache, if any (tests compare it).
    pub fn cache(&self) -> Option<&SequenceCache> {
        self.cache.as_ref()
    }
}

/// What a proposer gets for one sequence.
#[derive(Debug)]
pub struct ProposeInput<'a> {
    /// The committed tokens: prompt and generated output.
    pub tokens: &'a [u32],
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
/// [`ProposerState`] so that one proposer serves every sequence.
pub trait Proposer: Send + Sync {
    /// A short name (`ngram`, `draft`).
    fn name(&self) -> &'static str;

    /// State for a new sequence.
    fn new_state(&self) -> ProposerState {
        ProposerState::default()
    }

    /// Brings the state up to date with a new sequence's prompt (all but its last token), so
    /// that the first proposal does not pay for it. Optional: `propose` catches up anyway.
    fn prefill(&self, state: &mut ProposerState, prompt: &[u32]) -> Result<()> {
        let _ = (state, prompt);
        Ok(())
    }

    /// Proposes up to `max` tokens for each sequence, one [`Draft`] per input in order.
    fn propose(&self, batch: &mut [ProposeInput<'_>]) -> Result<Vec<Draft>>;

    /// After verification: the first `valid` committed tokens are the only ones the state may
    /// still hold (rejected drafts go).
    fn rollback(&self, state: &mut ProposerState, valid: usize) {
        if let Some(c) = &mut state.cache {
            c.truncate(valid);
        }
    }
}
