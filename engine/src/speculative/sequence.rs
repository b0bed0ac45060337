//! The speculative token step over a batch of sequences: propose, verify in one target
//! forward, accept, roll back, emit.
//!
//! Plain decoding is the same step with nothing drafted, so target-only and speculative output
//! come from one code path; the only difference is how many rows a verification forward has.
//!
//! Invariant between steps: the target's cache holds every committed token but the last one,
//! which is the first input of the next verification: `[last, d_1 .. d_k]` gives `k + 1` rows
//! of logits, row `i` judging `d_{i+1}` and row `k` giving the bonus token.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use super::accept::{accept_greedy, accept_stochastic, Verdict};
use super::policy::{DraftPolicy, DraftPolicyConfig};
use super::proposer::{Draft, Proposer, ProposerState, TargetView};
use super::stats::SpecStats;
use super::verify::{propose_drafts, verify, Acceptance, Verified};
use crate::error::{Error, Result};
use crate::generate::{
    validate_request, FinishReason, GenerateOutput, GenerateRequest, StopMatcher, PREFILL_CHUNK,
};
use crate::kv::{BlockTable, KvPool};
use crate::model::{Logits, Model, SeqInput, TextStream, Tokenizer};
use crate::sampling::{apply_repetition_penalty, argmax, transform, Sampler};

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

    /// Runs the target (and the proposer, if it keeps state) over the sequence's tokens but
    /// the last, which the next step feeds: the prompt of a new sequence, or prompt and output
    /// of one recomputed after preemption.
    pub fn prefill(
        &mut self,
        target: &Model,
        target_kv: &mut KvPool,
        proposer: Option<(&dyn Proposer, &mut KvPool)>,
    ) -> Result<()> {
        if let Some((p, kv)) = proposer {
            self.prefill_proposer(p, kv)?;
        }
        self.prefill_target(target, target_kv)
    }

    /// The proposer's part of [`Sequence::prefill`].
    pub fn prefill_proposer(&mut self, proposer: &dyn Proposer, kv: &mut KvPool) -> Result<()> {
        let t = Instant::now();
        proposer.prefill(kv, &mut self.proposer_state, &self.tokens)?;
        self.prefill_time += t.elapsed();
        Ok(())
    }

    /// The input feeding the target at most `limit` more of the tokens it has yet to cache,
    /// with no logits: a prompt chunk riding along in a verification forward ([`verify`]).
    /// `None` when nothing is pending.
    pub fn chunk_input(&mut self, limit: usize) -> Option<SeqInput<'_>> {
        let head = &self.tokens[..self.tokens.len() - 1];
        let from = self.table.len().min(head.len());
        let to = head.len().min(from.saturating_add(limit));
        (to > from).then(|| SeqInput {
            table: &mut self.table,
            tokens: &head[from..to],
            logits: Logits::None,
        })
    }

    /// Feeds the proposer at most `limit` of the committed tokens it has yet to read (a chunk
    /// of its catch-up, outside drafting); returns how many it fed.
    pub fn catch_up_proposer(
        &mut self,
        proposer: &dyn Proposer,
        kv: &mut KvPool,
        limit: usize,
    ) -> Result<usize> {
        let lag = self.drafter_lag(proposer);
        let n = lag.min(limit);
        if n == 0 {
            return Ok(0);
        }
        let cached = self.proposer_state.cached_len().unwrap_or(0);
        let t = Instant::now();
        // `prefill` reads all but the last of the tokens it is given.
        proposer.prefill(kv, &mut self.proposer_state, &self.tokens[..cached + n + 1])?;
        self.prefill_time += t.elapsed();
        Ok(n)
    }

    /// The target's part of [`Sequence::prefill`].
    pub fn prefill_target(&mut self, target: &Model, kv: &mut KvPool) -> Result<()> {
        self.prefill_target_chunk(target, kv, usize::MAX)
            .map(|_| ())
    }

    /// Feeds the target at most `limit` more of the tokens it has yet to cache (a chunk of a
    /// long prompt, prefilled over several steps); returns how many it fed. The cache ends up
    /// the same whatever the chunks: each position's keys and values depend only on the
    /// positions before it.
    pub fn prefill_target_chunk(
        &mut self,
        target: &Model,
        kv: &mut KvPool,
        limit: usize,
    ) -> Result<usize> {
        let t = Instant::now();
        let head = &self.tokens[..self.tokens.len() - 1];
        let from = self.table.len().min(head.len());
        let to = head.len().min(from.saturating_add(limit));
        for chunk in head[from..to].chunks(PREFILL_CHUNK) {
            target.forward(
                kv,
                &mut [SeqInput {
                    table: &mut self.table,
                    tokens: chunk,
                    logits: Logits::None,
                }],
            )?;
        }
        self.prefill_time += t.elapsed();
        Ok(to - from)
    }

    /// Committed tokens `proposer` has yet to read for this sequence before it can draft again.
    pub fn drafter_lag(&self, proposer: &dyn Proposer) -> usize {
        proposer.catch_up(&self.proposer_state, self.tokens.len())
    }

    /// Tokens the request may still generate.
    pub fn remaining_tokens(&self) -> usize {
        self.req.max_tokens.saturating_sub(self.generated.len())
    }

    /// The draft length the request asks for at most (0 without speculation).
    pub fn request_draft_len(&self) -> usize {
        self.policy.next_len()
    }

    /// Tokens the target has yet to cache before this sequence can step (its prompt when new,
    /// everything when preempted).
    pub fn pending_prefill(&self) -> usize {
        (self.tokens.len() - 1).saturating_sub(self.table.len())
    }

    /// Takes into the empty target table the blocks of `kv`'s prefix cache holding the longest
    /// cached prefix of the tokens before the last (which the next forward feeds, for the
    /// logits of the token after it); returns how many positions it took, whose prefill is
    /// then done.
    pub fn take_cached_prefix(&mut self, kv: &mut KvPool) -> usize {
        let head = &self.tokens[..self.tokens.len() - 1];
        kv.attach_prefix(&mut self.table, head)
    }

    /// Blocks of the target's pool that prefill plus a step drafting `k` tokens needs beyond
    /// what the sequence holds.
    pub fn target_blocks_needed(&self, k: usize) -> usize {
        // The step feeds [last, d_1..d_k] after the cached tokens[..len-1].
        KvPool::blocks_for(self.tokens.len() + k).saturating_sub(self.table.blocks().len())
    }

    /// Blocks of the target's pool that prefilling `chunk` more tokens (of those pending) needs
    /// beyond what the sequence holds.
    pub fn target_blocks_for_chunk(&self, chunk: usize) -> usize {
        let upto = self.table.len() + chunk.min(self.pending_prefill());
        KvPool::blocks_for(upto).saturating_sub(self.table.blocks().len())
    }

    /// Reserves the target blocks of [`Sequence::target_blocks_for_chunk`].
    pub fn reserve_target_chunk(&mut self, kv: &mut KvPool, chunk: usize) -> Result<()> {
        let n = chunk.min(self.pending_prefill());
        kv.reserve(&mut self.table, n)
    }

    /// Reserves the target blocks of [`Sequence::target_blocks_needed`].
    pub fn reserve_target(&mut self, kv: &mut KvPool, k: usize) -> Result<()> {
        let n = (self.tokens.len() + k).saturating_sub(self.table.len());
        kv.reserve(&mut self.table, n)
    }

    /// Reserves the proposer's blocks for drafting `k` tokens after `committed` tokens.
    pub fn reserve_proposer(
        &mut self,
        proposer: &dyn Proposer,
        kv: &mut KvPool,
        committed: usize,
        k: usize,
    ) -> Result<()> {
        proposer.reserve(kv, &mut self.proposer_state, committed, k)
    }

    /// Returns every block the sequence holds (target and proposer) to the pools. The sequence
    /// keeps its tokens: prefill rebuilds the caches (recompute after preemption).
    pub fn release(
        &mut self,
        target_kv: &mut KvPool,
        proposer: Option<(&dyn Proposer, &mut KvPool)>,
    ) {
        target_kv.free(&mut self.table);
        if let Some((p, kv)) = proposer {
            p.release(kv, &mut self.proposer_state);
        }
    }

    /// Whether generation has ended.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Text that became final since the last call.
    pub fn take_text(&mut self) -> String {
        self.take_text_split().0
    }

    /// Text that became final since the last call, and how many of its leading characters
    /// were released by accepted draft tokens (the rest by the target's own tokens).
    pub fn take_text_split(&mut self) -> (String, usize) {
        let drafted = self.pending[..self.pending_drafted].chars().count();
        self.pending_drafted = 0;
        (std::mem::take(&mut self.pending), drafted)
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

    /// The finished output (text held back for a possible stop string is released).
    pub fn output(&mut self) -> GenerateOutput {
        let rest = self.stops.flush();
        self.pending.push_str(&rest);
        GenerateOutput {
            tokens: self.generated.clone(),
            text: self.stops.text().to_string(),
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            prompt_tokens: self.req.prompt.len(),
            prefill_time: self.prefill_time,
            decode_time: self.decode_time,
            speculation: self.stats.clone(),
        }
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

    /// Appends tokens the target produced this step (the first `drafted` of them accepted
    /// drafts), one at a time, ending generation at EOS, a stop string, `max_tokens` or the
    /// context length.
    fn emit(&mut self, new: &[u32], drafted: usize, ctx: usize) -> Result<()> {
        for (i, &t) in new.iter().enumerate() {
            if self.eos.contains(&t) {
                self.finish = Some(FinishReason::Stop);
                return Ok(());
            }
            self.tokens.push(t);
            self.generated.push(t);
            if let Some(text) = self.stream.push(t)? {
                let (out, stopped) = self.stops.push(&text);
                // Drafted text stays a prefix of `pending`: only counted while all of it is.
                if i < drafted && self.pending_drafted == self.pending.len() {
                    self.pending_drafted += out.len();
                }
                self.pending.push_str(&out);
                if stopped {
                    self.finish = Some(FinishReason::Stop);
                    return Ok(());
                }
            }
            if self.generated.len() >= self.req.max_tokens || self.tokens.len() >= ctx {
                self.finish = Some(FinishReason::Length);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Marks the sequence cancelled.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Cancelled);
        }
    }
}

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

/// Runs speculative steps for sequences of one target model and one proposer (or none), with
/// KV pools of its own. The engine runs the same phases through its actors.
pub struct Speculator<'a> {
    target: &'a Model,
    proposer: Option<&'a dyn Proposer>,
    rule: AcceptRule,
    acceptance: Acceptance,
    target_kv: KvPool,
    draft_kv: KvPool,
}

