//! Chunked prefill: how many prompt tokens one step may feed the target (and how many missed
//! tokens a drafter may catch up on), so that a long prompt arriving into a running batch is
//! prefilled over several steps instead of stalling every stream for the whole of it.
//!
//! While other sequences decode, a step's chunk rides along in the verification forward (its
//! rows cost compute, not another pass over the weights) and is sized from measured costs so
//! that it adds at most [`PREFILL_SHARE`] of a decode-only step. With nothing else decoding
//! there is no one to starve and a step takes up to the batch's token budget; nor when the
//! prompts waiting outnumber the streams that have started to stream by [`WAITING_SERVED_RATIO`]
//! ([`prompts_take_the_budget`]): then holding the prompts back costs more waiting than it
//! saves. A fixed chunk can be set instead
//! (`EngineConfig::prefill_chunk`). These are plain functions; the Scheduler measures the costs
//! as steps complete and applies them.

/// A step's prefill may add this share of a decode-only step's time.
pub const PREFILL_SHARE: f64 = 0.6;

/// Prompts being prefilled per stream decoding from which a step gives the prompts its whole
/// token budget instead of a share ([`prompts_take_the_budget`]); TGI's default.
pub const WAITING_SERVED_RATIO: f64 = 1.2;

/// The smallest chunk while others decode, so that a long prompt always moves forward.
pub const MIN_CHUNK: usize = 2;

/// A drafter catching up beside other streams reads at least this many tokens a step (auto
/// sizing): a lag this short (a chat prompt, or what a pause under load left) is read at once,
/// inside its first draft, rather than delaying drafting for steps.
pub const MIN_CATCH_UP: usize = 64;

/// Chunks shorter than this are not measured: their per-token cost is mostly fixed overhead.
pub const MIN_MEASURED: usize = 8;

/// While a long prompt is prefilled, every this many steps one runs without a chunk, so that
/// the decode step it is weighed against is measured afresh (running streams grow, and their
/// steps with them).
pub const REMEASURE_EVERY: u64 = 16;

/// An exponentially weighted mean of a cost in seconds (`None` until the first sample).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma(Option<f64>);

impl Ewma {
    const WEIGHT: f64 = 0.25;

