//! What drafting costs and saves on this machine, measured at start, and the catch-up rule it
//! gives: a drafter with a cache of its own (the draft model) must read every committed token
//! before it drafts, the prompt included, and that only pays when the request has enough tokens
//! left to win it back.
//!
//! `specd serve` times a few forwards of the models it loaded (about a second on the CPU pair)
//! instead of trusting constants measured on another machine: each model's forward of one row
//! and of [`WIDE_ROWS`] rows (a line through them, [`RowCosts`]), the draft model's prefill
//! per token, and a GLIDE drafter's drafted position for one and for many sequences. The same
//! costs set the load policies ([`super::load::LoadPolicy::calibrated`]).

use std::time::Instant;

use crate::error::Result;
use crate::kv::BlockTable;
use crate::model::{DraftRows, GlideModel, Logits, Model, SeqInput, TargetKv};

/// A forward's seconds as a function of its rows: reading the weights once (`fixed`) plus each
/// row's arithmetic (`per_row`), fitted to two timed forwards of the served model. Attention
/// grows with depth on top of this; the fit is taken after a short prompt. On a GPU, forwards of
/// many rows take another path (the prefill GEMM past a few dozen rows, which first dequantizes
/// the weights), so the line of a few rows says nothing of them: `wide` is a second line fitted
/// to two wide forwards there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowCosts {
    pub fixed: f64,
    pub per_row: f64,
    pub wide: Option<WideRows>,
}

/// The cost of wide forwards: from `from` rows on, `at_from` seconds plus `per_row` a row more;
/// between `after` rows (the last of the narrow line's fit) and `from`, the straight line from
/// the narrow line's value at `after` to `at_from`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WideRows {
    pub after: usize,
    pub from: usize,
    pub at_from: f64,
    pub per_row: f64,
}

impl RowCosts {
    /// Costs nothing (the n-gram lookup).
    pub const FREE: RowCosts = RowCosts::line(0.0, 0.0);

    /// The share of a one-row forward that one more row costs: what a draft the target rejects
    /// wastes in verification.
    pub fn row_share(&self) -> f64 {
        let one = self.fixed + self.per_row;
        if one > 0.0 {
            self.per_row / one
        } else {
            0.0
        }
    }

    /// `fixed` seconds plus `per_row` a row, whatever the rows.
    pub const fn line(fixed: f64, per_row: f64) -> Self {
        Self {
            fixed,
            per_row,
            wide: None,
        }
    }

    /// The line through `t1` seconds for `r1` rows and `t2` for `r2 > r1` rows (never negative).
    pub fn fit(r1: usize, t1: f64, r2: usize, t2: f64) -> Self {
        let per_row = ((t2 - t1) / (r2 - r1) as f64).max(0.0);
        Self::line((t1 - r1 as f64 * per_row).max(0.0), per_row)
    }

    /// These costs up to `after` rows, and from `r1 > after` rows on the line through `t1`
    /// seconds for `r1` rows and `t2` for `r2 > r1`.
    pub fn with_wide(self, after: usize, r1: usize, t1: f64, r2: usize, t2: f64) -> Self {
        let wide = WideRows {
            after,
            from: r1,
            at_from: t1,
            per_row: Self::fit(r1, t1, r2, t2).per_row,
        };
        Self {
            wide: Some(wide),
            ..self
        }
    }

    /// Seconds of a forward of `rows` rows.
    pub fn rows(&self, rows: usize) -> f64 {
        let narrow = |r: usize| self.fixed + r as f64 * self.per_row;
        match self.wide {
            Some(w) if rows >= w.from => w.at_from + (rows - w.from) as f64 * w.per_row,
            Some(w) if rows > w.after => {
                let (a, b) = (narrow(w.after), w.at_from);
                a + (b - a) * (rows - w.after) as f64 / (w.from - w.after) as f64
            }
            _ => narrow(rows),
        }
    }
}

/// What a draft-model step is made of, measured on the served models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftCosts {
    /// Drafted tokens per step.
    pub k: usize,
    /// The target's forwards (one row: a plain decode step; `k + 1`: a verification).
    pub target: RowCosts,
    /// The draft model's forwards (one row per sequence and drafted token).
    pub draft: RowCosts,
    /// The draft model's prefill, per token (what catching up costs).
    pub catch_up_token: f64,
}

