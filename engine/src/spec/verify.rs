//! The two model phases of a token step, over a batch of sequences: drafting (one proposer,
//! each sequence with its own budget) and verification (ONE target forward over the last
//! committed token plus the drafts of every sequence).

use super::accept::Verdict;
use super::proposer::{Draft, ProposeInput, Proposer};
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

/// Drafting phase: up to `budgets[i]` tokens for each sequence, all sharing `proposer` and its
/// pool. Sequences with a zero budget get an empty draft without reaching the proposer.
pub fn propose_drafts(
    proposer: &dyn Proposer,
    kv: &mut KvPool,
    seqs: &mut [&mut Sequence],
    budgets: &[usize],
) -> Result<Vec<Draft>> {
    let mut drafts = vec![Draft::default(); seqs.len()];
    let idx: Vec<usize> = (0..seqs.len()).filter(|&i| budgets[i] > 0).collect();
    if idx.is_empty() {
        return Ok(drafts);
    }
    let mut inputs = Vec::with_capacity(idx.len());
    for (i, s) in seqs.iter_mut().enumerate() {
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
    for (&i, mut d) in idx.iter().zip(proposer.propose(kv, &mut inputs)?) {
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
