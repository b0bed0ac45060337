//! The Scheduler's plan for a step (how many prompt tokens each prefilling sequence feeds, how
//! many tokens each decoding one drafts or its drafter catches up on) and the step costs it
//! measures as steps complete, which size the next plans.

use super::Scheduler;
use crate::actors::calibrate::CatchUpPolicy;
use crate::actors::config::EngineConfig;
use crate::actors::prefill;
use crate::actors::step::{Slot, StepBatch, Work};
use crate::actors::EngineModels;
use crate::metrics as m;
use crate::speculative::drafts_now;

impl Scheduler {
    /// Sets each running slot's work for the step: a chunk of its prompt (FCFS under the
    /// step's prefill budget), or verification with a draft budget (its policy's length, at
    /// most its method's load policy allows at `load` sequences) or a chunk of its drafter's
    /// catch-up.
    pub(super) fn plan_step(&mut self, ctx: usize, load: usize) {
        let pending: Vec<usize> = self
            .running
            .iter()
            .map(|s| s.seq.pending_prefill())
            .collect();
        let (chunk, catch_up) = self.step_budgets(&pending);
        let prefilling: Vec<usize> = pending.iter().copied().filter(|&p| p > 0).collect();
        let mut allotted = prefill::allot(&prefilling, chunk).into_iter();
        for (slot, &p) in self.running.iter_mut().zip(&pending) {
            (slot.chunk, slot.budget, slot.catch_up) = (None, 0, 0);
            if p > 0 {
                let n = allotted.next().expect("one allotment per prefilling slot");
                if n < p {
                    slot.chunk = Some(n);
                    continue;
                }
            }
            // A method still probing drafts under no cap and no catch-up rule (adapt.rs).
            let probing = self
                .adaptive
                .as_ref()
                .is_some_and(|a| a.measured.probing(slot.method));
            let cap = if probing {
                usize::MAX
            } else {
                self.config.load.of(slot.method).cap(load)
            };
            let rule = probing.then_some(CatchUpPolicy::ALWAYS);
            (slot.budget, slot.catch_up) =
                draft_plan(&self.models, &self.config, slot, ctx, cap, catch_up, rule);
        }
    }

    /// The step's prefill budget (prompt tokens shared among the prefilling slots, FCFS) and
    /// the most tokens a drafter may catch up on, from the slots' `pending` prompt tokens and
    /// the costs measured so far.
    fn step_budgets(&self, pending: &[usize]) -> (usize, usize) {
        let decoding = pending.iter().filter(|&&p| p == 0).count();
        let streaming = (self.running.iter().zip(pending))
            .filter(|(s, &p)| p == 0 && s.seq.generated().len() > 1)
            .count();
        // Prompts fed beside decoding streams get a share of the step (a fixed chunk, or
        // measured), unless, sized by measurement, they outnumber the streams under way.
        let shared = decoding > 0
            && (self.config.prefill_chunk.is_some()
                || !prefill::prompts_take_the_budget(pending.len() - decoding, streaming));
        let rows: usize = self
            .running
            .iter()
            .zip(pending)
            .filter(|(_, &p)| p == 0)
            .map(|(s, _)| 1 + s.seq.request_draft_len())
            .sum();
        let spare = self
            .config
            .max_batch_tokens
            .saturating_sub(rows)
            .max(prefill::MIN_CHUNK);
        let c = self.costs;
        let step = c.decode_step.get();
        let chunk = if shared && self.config.prefill_chunk.is_none() && c.remeasure() {
            0
        } else {
            prefill::chunk_tokens(
                self.config.prefill_chunk,
                spare,
                shared,
                c.prefill_token.get(),
                step,
            )
        };
        // A drafter catching up alone delays only its own sequence's drafting: all at once.
        let mut catch_up = prefill::chunk_tokens(
            self.config.prefill_chunk,
            spare,
            self.running.len() > 1,
            // Until measured, the target's prefill cost stands in (a drafter costs less).
            c.catch_up_token.get().or(c.prefill_token.get()),
            step,
        );
        if self.config.prefill_chunk.is_none() {
            catch_up = catch_up.max(prefill::MIN_CATCH_UP);
        }
        (chunk, catch_up)
    }