impl DraftCosts {
    /// Seconds drafting `k` tokens saves per generated token when each draft is accepted with
    /// probability `acceptance` (negative: drafting costs more than it saves).
    pub fn saving_per_token(&self, acceptance: f64) -> f64 {
        let a = acceptance.clamp(0.0, 1.0);
        let per_step: f64 = (0..=self.k).map(|i| a.powi(i as i32)).sum();
        let step = self.target.rows(self.k + 1) + self.k as f64 * self.draft.rows(1);
        self.target.rows(1) - step / per_step
    }
}

/// The acceptance a new sequence is assumed to reach before it has drafted (the draft model's
/// on bench-spec's code prompts, BENCHMARKS.md: 70-80 % at k = 4).
pub const ASSUMED_ACCEPTANCE: f64 = 0.7;

/// When a drafter may (re)start drafting after falling behind the committed tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CatchUpPolicy {
    /// Drafting starts only while the drafter's catch-up (committed tokens it has not read) is
    /// at most this many times the tokens the request may still generate.
    pub per_remaining_token: f64,
    /// Whether the rule holds for the prompt too; otherwise only for catch-ups after the first
    /// chance to draft (a drafter left behind while the load policy kept drafting off).
    pub prompt: bool,
}

impl Default for CatchUpPolicy {
    /// Uncalibrated: the 0.5B drafter's prefill runs about 4 times faster per token than
    /// speculation saves per generated token on the CPU pair (BENCHMARKS.md, issue 4); the
    /// prompt is always read.
    fn default() -> Self {
        Self {
            per_remaining_token: 4.0,
            prompt: false,
        }
    }
}

impl CatchUpPolicy {
    /// Never holds drafting back (`serve --no-load-policy`).
    pub const ALWAYS: CatchUpPolicy = CatchUpPolicy {
        per_remaining_token: f64::INFINITY,
        prompt: false,
    };

    /// The rule from measured costs: catch up on `lag` tokens only when `lag` times the
    /// catch-up cost per token is at most what drafting saves over the tokens still to come,
    /// at [`ASSUMED_ACCEPTANCE`]; the prompt included.
    pub fn calibrated(costs: &DraftCosts) -> Self {
        Self::calibrated_at(costs, ASSUMED_ACCEPTANCE)
    }

    /// [`CatchUpPolicy::calibrated`] at `acceptance` (one the engine measured).
    pub fn calibrated_at(costs: &DraftCosts, acceptance: f64) -> Self {
        let saving = costs.saving_per_token(acceptance).max(0.0);
        Self {
            per_remaining_token: saving / costs.catch_up_token.max(1e-9),
            prompt: true,
        }
    }

    /// Whether a drafter `lag` tokens behind should catch up and draft for a request that may
    /// still generate `remaining` tokens; `prompt`: the lag is the prompt (the first chance).
    pub fn pays(&self, lag: usize, remaining: usize, prompt: bool) -> bool {
        if lag == 0 || (prompt && !self.prompt) {
            return true;
        }
        lag as f64 <= self.per_remaining_token * remaining as f64
    }
}

/// Prefix length the forwards are timed after (a short chat prompt).
const CONTEXT: usize = 64;
/// Rows of the wider forward [`RowCosts`] are fitted with (a few sequences' verifications).
pub const WIDE_ROWS: usize = 16;
/// On a GPU, the rows of the two forwards [`RowCosts::wide`] is fitted to (many sequences'
/// verifications: 64 streams verifying 4 drafts are 320 rows). Not timed on the CPU, where a
/// row's cost does not change with the batch and these would take seconds.
pub const GPU_WIDE_ROWS: [usize; 2] = [64, 256];
/// A chained round of GLIDE drafts is timed at this many rows (the default k).
const CHAINED_ROWS: usize = 4;
/// Each forward is timed this many times; the fastest counts (the others met noise).
const REPEATS: usize = 3;

/// Times `model`'s forward of one row and of [`WIDE_ROWS`] rows after a short prefix (and on a
/// GPU of [`GPU_WIDE_ROWS`] too).
pub fn measure_row_costs(model: &Model) -> Result<RowCosts> {
    let gpu = model.device().is_cuda();
    let tokens = probe_tokens(model.config().vocab_size, CONTEXT + most_rows(gpu));
    let (prefix, rows) = tokens.split_at(CONTEXT);
    fit_costs(gpu, |n| {
        let logits = if n == 1 { Logits::Last } else { Logits::All };
        timed_rows(model, prefix, &rows[..n], logits)
    })
}

