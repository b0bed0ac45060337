//! The two model phases of a token step, over a batch of sequences: drafting (one proposer,
//! each sequence with its own budget) and verification (ONE target forward over the last
//! committed token plus the drafts of every sequence).

use super::accept::Verdict;
use super::proposer::{Draft, ProposeInput, Proposer, TargetView};
use super::sequence::Sequence;
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::{Logits, Model, SeqInput};

/// What verification hands to acceptance for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// The target's rows of logits (one more than drafts), for acceptance on the host.
    Rows(Vec<Vec<f32>>),
    /// Greedy acceptance already decided by the forward (on the device, on a GPU): only the
    /// count and the next token crossed to the host.
    Greedy(Verdict),
}

/// Whether a sequence drafts this step: it has a budget, and when the proposer reads the
/// target's cache, the target has prefilled its prompt.
pub fn drafts_now(budget: usize, reads_target_cache: bool, pending_target_prefill: usize) -> bool {
    budget > 0 && (!reads_target_cache || pending_target_prefill == 0)
}

/// Drafting phase: up to `budgets[i]` tokens for each sequence, all sharing `proposer` and its
/// pool, reading the target through `target`. Sequences that do not draft now
/// ([`drafts_now`]) get an empty draft without reaching the proposer.
pub fn propose_drafts(
    proposer: &dyn Proposer,
    target: TargetView<'_>,
    kv: &mut KvPool,
    seqs: &mut [&mut Sequence],
    budgets: &[usize],
) -> Result<Vec<Draft>> {
    let mut drafts = vec![Draft::default(); seqs.len()];
    let reads = proposer.reads_target_cache();
    let now: Vec<bool> = (0..seqs.len())
        .map(|i| drafts_now(budgets[i], reads, seqs[i].pending_prefill()))
        .collect();
    let idx: Vec<usize> = (0..seqs.len()).filter(|&i| now[i]).collect();
    if idx.is_empty() {
        return Ok(drafts);
    }
    let mut inputs = Vec::with_capacity(idx.len());
    for (i, s) in seqs.iter_mut().enumerate() {
        if !now[i] {
            continue;
        }
        let Sequence {
            tokens,
            table,
            proposer_state,
            sampler,
            policy,
            ..
        } = &mut **s;
        let confidence = policy.config().confidence;
        let (params, rng) = sampler.parts();
        inputs.push(ProposeInput {
            tokens,
            target_table: table,
            state: proposer_state,
            max: budgets[i],
            sampling: params,
            rng,
            confidence,
        });
    }
    for (&i, mut d) in idx.iter().zip(proposer.propose(target, kv, &mut inputs)?) {
        d.tokens.truncate(budgets[i]);
        if let Some(q) = &mut d.probs {
            q.truncate(budgets[i]);
        }
        drafts[i] = d;
    }
    Ok(drafts)
}

/// Verification phase: ONE target forward over `[last, drafts..]` of every sequence. When every
/// sequence decodes greedily (no repetition penalty) the forward decides acceptance itself;
/// otherwise each sequence gets its rows of logits (one more than its drafts).
pub fn verify(
    target: &Model,
    kv: &mut KvPool,
    seqs: &mut [&mut Sequence],
    drafts: &[Draft],
) -> Result<Vec<Verified>> {
    let greedy = seqs.iter().all(|s| s.decides_greedily());
    let inputs_tokens: Vec<Vec<u32>> = seqs
        .iter()
        .zip(drafts)
        .map(|(s, d)| {
            let mut v = vec![*s.tokens.last().expect("prompt is not empty")];
            v.extend_from_slice(&d.tokens);
            v
        })
        .collect();
    let mut batch: Vec<SeqInput<'_>> = seqs
        .iter_mut()
        .zip(&inputs_tokens)
        .map(|(s, toks)| SeqInput {
            table: &mut s.table,
            tokens: toks,
            logits: Logits::All,
        })
        .collect();
    if greedy {
        return Ok(target
            .verify_greedy(kv, &mut batch)?
            .into_iter()
            .map(|(accepted, next)| Verified::Greedy(Verdict { accepted, next }))
            .collect());
    }
    target
        .forward(kv, &mut batch)?
        .into_iter()
        .map(|l| Ok(Verified::Rows(l.to_vec2::<f32>()?)))
        .collect()
}
