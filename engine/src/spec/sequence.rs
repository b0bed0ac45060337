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
use super::proposer::{Draft, ProposeInput, Proposer, ProposerState};
use super::stats::SpecStats;
use crate::error::{Error, Result};
use crate::generate::{
    validate_request, FinishReason, GenerateOutput, GenerateRequest, StopMatcher, PREFILL_CHUNK,
};
use crate::kv::SequenceCache;
use crate::model::{Logits, Model, SeqInput, TextStream, Tokenizer};
use crate::sampling::{apply_repetition_penalty, argmax, transform, Sampler};

/// One request in flight: its tokens, caches, sampler, draft policy, statistics and output.
#[derive(Debug)]
pub struct Sequence {
    req: GenerateRequest,
    /// Prompt and accepted output.
    tokens: Vec<u32>,
    cache: SequenceCache,
    proposer_state: ProposerState,
    sampler: Sampler,
    policy: DraftPolicy,
    stats: SpecStats,
    stream: TextStream,
    stops: StopMatcher,
    eos: Vec<u32>,
    generated: Vec<u32>,
    /// Text final since the last [`Sequence::take_text`].
    pending: String,
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
            cache: target.new_cache(),
            proposer_state: proposer.map(|p| p.new_state()).unwrap_or_default(),
            sampler: Sampler::new(req.sampling.clone()),
            policy: DraftPolicy::new(policy),
            stats: SpecStats::default(),
            stream: tokenizer.text_stream(true),
            stops: StopMatcher::new(&req.stop),
            eos: tokenizer.eos_token_ids().to_vec(),
            generated: Vec::new(),
            pending: String::new(),
            finish: None,
            prefill_time: Duration::ZERO,
            decode_start: None,
            decode_time: Duration::ZERO,
            req,
        })
    }

    /// Runs the target (and the proposer, if it keeps state) over the prompt, all but its last
    /// token, which the first step feeds.
    pub fn prefill(&mut self, target: &Model, proposer: Option<&dyn Proposer>) -> Result<()> {
        let t = Instant::now();
        if let Some(p) = proposer {
            p.prefill(&mut self.proposer_state, &self.req.prompt)?;
        }
        let head = &self.req.prompt[..self.req.prompt.len() - 1];
        for chunk in head[self.cache.len().min(head.len())..].chunks(PREFILL_CHUNK) {
            target.forward(&mut [SeqInput {
                cache: &mut self.cache,
                tokens: chunk,
                logits: Logits::None,
            }])?;
        }
        self.prefill_time += t.elapsed();
        Ok(())
    }

    /// Whether generation has ended.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Text that became final since the last call.
    pub fn take_text(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Prompt and accepted output tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The target's cache of this sequence.
    pub fn cache(&self) -> &SequenceCache {
        &self.cache
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

    /// How many tokens to draft now: the policy's length, cut so that the step cannot emit more
    /// than `max_tokens` nor reach past the target's context.
    fn draft_budget(&self, ctx: usize) -> usize {
        let remaining = self.req.max_tokens.saturating_sub(self.generated.len());
        self.policy
            .next_len()
            .min(remaining.saturating_sub(1))
            .min(ctx.saturating_sub(self.tokens.len()))
    }

    /// Appends tokens the target produced this step, one at a time, ending generation at EOS,
    /// a stop string, `max_tokens` or the context length.
    fn emit(&mut self, new: &[u32], ctx: usize) -> Result<()> {
        for &t in new {
            if self.eos.contains(&t) {
                self.finish = Some(FinishReason::Stop);
                return Ok(());
            }
            self.tokens.push(t);
            self.generated.push(t);
            if let Some(text) = self.stream.push(t)? {
                let (out, stopped) = self.stops.push(&text);
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

/// Runs speculative steps for sequences of one target model and one proposer (or none).
#[derive(Clone, Copy)]
pub struct Speculator<'a> {
    target: &'a Model,
    proposer: Option<&'a dyn Proposer>,
    rule: AcceptRule,
}

impl<'a> Speculator<'a> {
    /// `proposer: None` decodes one token per step (target only).
    pub fn new(target: &'a Model, proposer: Option<&'a dyn Proposer>) -> Self {
        Self {
            target,
            proposer,
            rule: accept_stochastic,
        }
    }

    /// Replaces the stochastic acceptance rule ([`accept_stochastic`] by default). Only the
    /// distribution tests use this, to show that they fail on a wrong rule.
    pub fn with_rule(mut self, rule: AcceptRule) -> Self {
        self.rule = rule;
        self
    }

    /// One token step for every unfinished sequence of the batch: draft, verify all drafts of
    /// all sequences in one target forward, accept, roll back both caches, emit.
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> Result<()> {
        let ctx = self.target.config().max_position_embeddings;
        let mut live: Vec<&mut Sequence> = seqs
            .iter_mut()
            .map(|s| &mut **s)
            .filter(|s| !s.is_finished())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let step_start = Instant::now();
        for s in live.iter_mut() {
            s.decode_start.get_or_insert(step_start);
        }

        // 1. Propose.
        let t = Instant::now();
        let budgets: Vec<usize> = live.iter().map(|s| s.draft_budget(ctx)).collect();
        let mut drafts = vec![Draft::default(); live.len()];
        if let Some(p) = self.proposer {
            let idx: Vec<usize> = (0..live.len()).filter(|&i| budgets[i] > 0).collect();
            if !idx.is_empty() {
                let mut inputs = Vec::with_capacity(idx.len());
                for (i, s) in live.iter_mut().enumerate() {
                    if budgets[i] == 0 {
                        continue;
                    }
                    let Sequence {
                        tokens,
                        proposer_state,
                        sampler,
                        policy,
                        ..
                    } = &mut **s;
                    let confidence = policy.config().confidence;
                    let (params, rng) = sampler.parts();
                    inputs.push(ProposeInput {
                        tokens,
                        state: proposer_state,
                        max: budgets[i],
                        sampling: params,
                        rng,
                        confidence,
                    });
                }
                for (&i, mut d) in idx.iter().zip(p.propose(&mut inputs)?) {
                    d.tokens.truncate(budgets[i]);
                    if let Some(q) = &mut d.probs {
                        q.truncate(budgets[i]);
                    }
                    drafts[i] = d;
                }
            }
        }
        let draft_time = t.elapsed();

        // 2. Verify: one forward over [last, drafts..] of every sequence.
        let t = Instant::now();
        let inputs_tokens: Vec<Vec<u32>> = live
            .iter()
            .zip(&drafts)
            .map(|(s, d)| {
                let mut v = vec![*s.tokens.last().expect("prompt is not empty")];
                v.extend_from_slice(&d.tokens);
                v
            })
            .collect();
        let logits = {
            let mut batch: Vec<SeqInput<'_>> = live
                .iter_mut()
                .zip(&inputs_tokens)
                .map(|(s, toks)| SeqInput {
                    cache: &mut s.cache,
                    tokens: toks,
                    logits: Logits::All,
                })
                .collect();
            self.target.forward(&mut batch)?
        };
        let verify_time = t.elapsed();

        // 3. Accept, 4. roll back, 5. emit.
        for ((s, d), l) in live.iter_mut().zip(&drafts).zip(logits) {
            let rows = l.to_vec2::<f32>()?;
            let verdict = s.decide(&d.tokens, d.probs.as_deref(), &rows, self.rule);
            let n = s.tokens.len();
            // Keep the last committed token and the accepted drafts; `next` is fed next step.
            s.cache.truncate(n + verdict.accepted);
            if let Some(p) = self.proposer {
                p.rollback(&mut s.proposer_state, n + verdict.accepted);
            }
            s.stats.record(d.tokens.len(), verdict.accepted);
            s.stats.draft_time += draft_time;
            s.stats.verify_time += verify_time;
            s.policy.observe(d.tokens.len(), verdict.accepted);
            let mut new = d.tokens[..verdict.accepted].to_vec();
            new.push(verdict.next);
            s.emit(&new, ctx)?;
            s.decode_time = s.decode_start.map(|t| t.elapsed()).unwrap_or_default();
        }
        Ok(())
    }
}

impl Sequence {
    /// Acceptance against the target's rows (one more than drafts), greedy or stochastic.
    fn decide(
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
    seq.prefill(target, proposer)?;
    let spec = Speculator::new(target, proposer);
    while !seq.is_finished() {
        spec.step(&mut [&mut seq])?;
        let text = seq.take_text();
        if !text.is_empty() {
            on_text(&text);
        }
    }
    let out = seq.output();
    let rest = seq.take_text();
    if !rest.is_empty() {
        on_text(&rest);
    }
    Ok(out)
}