    /// Takes in what a finished step measured: what a prompt token riding along adds to a
    /// decode step (or, before any rode, a prompt token prefilled on its own), catch-up per
    /// token, and the time of a step with none of these.
    pub(super) fn measure(&mut self, batch: &StepBatch) {
        if batch.error.is_some() {
            return;
        }
        let per_token = |w: Work| w.time.as_secs_f64() / w.tokens as f64;
        let prompt_tokens = batch.rode + batch.prefilled.tokens;
        if prompt_tokens > 0 {
            metrics::histogram!(m::STEP_PROMPT_TOKENS).record(prompt_tokens as f64);
        }
        let total = batch.clock.started.elapsed();
        let own = total.saturating_sub(batch.prefilled.time + batch.caught_up.time);
        let decoding = batch.decisions.iter().any(Option::is_some);
        match self.costs.decode_step.get() {
            Some(step) if batch.rode > 0 && decoding => {
                let added = own.as_secs_f64() - step;
                self.costs.prefill_token.add(added / batch.rode as f64);
            }
            _ if self.costs.prefill_token.get().is_none()
                && batch.prefilled.tokens >= prefill::MIN_MEASURED =>
            {
                self.costs.prefill_token.add(per_token(batch.prefilled));
            }
            _ => {}
        }
        // Catch-up chunks start small, so every one counts (its fixed overhead included).
        if batch.caught_up.tokens > 0 {
            self.costs.catch_up_token.add(per_token(batch.caught_up));
        }
        // A drafter's catch-up runs in forwards of its own, timed apart: `own` leaves it out, so
        // steps with catch-up measure the decode step too (otherwise a run of catch-ups would
        // keep it unmeasured, and prompts held back to measure it).
        if batch.rode == 0 && batch.prefilled.tokens == 0 {
            self.costs.decode_step.add(own.as_secs_f64());
            self.costs.since_decode_step = 0;
        } else {
            self.costs.since_decode_step += 1;
        }
    }
}

/// The tokens `slot` drafts this step (its policy's length, at most `cap`) and the tokens its
/// drafter catches up on without drafting (at most `catch_up_chunk`): none where drafting would
/// not pay or cannot happen yet.
fn draft_plan(
    models: &EngineModels,
    config: &EngineConfig,
    slot: &mut Slot,
    ctx: usize,
    cap: usize,
    catch_up_chunk: usize,
    rule: Option<CatchUpPolicy>,
) -> (usize, usize) {
    let budget = slot.seq.plan(ctx, cap);
    let Some(p) = models.proposer(slot.method) else {
        return (budget, 0);
    };
    let seq = &slot.seq;
    // A drafter reading the target's cache waits for the target to prefill the prompt (it
    // would draft nothing), so nothing is reserved for it.
    if !drafts_now(budget, p.reads_target_cache(), seq.pending_prefill()) {
        return (0, 0);
    }
    // A drafter that reads the prompt on its own stays out of the step that prefills the
    // target: the first token waits for the target alone.
    let apart = p.catches_up_apart();
    if apart && seq.pending_prefill() > 0 {
        return (0, 0);
    }
    // A drafter behind the committed tokens (the prompt, or what it missed while load kept
    // drafting off) must read them first, which only pays with enough tokens left to come.
    // The configured rule is the draft model's (calibrated on it); GLIDE's catch-up is one
    // layer's and keeps the default.
    let lag = seq.drafter_lag(p);
    let rule = rule.unwrap_or(if apart {
        config.catch_up
    } else {
        CatchUpPolicy::default()
    });
    let prompt = seq
        .proposer_state()
        .cached_len()
        .is_none_or(|c| c + 1 < seq.request().prompt.len());
    if !rule.pays(lag, seq.remaining_tokens(), prompt) {
        return (0, 0);
    }
    // A long catch-up is read in chunks riding along with the step, drafting after it.
    if apart && lag > catch_up_chunk {
        return (0, catch_up_chunk);
    }
    (budget, 0)
}
