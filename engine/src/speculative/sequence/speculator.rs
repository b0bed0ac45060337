//! The token step over a batch of sequences with pools of its own ([`Speculator`]), and
//! generation for one request on top of it.

use std::time::Instant;

use super::{AcceptRule, PhaseTimes, Sequence};
use crate::error::Result;
use crate::generate::{GenerateOutput, GenerateRequest};
use crate::kv::KvPool;
use crate::model::{Model, Tokenizer};
use crate::speculative::accept::accept_stochastic;
use crate::speculative::policy::DraftPolicyConfig;
use crate::speculative::proposer::{Draft, Proposer, TargetView};
use crate::speculative::verify::{propose_drafts, verify, Acceptance};

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
