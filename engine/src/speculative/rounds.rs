//! The drafting rounds of a drafter with its own KV cache (the draft model and GLIDE): catch up
//! with the committed tokens, then one forward per drafted token for the sequences still drafting
//! (or, on a GPU, a round's later forwards chained on the device), each token chosen from its
//! drafter's row as the sequence's sampling asks, until its draft length, the context or its
//! confidence stops it.

use super::proposer::{Draft, ProposeInput};
use crate::error::Result;
use crate::generate::PREFILL_CHUNK;
use crate::kv::{BlockTable, KvPool};
use crate::model::{DraftVocab, Logits, SeqInput, Top};
use crate::sampling::{apply_repetition_penalty, argmax, sample_from, transform};

/// What a drafter forward gives for one sequence's next position.
pub(super) enum Next<'v> {
    /// The logits row (cut or padded to the target's vocabulary).
    Row(Vec<f32>),
    /// The logits row over a reduced draft vocabulary (`-inf` at every other target id),
    /// chosen from on its rows ([`choose_reduced`]).
    Reduced(Vec<f32>, &'v DraftVocab),
    /// Its argmax and that token's probability, decided on the device.
    Top(Top),
}

/// The drafter's choice at one position and how sure it is (its top probability; computed
/// only when a confidence threshold asks for it, 1 otherwise).
fn choose(
    next: &Next<'_>,
    history: &[u32],
    input: &mut ProposeInput<'_>,
) -> (u32, f32, Option<Vec<f32>>) {
    let params = input.sampling;
    let logits = match next {
        Next::Top(t) => return (t.token, t.prob, None),
        Next::Row(r) => r,
        Next::Reduced(r, vocab) => return choose_reduced(r, vocab, history, input),
    };
    if params.is_greedy() {
        let penalized;
        let l = if params.repetition_penalty == 1.0 {
            logits
        } else {
            let mut v = logits.to_vec();
            apply_repetition_penalty(&mut v, history, params.repetition_penalty);
            penalized = v;
            &penalized
        };
        let tok = argmax(l);
        if input.confidence.is_none() {
            return (tok, 1.0, None);
        }
        return (tok, top_probability(l, tok as usize), None);
    }
    let q = transform(logits, history, params);
    let tok = sample_from(&q, input.rng);
    (tok, max_probability(&q), Some(q))
}

/// The softmax probability of `logits[i]`, the largest logit: how sure a greedy draft is.
fn top_probability(logits: &[f32], i: usize) -> f32 {
    let top = logits[i];
    1.0 / logits.iter().map(|&x| (x - top).exp()).sum::<f32>()
}

/// The largest probability of a distribution: how sure a sampled draft is.
fn max_probability(q: &[f32]) -> f32 {
    q.iter().cloned().fold(0.0, f32::max)
}

/// [`choose`] on logits over a reduced draft vocabulary, worked on its rows (16,384 for the
/// GLIDE drafter) instead of a copy spread onto the target's vocabulary (151,936 ids, `-inf`
/// outside the subset), which gives the same choice and law: the penalty reaches the same
/// tokens (`DraftVocab::rows_of`), greedy ties go to the lower target id, and a sampled
/// draft's distribution is spread onto the target's ids (zero elsewhere) only at the end, for
/// the acceptance test. (Top-k and top-p cut probability ties by row rather than by id.)
fn choose_reduced(
    r: &[f32],
    vocab: &DraftVocab,
    history: &[u32],
    input: &mut ProposeInput<'_>,
) -> (u32, f32, Option<Vec<f32>>) {
    let params = input.sampling;
    let rows = if params.repetition_penalty == 1.0 {
        Vec::new()
    } else {
        vocab.rows_of(history)
    };
    if !params.is_greedy() {
        let q = transform(r, &rows, params);
        let row = sample_from(&q, input.rng);
        let top = max_probability(&q);
        return (vocab.to_target(row), top, Some(vocab.expand_probs(&q)));
    }
    let penalized;
    let logits = if rows.is_empty() {
        r
    } else {
        let mut v = r.to_vec();
        apply_repetition_penalty(&mut v, &rows, params.repetition_penalty);
        penalized = v;
        &penalized
    };
    let (token, row) = vocab.argmax_target(logits);
    if input.confidence.is_none() {
        return (token, 1.0, None);
    }
    (token, top_probability(logits, row), None)
}

