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
