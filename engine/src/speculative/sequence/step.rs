//! One sequence's part of a token step: how many tokens to draft, how acceptance is decided
//! (in the forward or here), the cut of its caches back to what is kept, and the commit.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use super::Sequence;
use crate::error::Result;
use crate::kv::KvPool;
#[cfg(doc)]
use crate::model::Model;
use crate::sampling::{apply_repetition_penalty, argmax, transform};
use crate::speculative::accept::{accept_greedy, Verdict};
use crate::speculative::proposer::{Draft, Proposer};
use crate::speculative::verify::Verified;

/// A stochastic acceptance rule: drafts, their distributions (`None`: one-hot), the target's
/// distributions (one more row than drafts), the request's RNG.
pub type AcceptRule = fn(&[u32], Option<&[Vec<f32>]>, &[Vec<f32>], &mut StdRng) -> Verdict;

/// What acceptance decided for one sequence in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Tokens drafted.
    pub drafted: usize,
    /// Leading drafts kept.
    pub accepted: usize,
    /// The corrected or bonus token the target supplies.
    pub next: u32,
    /// Positions both caches keep: the committed tokens (but the last, which is cached now)
    /// and the accepted drafts.
    pub keep: usize,
}

/// How long the phases of one step took (shared by every sequence of the step).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    pub draft: Duration,
    pub verify: Duration,
}

impl Sequence {
    /// Starts a step: the number of tokens to draft (the policy's length, at most `cap`, within
    /// `max_tokens` and the context).
    pub fn plan(&mut self, ctx: usize, cap: usize) -> usize {
        self.decode_start.get_or_insert_with(Instant::now);
        self.draft_budget(ctx, cap)
    }

    /// How many tokens to draft now: the policy's length (at most `cap`), cut so that the step
    /// cannot emit more than `max_tokens` nor reach past the target's context.
    pub fn draft_budget(&self, ctx: usize, cap: usize) -> usize {
        let remaining = self.req.max_tokens.saturating_sub(self.generated.len());
        self.policy
            .next_len()
            .min(cap)
            .min(remaining.saturating_sub(1))
            .min(ctx.saturating_sub(self.tokens.len()))
    }

    /// Whether acceptance for this sequence is plain greedy (argmax, no repetition penalty),
    /// which the verification forward can decide by itself.
    pub fn decides_greedily(&self) -> bool {
        let p = self.sampler.params();
        p.is_greedy() && p.repetition_penalty == 1.0
    }

    /// Whether acceptance for this sequence is rejection sampling at a temperature alone (no
    /// top-k, top-p or repetition penalty), which the verification forward can decide by
    /// itself ([`Model::verify_sampled`]).
    pub fn samples_in_forward(&self) -> bool {
        let p = self.sampler.params();
        !p.is_greedy() && p.top_k == 0 && p.top_p >= 1.0 && p.repetition_penalty == 1.0
    }

    /// Acceptance of `draft` against what verification returned: the target's rows (one more
    /// than drafted tokens), greedy or stochastic with `rule`, or a verdict already taken.
    pub fn decide(&mut self, draft: &Draft, verified: &Verified, rule: AcceptRule) -> Decision {
        let verdict = match verified {
            Verified::Decided(v) => *v,
            Verified::Rows(rows) => self.verdict(&draft.tokens, draft.probs.as_deref(), rows, rule),
        };
        // The target's row that chose the next token is what the drafter's row for that token
        // reads (GLIDE with a feature).
        let state = &mut self.proposer_state;
        if let Some((first, rows)) = state.verified_rows.take() {
            let position = first + verdict.accepted + 1;
            state.feature = rows
                .into_iter()
                .nth(verdict.accepted)
                .map(|h| (position, h));
        }
        Decision {
            drafted: draft.tokens.len(),
            accepted: verdict.accepted,
            next: verdict.next,
            keep: self.tokens.len() + verdict.accepted,
        }
    }

    /// Cuts both caches back to what `decision` keeps, returning freed blocks to the pools.
    pub fn rollback(
        &mut self,
        target_kv: &mut KvPool,
        proposer: Option<(&dyn Proposer, &mut KvPool)>,
        decision: &Decision,
    ) {
        target_kv.truncate(&mut self.table, decision.keep);
        if let Some((p, kv)) = proposer {
            p.rollback(kv, &mut self.proposer_state, decision.keep);
        }
    }

    /// Takes the accepted drafts and the target's token: statistics, draft policy, output text
    /// and the finish checks. Returns the tokens committed (fewer than accepted + 1 when
    /// generation ended on the way).
    pub fn commit(
        &mut self,
        draft: &Draft,
        decision: &Decision,
        ctx: usize,
        times: PhaseTimes,
    ) -> Result<usize> {
        self.stats.record(decision.drafted, decision.accepted);
        if draft.lookup {
            self.stats
                .record_lookup(decision.drafted, decision.accepted);
        }
        self.stats.draft_time += times.draft;
        self.stats.verify_time += times.verify;
        self.policy.observe(decision.drafted, decision.accepted);
        let mut new = draft.tokens[..decision.accepted].to_vec();
        new.push(decision.next);
        let before = self.generated.len();
        self.emit(&new, decision.accepted, ctx)?;
        self.decode_time = self.decode_start.map(|t| t.elapsed()).unwrap_or_default();
        Ok(self.generated.len() - before)
    }

    /// Acceptance against the target's rows (one more than drafts), greedy or stochastic.
    fn verdict(
        &mut self,
        drafts: &[u32],
        q: Option<&[Vec<f32>]>,
        rows: &[Vec<f32>],
        rule: AcceptRule,
    ) -> Verdict {
        let params = self.sampler.params().clone();
        if params.is_greedy() && params.repetition_penalty == 1.0 {
            let choices: Vec<u32> = rows.iter().map(|row| argmax(row)).collect();
            return accept_greedy(drafts, &choices);
        }
        let mut history = self.tokens.clone();
        if params.is_greedy() {
            let choices: Vec<u32> = rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    if i > 0 {
                        history.push(drafts[i - 1]);
                    }
                    let mut l = row.clone();
                    apply_repetition_penalty(&mut l, &history, params.repetition_penalty);
                    argmax(&l)
                })
                .collect();
            return accept_greedy(drafts, &choices);
        }
        let p: Vec<Vec<f32>> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                if i > 0 {
                    history.push(drafts[i - 1]);
                }
                transform(row, &history, &params)
            })
            .collect();
        rule(drafts, q, &p, self.sampler.rng())
    }
}