    pub fn add(&mut self, x: f64) {
        if !x.is_finite() || x < 0.0 {
            return;
        }
        self.0 = Some(match self.0 {
            None => x,
            Some(m) => m + Self::WEIGHT * (x - m),
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.0
    }
}

/// Costs the Scheduler measures as steps complete.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepCosts {
    /// Seconds a prompt token riding along in a verification forward adds to the step
    /// (until one has, the seconds per token of a prompt prefilled on its own).
    pub prefill_token: Ewma,
    /// Seconds per token a drafter with its own cache catches up on (its prompt prefill).
    pub catch_up_token: Ewma,
    /// Seconds of a step with no prompt rows in it, its drafters' catch-up left out.
    pub decode_step: Ewma,
    /// Steps since [`StepCosts::decode_step`] was last measured.
    pub since_decode_step: u64,
}

impl StepCosts {
    /// Whether the next step, with streams decoding and prompts waiting, should leave the
    /// prompts out once to measure the decode step afresh.
    ///
    /// Also while no decode step has been measured at all (a burst of prompts, the first ones
    /// now decoding beside the rest): until then a chunk could only be the smallest.
    pub fn remeasure(&self) -> bool {
        self.decode_step.get().is_none() || self.since_decode_step >= REMEASURE_EVERY
    }
}

/// Tokens one step may feed for prefill (or catch-up) at `per_token` seconds each: with
/// nothing else decoding, `max_tokens`; otherwise what costs [`PREFILL_SHARE`] of a decode-only
/// step, at least [`MIN_CHUNK`] and at most `max_tokens`. A `fixed` chunk overrides the
/// measurement while others decode. Before anything has been measured, [`MIN_CHUNK`]s.
pub fn chunk_tokens(
    fixed: Option<usize>,
    max_tokens: usize,
    others_decode: bool,
    per_token: Option<f64>,
    decode_step: Option<f64>,
) -> usize {
    let max_tokens = max_tokens.max(1);
    if !others_decode {
        return max_tokens;
    }
    if let Some(n) = fixed {
        return n.clamp(1, max_tokens);
    }
    let measured = match (per_token, decode_step) {
        (Some(p), Some(d)) if p > 0.0 => (PREFILL_SHARE * d / p) as usize,
        _ => MIN_CHUNK,
    };
    measured.clamp(MIN_CHUNK.min(max_tokens), max_tokens)
}

/// Whether a step's prompts may take its whole token budget although streams decode beside
/// them: `prefilling` prompts wait, at least [`WAITING_SERVED_RATIO`] of them per stream
/// `streaming` (past its first token; TGI's `waiting_served_ratio`, the same idea and value).
///
/// Why the ratio sits near one: fed in chunks that each add `PREFILL_SHARE` of a decode step,
/// a prompt that costs `T` alone reaches its first token about `T / PREFILL_SHARE` later than
/// fed whole, and so does every prompt queued behind it; fed whole, it delays each stream by
/// `T` once (chunks delay the streams as much in all, spread out). With more prompts waiting
/// than streams decoding, the chunks cost the waiting more than the smoothness is worth. Just
/// above one, so that one long prompt beside one stream is still fed in shares: a stream
/// frozen for the whole of a long prefill is what chunking is for.
///
/// Why streams that have only their first token do not count: they came in with the prompts
/// still waiting (a burst larger than one step's budget) and have not started to stream. The
/// burst is prefilled whole and decodes together, instead of its last prompts trickling in
/// while the first ones finish, to decode at the end in small, dear steps.
pub fn prompts_take_the_budget(prefilling: usize, streaming: usize) -> bool {
    prefilling > 0 && prefilling as f64 >= WAITING_SERVED_RATIO * streaming as f64
}

/// Shares `budget` tokens among sequences waiting for `pending[i]` tokens each, first come
/// first served (in the order given).
pub fn allot(pending: &[usize], budget: usize) -> Vec<usize> {
    let mut left = budget;
    pending
        .iter()
        .map(|&p| {
            let n = p.min(left);
            left -= n;
            n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_a_prompt_takes_the_whole_budget() {
        assert_eq!(
            chunk_tokens(None, 2048, false, Some(0.01), Some(0.05)),
            2048
        );
        assert_eq!(chunk_tokens(Some(16), 2048, false, None, None), 2048);
    }

    #[test]
    fn among_decoders_a_chunk_costs_a_share_of_a_decode_step() {
        // 80 ms steps, 2 ms per prompt token: 0.6 * 80 / 2 = 24 tokens.
        assert_eq!(chunk_tokens(None, 2048, true, Some(0.002), Some(0.080)), 24);
        // Cheap prefill: capped by the budget; dear prefill: at least MIN_CHUNK.
        assert_eq!(chunk_tokens(None, 100, true, Some(1e-6), Some(0.080)), 100);
        assert_eq!(
            chunk_tokens(None, 2048, true, Some(1.0), Some(0.080)),
            MIN_CHUNK
        );
        // Nothing measured yet.
        assert_eq!(chunk_tokens(None, 2048, true, None, Some(0.080)), MIN_CHUNK);
        assert_eq!(chunk_tokens(None, 1, true, None, None), 1);
        // A fixed chunk wins over the measurement.
        assert_eq!(
            chunk_tokens(Some(7), 2048, true, Some(0.002), Some(0.08)),
            7
        );
    }

    #[test]
    fn prompts_take_the_budget_once_they_outnumber_the_streams_by_the_ratio() {
        // A long prompt arriving into eight streams, or into one, is fed in shares.
        assert!(!prompts_take_the_budget(1, 8));
        assert!(!prompts_take_the_budget(1, 1));
        // More prompts than streams.
        assert!(prompts_take_the_budget(3, 2));
        assert!(prompts_take_the_budget(2, 1));
        assert!(!prompts_take_the_budget(5, 5));
        // The rest of a burst, beside streams that have only their first token.
        assert!(prompts_take_the_budget(5, 0));
        // Nothing to prefill.
        assert!(!prompts_take_the_budget(0, 0));
        assert!(!prompts_take_the_budget(0, 4));
    }

    #[test]
    fn an_unmeasured_decode_step_is_measured_first() {
        let mut c = StepCosts::default();
        assert!(c.remeasure(), "no decode step measured yet");
        c.decode_step.add(0.08);
        assert!(!c.remeasure());
        c.since_decode_step = REMEASURE_EVERY;
        assert!(c.remeasure());
    }

    #[test]
    fn allotment_is_first_come_first_served() {
        assert_eq!(allot(&[10, 50, 5], 40), vec![10, 30, 0]);
        assert_eq!(allot(&[10, 5], 100), vec![10, 5]);
        assert_eq!(allot(&[], 100), Vec::<usize>::new());
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_toward_new_ones() {
        let mut e = Ewma::default();
        assert_eq!(e.get(), None);
        e.add(1.0);
        assert_eq!(e.get(), Some(1.0));
        e.add(2.0);
        assert_eq!(e.get(), Some(1.25));
        e.add(f64::NAN);
        assert_eq!(e.get(), Some(1.25));
    }
}