impl std::fmt::Debug for Speculator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speculator")
            .field("proposer", &self.proposer.map(|p| p.name()))
            .field("target_kv", &self.target_kv.usage())
            .field("draft_kv", &self.draft_kv.usage())
            .finish()
    }
}

/// Blocks a [`Speculator`]'s pools may hand out: block memory is allocated on first use, so
/// this only bounds how much the sequences one caller runs can take.
const SPECULATOR_BLOCKS: usize = 1 << 20;

impl<'a> Speculator<'a> {
    /// `proposer: None` decodes one token per step (target only).
    pub fn new(target: &'a Model, proposer: Option<&'a dyn Proposer>) -> Self {
        Self {
            target,
            proposer,
            rule: accept_stochastic,
            acceptance: Acceptance::InForward,
            target_kv: target.new_pool(SPECULATOR_BLOCKS),
            draft_kv: proposer
                .map_or_else(|| KvPool::new(0, 0, 0), |p| p.new_pool(SPECULATOR_BLOCKS)),
        }
    }

    /// Replaces the stochastic acceptance rule ([`accept_stochastic`] by default), which then
    /// always runs on the host (never in the verification forward). Only the distribution
    /// tests use this, to show that they fail on a wrong rule.
    pub fn with_rule(mut self, rule: AcceptRule) -> Self {
        self.rule = rule;
        self.acceptance = Acceptance::Host;
        self
    }