/// The most rows [`fit_costs`] times.
fn most_rows(gpu: bool) -> usize {
    if gpu {
        GPU_WIDE_ROWS[1]
    } else {
        WIDE_ROWS
    }
}

/// The [`RowCosts`] through `time(rows)` at 1 and [`WIDE_ROWS`] rows, and on a GPU with the
/// wide line through [`GPU_WIDE_ROWS`].
fn fit_costs(gpu: bool, mut time: impl FnMut(usize) -> Result<f64>) -> Result<RowCosts> {
    let (one, few) = (time(1)?, time(WIDE_ROWS)?);
    let costs = RowCosts::fit(1, one, WIDE_ROWS, few);
    if !gpu {
        return Ok(costs);
    }
    let [r1, r2] = GPU_WIDE_ROWS;
    let (t1, t2) = (time(r1)?, time(r2)?);
    Ok(costs.with_wide(WIDE_ROWS, r1, t1, r2, t2))
}

/// The fastest of [`REPEATS`] runs of `run` over `state` (one more, first, warms up), in
/// seconds; `reset` puts the state back after each, untimed.
fn fastest<S>(
    state: &mut S,
    mut run: impl FnMut(&mut S) -> Result<()>,
    mut reset: impl FnMut(&mut S),
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for i in 0..=REPEATS {
        let t = Instant::now();
        run(state)?;
        if i > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
        reset(state);
    }
    Ok(best)
}

/// Times the forwards of [`DraftCosts`] for `target` verifying `k` drafts of `draft`.
pub fn measure_draft_costs(target: &Model, draft: &Model, k: usize) -> Result<DraftCosts> {
    let prompt = probe_tokens(draft.config().vocab_size, CONTEXT);
    let catch_up = timed_rows(draft, &[], &prompt, Logits::None)?;
    Ok(DraftCosts {
        k,
        target: measure_row_costs(target)?,
        draft: measure_row_costs(draft)?,
        catch_up_token: catch_up / CONTEXT as f64,
    })
}

/// Times one drafted position of a GLIDE drafter: a forward of one token for each of 1 and
/// [`WIDE_ROWS`] sequences (on a GPU also [`GPU_WIDE_ROWS`]), each at the end of a short prompt
/// that both the target's cache and the drafter's own hold (so that its cross-attention reads
/// the target's positions and its self-attention its own), with its output brought back as the
/// proposer takes it for greedy drafts (the logits, or on a GPU each row's pick; a chaining
/// drafter's own rows too): the drafter's [`RowCosts`], by sequences. On the CPU its one layer
/// is a few percent of a target row; on a GPU each drafted position is a forward of its own,
/// so that it costs a sizeable share of a target step and grows with the batch. Where greedy
/// rounds chain on the device ([`GlideModel::chains_on_device`]), a position is timed as a
/// [`CHAINED_ROWS`]th of a chained round of that many. Not timed: the target's hidden rows
/// that a drafter with a feature reads.
pub fn measure_glide_costs(target: &Model, glide: &GlideModel) -> Result<RowCosts> {
    use crate::kv::KvPool;
    let gpu = glide.device().is_cuda();
    let most = most_rows(gpu);
    let prompt = probe_tokens(target.config().vocab_size, CONTEXT);
    let mut target_kv = target.new_pool(KvPool::blocks_for(CONTEXT));
    let mut target_table = BlockTable::new();
    target.forward(
        &mut target_kv,
        &mut [SeqInput {
            table: &mut target_table,
            tokens: &prompt,
            logits: Logits::None,
        }],
    )?;
    // The drafter reads the prompt once and every sequence shares those blocks (the pool's
    // prefix cache); a sequence that finds them not cached reads the rest itself.
    let mut kv = glide.new_pool(most * KvPool::blocks_for(CONTEXT + 1));
    let mut tables: Vec<BlockTable> = (0..most).map(|_| BlockTable::new()).collect();
    let (first, others) = tables.split_at_mut(1);
    let read = |kv: &mut KvPool, table: &mut BlockTable, from: usize| {
        glide.forward(
            kv,
            &mut [SeqInput {
                table,
                tokens: &prompt[from..],
                logits: Logits::None,
            }],
            TargetKv {
                kv: &target_kv,
                tables: &[&target_table],
            },
        )
    };
    read(&mut kv, &mut first[0], 0)?;
    kv.cache_prefix(&first[0], &prompt);
    for table in others {
        let shared = kv.attach_prefix(table, &prompt);
        if shared < CONTEXT {
            read(&mut kv, table, shared)?;
        }
    }
    let token = [prompt[CONTEXT - 1]];
    let chained = glide.chains_on_device();
    let per_round = if chained { CHAINED_ROWS } else { 1 };
    let costs = fit_costs(gpu, |seqs| {
        let round = fastest(
            &mut (&mut kv, &mut tables[..seqs]),
            |(kv, tables)| {
                let mut inputs: Vec<SeqInput<'_>> = tables
                    .iter_mut()
                    .map(|table| SeqInput {
                        table,
                        tokens: &token,
                        logits: Logits::Last,
                    })
                    .collect();
                let cross = vec![&target_table; inputs.len()];
                // As the proposer drafts greedily: the device picks the drafts where it can,
                // and a chaining drafter's own rows come back too.
                let target = TargetKv {
                    kv: &target_kv,
                    tables: &cross,
                };
                if chained {
                    let counts = vec![CHAINED_ROWS; inputs.len()];
                    glide.draft_chain(kv, &mut inputs, target, &counts)?;
                    return Ok(());
                }
                let (out, _) = glide.forward_drafting(kv, &mut inputs, target, &[], true)?;
                if let DraftRows::Logits(rows) = out {
                    for logits in rows {
                        logits.squeeze(0)?.to_vec1::<f32>()?;
                    }
                }
                Ok(())
            },
            |(kv, tables)| {
                for table in tables.iter_mut() {
                    kv.truncate(table, CONTEXT);
                }
            },
        )?;
        Ok(round / per_round as f64)
    })?;
    for table in &mut tables {
        kv.free(table);
    }
    target_kv.free(&mut target_table);
    Ok(costs)
}

