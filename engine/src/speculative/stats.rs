//! Speculation statistics of one request.

use std::time::Duration;

/// Drafts and acceptances at one draft position (0 = the first drafted token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PositionStats {
    pub drafted: u64,
    pub accepted: u64,
}

/// What speculation did for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecStats {
    /// Target forwards after the prompt (verifications, with or without drafts).
    pub verifications: u64,
    /// Verifications that had at least one drafted token.
    pub drafts: u64,
    /// Tokens proposed by the drafter.
    pub drafted_tokens: u64,
    /// Proposed tokens the target kept.
    pub accepted_tokens: u64,
    /// Per draft position.
    pub by_position: Vec<PositionStats>,
    /// Of the drafts (verifications with drafted tokens), those from prompt lookup (the
    /// n-gram proposer; with glide+ngram, the steps that took the n-gram proposal).
    pub lookup_drafts: u64,
    /// Tokens of those drafts.
    pub lookup_drafted_tokens: u64,
    /// Tokens of those drafts the target kept.
    pub lookup_accepted_tokens: u64,
    /// Time spent proposing (drafter forwards, n-gram lookups).
    pub draft_time: Duration,
    /// Time spent in target forwards after the prompt.
    pub verify_time: Duration,
}

impl SpecStats {
    /// Records one verification of `drafted` tokens of which the first `accepted` were kept.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        debug_assert!(accepted <= drafted);
        self.verifications += 1;
        if drafted > 0 {
            self.drafts += 1;
        }
        self.drafted_tokens += drafted as u64;
        self.accepted_tokens += accepted as u64;
        if self.by_position.len() < drafted {
            self.by_position.resize(drafted, PositionStats::default());
        }
        for (i, p) in self.by_position.iter_mut().take(drafted).enumerate() {
            p.drafted += 1;
            if i < accepted {
                p.accepted += 1;
            }
        }
    }

    /// Records the source of a verification [`Self::record`] counted: `drafted` tokens from
    /// prompt lookup, `accepted` of them kept.
    pub fn record_lookup(&mut self, drafted: usize, accepted: usize) {
        if drafted > 0 {
            self.lookup_drafts += 1;
            self.lookup_drafted_tokens += drafted as u64;
            self.lookup_accepted_tokens += accepted as u64;
        }
    }

    /// Adds `other`'s counts and times to these (totals over requests).
    pub fn add(&mut self, other: &SpecStats) {
        self.verifications += other.verifications;
        self.drafts += other.drafts;
        self.drafted_tokens += other.drafted_tokens;
        self.accepted_tokens += other.accepted_tokens;
        self.lookup_drafts += other.lookup_drafts;
        self.lookup_drafted_tokens += other.lookup_drafted_tokens;
        self.lookup_accepted_tokens += other.lookup_accepted_tokens;
        self.draft_time += other.draft_time;
        self.verify_time += other.verify_time;
        if self.by_position.len() < other.by_position.len() {
            self.by_position
                .resize(other.by_position.len(), PositionStats::default());
        }
        for (x, y) in self.by_position.iter_mut().zip(&other.by_position) {
            x.drafted += y.drafted;
            x.accepted += y.accepted;
        }
    }

    /// Accepted / drafted tokens (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted_tokens == 0 {
            0.0
        } else {
            self.accepted_tokens as f64 / self.drafted_tokens as f64
        }
    }

    /// Tokens produced per verification: the accepted drafts plus the target's own token.
    pub fn mean_accepted_length(&self) -> f64 {
        if self.verifications == 0 {
            0.0
        } else {
            (self.accepted_tokens + self.verifications) as f64 / self.verifications as f64
        }
    }

    /// Acceptance rate at each draft position.
    pub fn acceptance_by_position(&self) -> Vec<f64> {
        self.by_position
            .iter()
            .map(|p| p.accepted as f64 / p.drafted.max(1) as f64)
            .collect()
    }

    /// A one-line human summary.
    pub fn summary(&self) -> String {
        let by_pos: Vec<String> = self
            .acceptance_by_position()
            .iter()
            .map(|r| format!("{:.0}%", r * 100.0))
            .collect();
        format!(
            "{} verifications, {} drafts, {} drafted, {} accepted ({:.1}%), mean accepted length {:.2}, by position [{}], draft {:.2}s, verify {:.2}s",
            self.verifications,
            self.drafts,
            self.drafted_tokens,
            self.accepted_tokens,
            100.0 * self.acceptance_rate(),
            self.mean_accepted_length(),
            by_pos.join(" "),
            self.draft_time.as_secs_f64(),
            self.verify_time.as_secs_f64(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let mut s = SpecStats::default();
        s.record(3, 1);
        s.record(2, 2);
        s.record(0, 0);
        assert_eq!((s.verifications, s.drafts), (3, 2));
        assert_eq!((s.drafted_tokens, s.accepted_tokens), (5, 3));
        assert_eq!(s.acceptance_rate(), 0.6);
        assert_eq!(s.mean_accepted_length(), 2.0);
        assert_eq!(s.acceptance_by_position(), vec![1.0, 0.5, 0.0]);
        // The second round came from prompt lookup; a round without drafts counts nowhere.
        s.record_lookup(2, 2);
        s.record_lookup(0, 0);
        assert_eq!(
            (
                s.lookup_drafts,
                s.lookup_drafted_tokens,
                s.lookup_accepted_tokens
            ),
            (1, 2, 2)
        );
        // Totals over two requests: every count twice, positions summed.
        let mut t = s.clone();
        t.add(&s);
        assert_eq!((t.verifications, t.drafts), (6, 4));
        assert_eq!((t.drafted_tokens, t.accepted_tokens), (10, 6));
        assert_eq!(t.lookup_drafted_tokens, 4);
        assert_eq!(t.acceptance_by_position(), vec![1.0, 0.5, 0.0]);
        let mut longer = SpecStats::default();
        longer.record(4, 4);
        t.add(&longer);
        assert_eq!(t.by_position.len(), 4);
        assert_eq!(
            t.by_position[3],
            PositionStats {
                drafted: 1,
                accepted: 1
            }
        );
    }
}