    /// The target's pool.
    pub fn target_kv(&self) -> &KvPool {
        &self.target_kv
    }

    /// The proposer's pool.
    pub fn draft_kv(&self) -> &KvPool {
        &self.draft_kv
    }

    /// Prefills `seq`'s caches.
    pub fn prefill(&mut self, seq: &mut Sequence) -> Result<()> {
        let proposer = self.proposer.map(|p| (p, &mut self.draft_kv));
        seq.prefill(self.target, &mut self.target_kv, proposer)
    }

    /// Returns `seq`'s blocks to the pools.
    pub fn release(&mut self, seq: &mut Sequence) {
        let proposer = self.proposer.map(|p| (p, &mut self.draft_kv));
        seq.release(&mut self.target_kv, proposer);
    }

    /// One token step for every unfinished sequence of the batch: draft, verify all drafts of
    /// all sequences in one target forward, accept, roll back both caches, emit.
    pub fn step(&mut self, seqs: &mut [&mut Sequence]) -> Result<()> {
        let ctx = self.target.config().max_position_embeddings;
        let mut live: Vec<&mut Sequence> = seqs
            .iter_mut()
            .map(|s| &mut **s)
            .filter(|s| !s.is_finished())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let budgets: Vec<usize> = live.iter_mut().map(|s| s.plan(ctx, usize::MAX)).collect();
        let drafts = match self.proposer {
            Some(p) => {
                let target = TargetView {
                    model: self.target,
                    kv: &self.target_kv,
                };
                propose_drafts(p, target, &mut self.draft_kv, &mut live, &budgets)?
            }
            None => vec![Draft::default(); live.len()],
        };
        let draft = t.elapsed();
        let t = Instant::now();
        let verified = verify(
            self.target,
            &mut self.target_kv,
            &mut live,
            &drafts,
            Vec::new(),
            self.acceptance,
        )?;
        let times = PhaseTimes {
            draft,
            verify: t.elapsed(),
        };
        for ((s, d), v) in live.iter_mut().zip(&drafts).zip(verified) {
            let decision = s.decide(d, &v, self.rule);
            let proposer = self.proposer.map(|p| (p, &mut self.draft_kv));
            s.rollback(&mut self.target_kv, proposer, &decision);
            s.commit(d, &decision, ctx, times)?;
        }
        Ok(())
    }
}

/// Generates for one request with speculation (`proposer: Some`) or without, calling `on_text`
/// with each piece of text as soon as it is final.
pub fn generate_speculative(
    target: &Model,
    tokenizer: &Tokenizer,
    proposer: Option<&dyn Proposer>,
    policy: DraftPolicyConfig,
    req: &GenerateRequest,
    mut on_text: impl FnMut(&str),
) -> Result<GenerateOutput> {
    let mut seq = Sequence::new(target, tokenizer, proposer, req.clone(), policy)?;
    let mut spec = Speculator::new(target, proposer);
    spec.prefill(&mut seq)?;
    while !seq.is_finished() {
        spec.step(&mut [&mut seq])?;
        let text = seq.take_text();
        if !text.is_empty() {
            on_text(&text);
        }
    }
    spec.release(&mut seq);
    let out = seq.output();
    let rest = seq.take_text();
    if !rest.is_empty() {
        on_text(&rest);
    }
    Ok(out)
}
