//! How many tokens to draft for a sequence at each step.

/// Draft-length settings of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftPolicyConfig {
    /// The most tokens drafted in one step (`k`); 0 switches speculation off.
    pub max_draft: usize,
    /// Adapt the length to the acceptance seen so far instead of always drafting `max_draft`.
    pub adaptive: bool,
    /// The drafter stops early when its most likely token's probability falls below this.
    pub confidence: Option<f32>,
}

impl Default for DraftPolicyConfig {
    fn default() -> Self {
        Self {
            max_draft: 4,
            adaptive: false,
            confidence: None,
        }
    }
}

/// Where a verification row costs at least this share of a one-row forward, drafting stops by
/// default below [`COSTLY_ROW_CONFIDENCE`] ([`default_confidence`]): between the shares measured
/// where the stop loses (an H100's ~1 % in session 16) and where it pays (this CPU's 9–21 %, an
/// H100's 16–19 % since its one-row step got faster than its verification rows).
pub const COSTLY_ROW_SHARE: f64 = 0.05;

/// The confidence below which drafting stops by default where verification rows are costly:
/// 0.4 since GLIDE run 6, which beat 0.5 in both runs that set them side by side on this CPU
/// (1.57× against 1.50×, then 1.53× against 1.38× target-only; 0.3 gave 1.54× in the second;
/// BENCHMARKS.md). Run 5 chose 0.5 over 0.3 and 0.7.
pub const COSTLY_ROW_CONFIDENCE: f32 = 0.4;

/// The confidence stop a server uses when none is configured, for a target whose verification
/// rows each cost `row_share` of a one-row forward (its calibration at start): where a row costs
/// 5 % of a step or more (the 2-core CPU here: 9–21 %; an H100 now: 16–19 %), a draft its
/// drafter doubts wastes more verification than it is likely to save, so drafting stops below
/// 40 %; where rows are nearly free (an H100 in session 16: about 1 %) a stopped draft only
/// loses a chance at a token, so never. Measured both ways (BENCHMARKS.md, "Stopping drafts
/// where GLIDE is unsure" and session 28's GPU section): on the CPU GLIDE at k = 4 goes from
/// 1.19× to 1.42× target-only, the draft model is unchanged and n-gram drafts carry no doubt;
/// on the H100 of session 16 GLIDE fell from 1.62× to 1.44×, on session 28's it rose from
/// 1.05× to 1.23×.
pub fn default_confidence(row_share: f64) -> Option<f32> {
    (row_share >= COSTLY_ROW_SHARE).then_some(COSTLY_ROW_CONFIDENCE)
}

/// The draft length of one sequence: fixed, or adaptive (one longer after a step whose drafts
/// were all accepted, one shorter after a step that lost more than half of them, always within
/// `1..=max_draft`).
#[derive(Debug, Clone)]
pub struct DraftPolicy {
    config: DraftPolicyConfig,
    current: usize,
}

impl DraftPolicy {
    /// A policy starting at `max_draft` (fixed) or half of it, rounded up (adaptive).
    pub fn new(config: DraftPolicyConfig) -> Self {
        let current = if config.adaptive {
            config.max_draft.div_ceil(2)
        } else {
            config.max_draft
        };
        Self { config, current }
    }

    /// The settings.
    pub fn config(&self) -> &DraftPolicyConfig {
        &self.config
    }

    /// Tokens to draft at the next step.
    pub fn next_len(&self) -> usize {
        self.current
    }

    /// Records a verification: `drafted` tokens proposed, the first `accepted` of them kept.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        debug_assert!(accepted <= drafted);
        if !self.config.adaptive || drafted == 0 {
            return;
        }
        if accepted == drafted {
            self.current = (self.current + 1).min(self.config.max_draft);
        } else if 2 * accepted < drafted {
            self.current = self.current.saturating_sub(1).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafting_stops_on_doubt_only_where_verification_rows_are_costly() {
        // This CPU's calibrations: 27 ms + 7 ms a row, 46 ms + 5.9 ms; an H100's: 3.0 ms +
        // 0.03 ms a row.
        assert_eq!(default_confidence(7.0 / 34.0), Some(0.4));
        assert_eq!(default_confidence(5.9 / 52.0), Some(0.4));
        assert_eq!(default_confidence(0.03 / 3.03), None);
        assert_eq!(
            default_confidence(COSTLY_ROW_SHARE),
            Some(COSTLY_ROW_CONFIDENCE)
        );
        assert_eq!(default_confidence(0.0), None);
    }

    fn adaptive(max: usize) -> DraftPolicy {
        DraftPolicy::new(DraftPolicyConfig {
            max_draft: max,
            adaptive: true,
            confidence: None,
        })
    }

    #[test]
    fn adaptive_grows_on_full_acceptance_and_shrinks_on_early_rejection() {
        let mut p = adaptive(6);
        assert_eq!(p.next_len(), 3);
        p.observe(3, 3);
        p.observe(4, 4);
        p.observe(5, 5);
        p.observe(6, 6);
        assert_eq!(p.next_len(), 6, "bounded by max_draft");
        p.observe(6, 4);
        assert_eq!(p.next_len(), 6, "a late rejection keeps the length");
        for _ in 0..10 {
            p.observe(p.next_len(), 0);
        }
        assert_eq!(p.next_len(), 1, "never below one");
    }

    #[test]
    fn fixed_never_changes() {
        let mut p = DraftPolicy::new(DraftPolicyConfig {
            max_draft: 5,
            ..Default::default()
        });
        p.observe(5, 0);
        p.observe(5, 5);
        assert_eq!(p.next_len(), 5);
    }
}