/// `n` token ids spread over a vocabulary of `vocab`.
fn probe_tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (i as u32 * 7919 + 13) % vocab as u32)
        .collect()
}

/// The fastest of [`REPEATS`] forwards of `rows` after `prefix` is cached (one more, first,
/// warms up), in seconds.
fn timed_rows(model: &Model, prefix: &[u32], rows: &[u32], logits: Logits) -> Result<f64> {
    let mut kv = model.new_pool(crate::kv::KvPool::blocks_for(prefix.len() + rows.len()));
    let mut table = BlockTable::new();
    if !prefix.is_empty() {
        model.forward(
            &mut kv,
            &mut [SeqInput {
                table: &mut table,
                tokens: prefix,
                logits: Logits::None,
            }],
        )?;
    }
    // Each wanted row's argmax, as greedy verification takes it: on a GPU only a few bytes a
    // row come back. (Timed with `forward`, every row's logits crossed to the host, which no
    // greedy step does there: on an H200 the real pair calibrated at 0.19 ms a row where
    // `specd bench --verify-rows` measured 0.02 ms.)
    let best = fastest(
        &mut (&mut kv, &mut table),
        |(kv, table)| {
            model.forward_top(
                kv,
                &mut [SeqInput {
                    table,
                    tokens: rows,
                    logits,
                }],
            )?;
            Ok(())
        },
        |(kv, table)| kv.truncate(table, prefix.len()),
    )?;
    kv.free(&mut table);
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> DraftCosts {
        // The CPU pair, roughly: 80 ms a target row, 120 ms five rows, 20 ms a draft row,
        // 2 ms a prompt token of draft prefill.
        DraftCosts {
            k: 4,
            target: RowCosts::fit(1, 0.080, 5, 0.120),
            draft: RowCosts::line(0.020, 0.0),
            catch_up_token: 0.002,
        }
    }

    #[test]
    fn a_glide_draft_is_timed_at_the_end_of_a_shared_prompt() {
        use crate::model::tiny::{
            tiny_glide, tiny_guessing_glide_with_chain_norm, tiny_model, TinySpec,
        };
        let target = tiny_model(&TinySpec::default()).unwrap().model;
        assert!(
            CONTEXT.is_multiple_of(crate::kv::BLOCK_SIZE)
                && target.config().max_position_embeddings > CONTEXT,
            "the probe prompt is whole blocks, inside the context"
        );
        // A plain drafter, and one chaining its own rows (drafted as the proposer does).
        for glide in [
            tiny_glide(&target, 32, 7, 0.5).unwrap(),
            tiny_guessing_glide_with_chain_norm(&target, 32, 7).unwrap(),
        ] {
            let c = measure_glide_costs(&target, &glide).unwrap();
            assert!(c.rows(1) > 0.0, "a drafted position costs something: {c:?}");
            assert!(c.wide.is_none(), "the CPU times no wide forwards: {c:?}");
        }
    }

    #[test]
    fn row_costs_pass_through_both_timings() {
        let r = RowCosts::fit(1, 0.080, 5, 0.120);
        assert!((r.rows(1) - 0.080).abs() < 1e-12 && (r.rows(5) - 0.120).abs() < 1e-12);
        assert!((r.per_row - 0.010).abs() < 1e-12);
        // Noise making the wider forward faster gives no negative arithmetic.
        assert_eq!(RowCosts::fit(1, 0.080, 16, 0.070).per_row, 0.0);
        assert_eq!(RowCosts::FREE.rows(100), 0.0);
        // One more row is an eighth of this one-row forward (80 ms: 70 fixed + 10 a row).
        assert!((r.row_share() - 0.125).abs() < 1e-12);
        assert_eq!(RowCosts::FREE.row_share(), 0.0);
    }

    #[test]
    fn wide_rows_follow_their_own_line_joined_to_the_narrow_one() {
        // An H200's shape: a decode step streams the weights (3 ms), 16 rows cost nearly nothing
        // more; 64 and 256 rows take the GEMM (dequantizing first): 8 and 11 ms.
        let r = RowCosts::fit(1, 0.003, 16, 0.0031).with_wide(16, 64, 0.008, 256, 0.011);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(
            close(r.rows(1), 0.003) && close(r.rows(16), 0.0031),
            "{r:?}"
        );
        assert!(
            close(r.rows(64), 0.008) && close(r.rows(256), 0.011),
            "{r:?}"
        );
        // Past the widest timing, the wide line goes on; between 16 and 64, the join.
        assert!(close(r.rows(448), 0.014), "{}", r.rows(448));
        assert!(
            close(r.rows(40), 0.0031 + (0.008 - 0.0031) * 0.5),
            "{}",
            r.rows(40)
        );
        // Without a wide line, the narrow one goes on (the CPU).
        let narrow = RowCosts::fit(1, 0.003, 16, 0.0031);
        assert!(narrow.rows(256) < 0.005);
    }

    #[test]
    fn saving_grows_with_acceptance_and_turns_negative_without_it() {
        let c = costs();
        assert!(c.saving_per_token(0.0) < 0.0);
        assert!(c.saving_per_token(0.5) < c.saving_per_token(0.9));
        // All accepted: five tokens for 200 ms against 400 ms.
        assert!((c.saving_per_token(1.0) - 0.040).abs() < 1e-12);
    }

    #[test]
    fn calibrated_rule_weighs_the_prompt_against_the_tokens_to_come() {
        let p = CatchUpPolicy::calibrated(&costs());
        let ratio = costs().saving_per_token(ASSUMED_ACCEPTANCE) / 0.002;
        assert!((p.per_remaining_token - ratio).abs() < 1e-9);
        assert!(p.prompt);
        // A long answer pays for reading a 100-token prompt, a short one does not.
        assert!(p.pays(100, 512, true));
        assert!(!p.pays(100, (100.0 / ratio) as usize - 1, true));
        assert!(p.pays(0, 0, true));
    }

    #[test]
    fn uncalibrated_rule_always_reads_the_prompt() {
        let p = CatchUpPolicy::default();
        assert!(p.pays(10_000, 1, true));
        assert!(!p.pays(41, 10, false));
        assert!(p.pays(40, 10, false));
        assert!(CatchUpPolicy::ALWAYS.pays(1_000_000, 1, false));
    }

    #[test]
    fn a_drafter_that_never_pays_never_catches_up() {
        let c = DraftCosts {
            draft: RowCosts::line(0.080, 0.0),
            ..costs()
        };
        assert!(c.saving_per_token(ASSUMED_ACCEPTANCE) < 0.0);
        let p = CatchUpPolicy::calibrated(&c);
        assert!(!p.pays(1, 1_000_000, true));
    }
}
