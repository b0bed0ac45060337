//! The speculative token step over a batch of sequences: propose, verify in one target
//! forward, accept, roll back, emit.
//!
//! Plain decoding is the same step with nothing drafted, so target-only and speculative output
//! come from one code path; the only difference is how many rows a verification forward has.
//!
//! Invariant between steps: the target's cache holds every committed token but the last one,
//! which is the first input of the next verification: `[last, d_1 .. d_k]` gives `k + 1` rows
//! of logits, row `i` judging `d_{i+1}` and row `k` giving the bonus token.
//!
//! - this module: one request's state ([`Sequence`]) and what it tells of itself.
//! - `caches`: its target and proposer caches: prefill, catch-up, blocks, release.
//! - `step`: its part of a token step: draft budget, acceptance, rollback, commit.
//! - `output`: the tokens and text it hands back, and when generation ends.
//! - `speculator`: the token step over a batch ([`Speculator`]) and one-request generation.

mod caches;
mod output;
mod speculator;
mod step;

use std::time::{Duration, Instant};

use super::policy::{DraftPolicy, DraftPolicyConfig};
use super::proposer::{Proposer, ProposerState};
use super::stats::SpecStats;
use crate::error::{Error, Result};
use crate::generate::{validate_request, FinishReason, GenerateRequest, StopMatcher};
use crate::kv::BlockTable;
use crate::model::{Model, TextStream, Tokenizer};
use crate::sampling::Sampler;

pub use speculator::{generate_speculative, Speculator};
pub use step::{AcceptRule, Decision, PhaseTimes};

/// One request in flight: its tokens, caches, sampler, draft policy, statistics and output.
#[derive(Debug)]
pub struct Sequence {
    req: GenerateRequest,
    /// Prompt and accepted output.
    pub(super) tokens: Vec<u32>,
    /// The target's blocks of this sequence.
    pub(super) table: BlockTable,
    pub(super) proposer_state: ProposerState,
    pub(super) sampler: Sampler,
    pub(super) policy: DraftPolicy,
    stats: SpecStats,
    stream: TextStream,
    stops: StopMatcher,
    eos: Vec<u32>,
    generated: Vec<u32>,
    /// Text final since the last [`Sequence::take_text`].
    pending: String,
    /// Bytes at the start of `pending` released while accepted draft tokens were appended.
    pending_drafted: usize,
    finish: Option<FinishReason>,
    prefill_time: Duration,
    decode_start: Option<Instant>,
    decode_time: Duration,
}

impl Sequence {
    /// A new sequence for `req`, checked against the target's limits; nothing runs yet.
    pub fn new(
        target: &Model,
        tokenizer: &Tokenizer,
        proposer: Option<&dyn Proposer>,
        req: GenerateRequest,
        policy: DraftPolicyConfig,
    ) -> Result<Self> {
        validate_request(target, &req)?;
        if policy.max_draft >= crate::model::SMALL_BATCH_ROWS {
            return Err(Error::InvalidRequest(format!(
                "`max_draft` must be at most {}, got {}",
                crate::model::SMALL_BATCH_ROWS - 1,
                policy.max_draft
            )));
        }
        if let Some(c) = policy.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(Error::InvalidRequest(format!(
                    "`confidence` must be in [0, 1], got {c}"
                )));
            }
        }
        Ok(Self {
            tokens: req.prompt.clone(),
            table: BlockTable::new(),
            proposer_state: proposer.map(|p| p.new_state()).unwrap_or_default(),
            sampler: Sampler::new(req.sampling.clone()),
            policy: DraftPolicy::new(policy),
            stats: SpecStats::default(),
            stream: tokenizer.text_stream(true),
            stops: StopMatcher::new(&req.stop),
            eos: if req.ignore_eos {
                Vec::new()
            } else {
                tokenizer.eos_token_ids().to_vec()
            },
            generated: Vec::new(),
            pending: String::new(),
            pending_drafted: 0,
            finish: None,
            prefill_time: Duration::ZERO,
            decode_start: None,
            decode_time: Duration::ZERO,
            req,
        })
    }

    /// Tokens the request may still generate.
    pub fn remaining_tokens(&self) -> usize {
        self.req.max_tokens.saturating_sub(self.generated.len())
    }

    /// The draft length the request asks for at most (0 without speculation).
    pub fn request_draft_len(&self) -> usize {
        self.policy.next_len()
    }

    /// Whether generation has ended.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Prompt and accepted output tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The target's block table of this sequence.
    pub fn table(&self) -> &BlockTable {
        &self.table
    }

    /// The request this sequence serves.
    pub fn request(&self) -> &GenerateRequest {
        &self.req
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The proposer's state of this sequence (the drafter's cache).
    pub fn proposer_state(&self) -> &ProposerState {
        &self.proposer_state
    }

    /// Speculation statistics so far.
    pub fn stats(&self) -> &SpecStats {
        &self.stats
    }

    /// Marks the sequence cancelled.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Cancelled);
        }
    }
}