/// The drafting rounds of a drafter with its own cache: each sequence first feeds the committed
/// tokens its cache lacks (a long catch-up in chunks), the last of them giving the first
/// draft's row; then one forward per drafted token for the sequences still drafting, each
/// token chosen from its row, until a sequence has its `max` (within the context of `ctx`
/// positions) or its confidence falls. `step(kv, inputs, seqs)` runs one forward over
/// `inputs`, the inputs of the sequences `seqs` (indices into `batch`), and returns the row
/// each wants (none for catch-up chunks). With `chain`, the rounds after the first run on the
/// device in one go instead ([`ChainRounds`]).
pub(super) fn draft_rounds<'v>(
    batch: &mut [ProposeInput<'_>],
    kv: &mut KvPool,
    ctx: usize,
    mut step: impl FnMut(&mut KvPool, &mut [SeqInput<'_>], &[usize]) -> Result<Vec<Next<'v>>>,
    mut chain: Option<&mut ChainRounds<'_>>,
) -> Result<Vec<Draft>> {
    let mut drafts = vec![Draft::default(); batch.len()];
    // Feeding draft j (j = 1.. max-1) needs position len - 1 + j < ctx.
    let limits: Vec<usize> = batch
        .iter()
        .map(|s| s.max.min((ctx + 1).saturating_sub(s.tokens.len())))
        .collect();
    let active: Vec<usize> = (0..batch.len()).filter(|&i| limits[i] > 0).collect();
    if active.is_empty() {
        return Ok(drafts);
    }
    for &i in &active {
        catch_up_all_but_a_chunk(&mut batch[i], i, kv, &mut step)?;
    }
    // Catch up with the committed tokens, getting the distribution of the first draft.
    let mut rows: Vec<Next<'v>> = {
        let mut inputs: Vec<SeqInput<'_>> = Vec::with_capacity(active.len());
        let mut it = batch.iter_mut().enumerate();
        for &i in &active {
            let s = it.find(|(j, _)| *j == i).expect("active indices ascend").1;
            let table = s.state.table.as_mut().expect("created above");
            let from = table.len();
            inputs.push(SeqInput {
                table,
                tokens: &s.tokens[from..],
                logits: Logits::Last,
            });
        }
        step(kv, &mut inputs, &active)?
    };
    let mut active = active;
    loop {
        let still = take_draft_tokens(batch, &mut drafts, &active, &rows, &limits);
        if let Some(chain) = chain.take() {
            if !still.is_empty() {
                chained_rounds(batch, kv, &mut drafts, still, &limits, chain)?;
            }
            break;
        }
        if still.is_empty() {
            break;
        }
        rows = step(kv, &mut latest_draft_inputs(batch, &drafts, &still), &still)?;
        active = still;
    }
    Ok(drafts)
}

/// The rounds of drafts after the first, chained on the device: `chain(kv, inputs, seqs,
/// counts)` feeds the sequence of `inputs[k]` (index `seqs[k]` into the batch) `counts[k]` rows,
/// one per forward, each the token the forward before picked for it (`counts` never increases
/// along `inputs`), and returns each sequence's greedy picks, `counts[k]` of them.
pub(super) type ChainRounds<'c> =
    dyn FnMut(&mut KvPool, &mut [SeqInput<'_>], &[usize], &[usize]) -> Result<Vec<Vec<Top>>> + 'c;

/// Drafts the sequences `still` further through `chain` in one go, each fed as many rows as it
/// may still draft (its limit: so within its context and the KV blocks its budget reserved),
/// then takes each sequence's picks one round after another until its limit or its confidence
/// stops it (as [`draft_rounds`] would have). Rows fed past a confidence stop are cut by
/// verification's rollback.
fn chained_rounds(
    batch: &mut [ProposeInput<'_>],
    kv: &mut KvPool,
    drafts: &mut [Draft],
    still: Vec<usize>,
    limits: &[usize],
    chain: &mut ChainRounds<'_>,
) -> Result<()> {
    let left = |i: usize| limits[i] - drafts[i].tokens.len();
    // Most rows first: each forward's sequences are then the first ones of the forward before.
    let mut order = still.clone();
    order.sort_by_key(|&i| std::cmp::Reverse(left(i)));
    let counts: Vec<usize> = order.iter().map(|&i| left(i)).collect();
    let picks = chain(
        kv,
        &mut latest_draft_inputs(batch, drafts, &order),
        &order,
        &counts,
    )?;
    // Each chained sequence's picks, taken a round at a time.
    let mut picks: Vec<std::vec::IntoIter<Top>> = picks.into_iter().map(Vec::into_iter).collect();
    let mut active = still;
    while !active.is_empty() {
        let rows: Vec<Next<'_>> = active
            .iter()
            .map(|i| {
                let k = order
                    .iter()
                    .position(|j| j == i)
                    .expect("a chained sequence");
                Next::Top(picks[k].next().expect("a pick for every row it may draft"))
            })
            .collect();
        active = take_draft_tokens(batch, drafts, &active, &rows, limits);
    }
    Ok(())
}

/// The inputs that feed each sequence of `seqs` (indices into `batch`, each once, in any
/// order) its latest draft, wanting the row after it, in the order of `seqs`.
fn latest_draft_inputs<'b>(
    batch: &'b mut [ProposeInput<'_>],
    drafts: &'b [Draft],
    seqs: &[usize],
) -> Vec<SeqInput<'b>> {
    let mut slots: Vec<Option<&'b mut ProposeInput<'_>>> = batch.iter_mut().map(Some).collect();
    seqs.iter()
        .map(|&i| {
            let s = slots[i].take().expect("each sequence once");
            SeqInput {
                table: s.state.table.as_mut().expect("created above"),
                tokens: std::slice::from_ref(drafts[i].tokens.last().expect("drafted")),
                logits: Logits::Last,
            }
        })
        .collect()
}

/// Brings sequence `i`'s drafter cache to within one chunk of its committed tokens: a cache
/// holding them all (and last round's drafts) is cut back to all committed tokens but the last,
/// whose row gives the first draft; a long catch-up (the prompt) is fed in chunks of
/// [`PREFILL_CHUNK`]. What is left joins the batch's first round of drafts.
fn catch_up_all_but_a_chunk<'v>(
    s: &mut ProposeInput<'_>,
    i: usize,
    kv: &mut KvPool,
    step: &mut impl FnMut(&mut KvPool, &mut [SeqInput<'_>], &[usize]) -> Result<Vec<Next<'v>>>,
) -> Result<()> {
    let table = s.state.table.get_or_insert_with(BlockTable::new);
    if table.len() >= s.tokens.len() {
        kv.truncate(table, s.tokens.len() - 1);
    }
    while s.tokens.len() - table.len() > PREFILL_CHUNK {
        let from = table.len();
        step(
            kv,
            &mut [SeqInput {
                table,
                tokens: &s.tokens[from..from + PREFILL_CHUNK],
                logits: Logits::None,
            }],
            &[i],
        )?;
    }
    Ok(())
}

/// One round's choice: each `active` sequence takes its next draft token from its row of
/// `rows` (unless the drafter's confidence in it falls below the sequence's stop). Returns the
/// sequences that draft further (below their `limits`).
fn take_draft_tokens(
    batch: &mut [ProposeInput<'_>],
    drafts: &mut [Draft],
    active: &[usize],
    rows: &[Next<'_>],
    limits: &[usize],
) -> Vec<usize> {
    let mut still = Vec::with_capacity(active.len());
    for (&i, row) in active.iter().zip(rows) {
        let s = &mut batch[i];
        let d = &mut drafts[i];
        // The history matters only to a repetition penalty or a sampling transform.
        let history: Vec<u32> = if s.sampling.is_greedy() && s.sampling.repetition_penalty == 1.0 {
            Vec::new()
        } else {
            s.tokens.iter().chain(&d.tokens).copied().collect()
        };
        let (tok, top, q) = choose(row, &history, s);
        if s.confidence.is_some_and(|c| top < c) {
            continue;
        }
        d.tokens.push(tok);
        if let Some(q) = q {
            d.probs.get_or_insert_with(Vec::new).push(q);
        }
        if d.tokens.len() < limits[i] {
            still.push(i);
        }
    }
    still
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use rand::SeedableRng;

    use super::*;
    use crate::kv::KvDtype;
    use crate::model::tiny::{tiny_config, TinySpec};
    use crate::sampling::SamplingParams;
    use crate::speculative::ProposerState;

    /// A stand-in drafter: the pick after token `t` at position `p`, and how sure it is.
    fn pick(t: u32, p: usize) -> Top {
        Top {
            token: (t * 7 + p as u32 * 3 + 1) % 50,
            prob: ((t * 13 + p as u32) % 10) as f32 / 10.0 + 0.05,
        }
    }

    /// The tokens fed to each sequence's cache, by position.
    type Fed = RefCell<Vec<Vec<u32>>>;

    /// Feeds `token` to sequence `i`'s cache under `table` (its next position); returns that
    /// position.
    fn feed(kv: &mut KvPool, table: &mut BlockTable, fed: &Fed, i: usize, token: u32) -> usize {
        kv.reserve(table, 1).unwrap();
        let p = table.len();
        kv.commit(table, 1);
        let mut fed = fed.borrow_mut();
        fed[i].truncate(p);
        fed[i].push(token);
        p
    }

    /// One forward of the stand-in: every row fed, the wanted rows' picks back.
    fn step(
        kv: &mut KvPool,
        inputs: &mut [SeqInput<'_>],
        seqs: &[usize],
        fed: &Fed,
    ) -> Result<Vec<Next<'static>>> {
        let mut out = Vec::new();
        for (s, &i) in inputs.iter_mut().zip(seqs) {
            let mut last = 0;
            for &t in s.tokens {
                last = feed(kv, s.table, fed, i, t);
            }
            if s.logits != Logits::None {
                out.push(Next::Top(pick(*s.tokens.last().unwrap(), last)));
            }
        }
        Ok(out)
    }

    /// The stand-in's chained rounds: sequence k's row fed, then `counts[k] - 1` rows of its
    /// picks.
    fn chain(
        kv: &mut KvPool,
        inputs: &mut [SeqInput<'_>],
        seqs: &[usize],
        counts: &[usize],
        fed: &Fed,
    ) -> Result<Vec<Vec<Top>>> {
        assert!(
            counts.windows(2).all(|w| w[0] >= w[1]),
            "sequences in order of their rows"
        );
        let mut out = Vec::new();
        for ((s, &i), &n) in inputs.iter_mut().zip(seqs).zip(counts) {
            let mut token = s.tokens[0];
            let mut picks = Vec::new();
            for _ in 0..n {
                let p = feed(kv, s.table, fed, i, token);
                let next = pick(token, p);
                picks.push(next);
                token = next.token;
            }
            out.push(picks);
        }
        Ok(out)
    }

    /// Sequences of different lengths, limits and confidence stops, some at the end of the
    /// context: drafting with the later rounds chained gives every sequence the drafts of
    /// rounds drafted one forward at a time; no sequence is fed a row past its limit (so none
    /// past the context, nor past the KV blocks its draft budget reserved: the committed tokens
    /// and `max - 1` drafts); and after the rollback to the committed tokens and the drafts
    /// (all accepted here), each cache holds exactly those tokens.
    #[test]
    fn chained_rounds_draft_as_rounds_one_at_a_time_within_each_budget() {
        let ctx = 24;
        let config = tiny_config(&TinySpec::default());
        let seqs: [(usize, usize, Option<f32>); 7] = [
            (5, 4, None),
            (9, 1, None),
            (6, 6, Some(0.3)),
            (12, 3, Some(0.6)),
            (22, 6, None),
            (24, 4, None),
            (20, 5, Some(0.2)),
        ];
        let prompts: Vec<Vec<u32>> = seqs
            .iter()
            .enumerate()
            .map(|(i, &(len, ..))| (0..len as u32).map(|t| (t * 11 + i as u32) % 50).collect())
            .collect();
        let sampling = SamplingParams::default();
        let run = |chained: bool| {
            let fed: Fed = RefCell::new(vec![Vec::new(); seqs.len()]);
            let mut kv = KvPool::for_model(&config, 64, KvDtype::F32);
            let target = BlockTable::new();
            let mut states: Vec<ProposerState> =
                seqs.iter().map(|_| ProposerState::default()).collect();
            let mut rngs: Vec<_> = seqs
                .iter()
                .map(|_| rand::rngs::StdRng::seed_from_u64(1))
                .collect();
            let mut batch: Vec<ProposeInput<'_>> = seqs
                .iter()
                .zip(&prompts)
                .zip(states.iter_mut().zip(rngs.iter_mut()))
                .map(
                    |((&(_, max, confidence), tokens), (state, rng))| ProposeInput {
                        tokens,
                        target_table: &target,
                        state,
                        max,
                        sampling: &sampling,
                        rng,
                        confidence,
                    },
                )
                .collect();
            let mut c = |kv: &mut KvPool, i: &mut [SeqInput<'_>], s: &[usize], n: &[usize]| {
                chain(kv, i, s, n, &fed)
            };
            let with: Option<&mut ChainRounds<'_>> = if chained { Some(&mut c) } else { None };
            let drafts = draft_rounds(
                &mut batch,
                &mut kv,
                ctx,
                |kv, i, s| step(kv, i, s, &fed),
                with,
            )
            .unwrap();
            drop(batch);
            // Verification keeps the committed tokens and every draft: the rollback.
            for (i, d) in drafts.iter().enumerate() {
                let table = states[i].table.as_mut().unwrap();
                kv.truncate(table, prompts[i].len() + d.tokens.len());
            }
            let kept: Vec<Vec<u32>> = states
                .iter()
                .zip(fed.borrow().iter())
                .map(|(s, f)| f[..s.table.as_ref().unwrap().len()].to_vec())
                .collect();
            let fed = fed.into_inner();
            (drafts, fed, kept)
        };
        let (one_by_one, fed_one_by_one, _) = run(false);
        let (chained, fed, kept) = run(true);
        let mut fed_past_drafts = 0;
        for (i, (a, b)) in chained.iter().zip(&one_by_one).enumerate() {
            let (len, max, _) = seqs[i];
            assert_eq!(a.tokens, b.tokens, "sequence {i}: chained drafts differ");
            let budget = (len + max - 1).min(ctx);
            assert!(
                fed[i].len() <= budget,
                "sequence {i}: {} rows fed, past the {budget} its budget and the context allow",
                fed[i].len()
            );
            fed_past_drafts += usize::from(fed[i].len() > fed_one_by_one[i].len());
            let want: Vec<u32> = prompts[i].iter().chain(&a.tokens).copied().collect();
            assert_eq!(
                kept[i],
                want[..kept[i].len()],
                "sequence {i}: the cache holds other tokens than the committed ones and drafts"
            );
            assert!(
                kept[i].len() + 1 >= want.len(),
                "sequence {i}: the cache lacks more than the last draft"
            );
        }
        assert!(
            chained.iter().any(|d| d.tokens.len() > 1),
            "no sequence drafted past the first round: the chain never ran"
        );
        assert!(
            fed_past_drafts > 0,
            "no chained sequence was fed rows past its drafts: the confidence stops went untested"
        );
        assert!(
            chained[5].tokens.len() <= 1 && chained[4].tokens.len() <= 3,
            "the sequences at the end of the context drafted past it"
        );
    }
}
