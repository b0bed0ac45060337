//! The two model phases of a token step, over a batch of sequences: drafting (one proposer,
//! each sequence with its own budget) and verification (ONE target forward over the last
//! committed token plus the drafts of every sequence).

use rand::Rng;

use super::accept::{accept_greedy, Verdict};
use super::proposer::{Draft, ProposeInput, Proposer, TargetView};
use super::sequence::Sequence;
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::llama::{check_verdict_inputs, ForwardOut, OutputMode};
use crate::model::{Logits, Model, SampleInput, SeqInput};

/// What verification hands to acceptance for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// The target's rows of logits (one more than drafts), for acceptance on the host.
    Rows(Vec<Vec<f32>>),
    /// Acceptance already decided by the forward (on the device, on a GPU): greedy, or
    /// rejection sampling at the sequence's temperature. Only the count and the next token
    /// crossed to the host.
    Decided(Verdict),
}

/// Where stochastic acceptance runs: in the verification forward when every sequence's
/// sampling allows it ([`Sequence::samples_in_forward`]), or always on the host with a given
/// rule (the distribution tests' deliberately wrong rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    InForward,
    Host,
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

/// What decides the verification forward's output ([`verification_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModeInputs {
    /// No prompt chunk rides along.
    pub alone: bool,
    /// Every sequence decodes greedily with no repetition penalty.
    pub greedy: bool,
    /// Every verified sequence samples at a temperature alone, and acceptance may run in the
    /// forward (riders, which want no rows, do not count).
    pub sampled_in_forward: bool,
}

/// The verification forward's output: acceptance decided in the forward when nothing rides
/// along and every sequence is greedy, or (riders or not) when every sequence samples at a
/// temperature alone; greedy sequences with prompt chunks riding along, each row's argmax token
/// (acceptance then runs on the host, on a token a row instead of a row of the vocabulary: on a
/// GPU at 64 sequences the rows were 39 MB a step for the real target, which made every step a
/// prompt rode along 2.7 times as long, H100, session 23); otherwise every row's logits.
/// Sampling sequences decide in the forward under riders too: with their rows crossing to the
/// host, 64 OpenAI clients at its default temperature of 1 ran at 654 tokens/s against 4,710
/// greedy (H100, session 29), every step of a round's long admission ~80 ms.
pub(crate) fn verification_mode(m: ModeInputs) -> OutputMode {
    if m.alone && m.greedy {
        OutputMode::GreedyVerdict
    } else if m.sampled_in_forward {
        OutputMode::SampledVerdict
    } else if m.greedy {
        OutputMode::Argmax
    } else {
        OutputMode::Logits
    }
}

/// Verification phase: ONE target forward over `[last, drafts..]` of every sequence, with
/// `riders` (prompt chunks of other sequences, [`Sequence::chunk_input`]) filling the cache in
/// the same forward, so that a chunk costs its rows and not another pass over the weights.
/// The forward decides acceptance itself, or hands back each row's argmax or its logits
/// ([`verification_mode`]; one row more than the sequence's drafts).
pub fn verify<'a>(
    target: &Model,
    kv: &mut KvPool,
    seqs: &'a mut [&mut Sequence],
    drafts: &[Draft],
    riders: Vec<SeqInput<'a>>,
    acceptance: Acceptance,
) -> Result<Vec<Verified>> {
    let mode = verification_mode(ModeInputs {
        alone: riders.is_empty(),
        greedy: seqs.iter().all(|s| s.decides_greedily()),
        // A step of riders alone decides nothing (and keeps the greedy forward's buffers).
        sampled_in_forward: acceptance == Acceptance::InForward
            && !seqs.is_empty()
            && seqs.iter().all(|s| s.samples_in_forward()),
    });
    // Uniforms first (one per draft, one for the token), from each sequence's own generator.
    let inputs = match mode {
        OutputMode::SampledVerdict => sample_inputs(seqs, drafts),
        _ => Vec::new(),
    };
    // A drafter that reads the target's last hidden state gets the rows of this forward.
    let keep = seqs.iter().any(|s| s.proposer_state.wants_feature);
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
    let verifying = batch.len();
    batch.extend(riders);
    check_verdict_inputs(&batch, mode, &inputs)?;
    let (out, hidden) = target.run(kv, &mut batch, mode, &inputs, keep)?;
    drop(batch);
    if let Some(hidden) = hidden {
        for (s, rows) in seqs.iter_mut().zip(hidden) {
            if s.proposer_state.wants_feature {
                s.proposer_state.verified_rows = Some((s.tokens.len() - 1, rows));
            }
        }
    }
    verified(out, verifying, &inputs_tokens)
}

/// What the verifying sampled forward needs of each sequence: its inverse temperature, its
/// draft's probabilities and uniforms drawn from its own generator, one per drafted token and
/// one for the next token.
fn sample_inputs<'d>(seqs: &mut [&mut Sequence], drafts: &'d [Draft]) -> Vec<SampleInput<'d>> {
    seqs.iter_mut()
        .zip(drafts)
        .map(|(s, d)| {
            let inv_temp = 1.0 / s.sampler.params().temperature;
            let rng = s.sampler.rng();
            SampleInput {
                inv_temp,
                q: d.probs.as_deref(),
                u: (0..=d.tokens.len()).map(|_| rng.random::<f32>()).collect(),
            }
        })
        .collect()
}

/// The verifying sequences' results from the forward's output (the first `verifying`
/// sequences of its batch; `inputs` their rows' tokens: the last token, then the draft).
fn verified(out: ForwardOut, verifying: usize, inputs: &[Vec<u32>]) -> Result<Vec<Verified>> {
    match out {
        // The riders' verdicts (a GPU decides a placeholder for each) are not wanted.
        ForwardOut::Verdicts(v) => Ok(v
            .into_iter()
            .take(verifying)
            .map(|(accepted, next)| Verified::Decided(Verdict { accepted, next }))
            .collect()),
        ForwardOut::Logits(l) => l
            .into_iter()
            .take(verifying)
            .map(|l| Ok(Verified::Rows(l.to_vec2::<f32>()?)))
            .collect(),
        ForwardOut::Tokens(tokens) => Ok(tokens
            .into_iter()
            .zip(inputs)
            .map(|(choices, ids)| Verified::Decided(accept_greedy(&ids[1..], &choices)))
            .collect()),
        ForwardOut::Top(_) => unreachable!("no probabilities asked for"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(alone: bool, greedy: bool, sampled_in_forward: bool) -> OutputMode {
        verification_mode(ModeInputs {
            alone,
            greedy,
            sampled_in_forward,
        })
    }

    #[test]
    fn the_forward_decides_alone_and_sampled_under_riders_and_hands_back_argmaxes_else() {
        use OutputMode::*;
        // Nothing rides along: the forward decides, greedy first.
        assert_eq!(mode(true, true, false), GreedyVerdict);
        assert_eq!(mode(true, true, true), GreedyVerdict);
        assert_eq!(mode(true, false, true), SampledVerdict);
        assert_eq!(mode(true, false, false), Logits);
        // A prompt chunk rides along: greedy sequences take a token a row, sampling ones at a
        // temperature alone still decide in the forward, the others take the rows (the host
        // samples).
        assert_eq!(mode(false, true, false), Argmax);
        assert_eq!(mode(false, false, true), SampledVerdict);
        assert_eq!(mode(false, false, false), Logits);
    }
}
