//! When speculation gives way under load: each drafting method's draft-length cap as a function
//! of the sequences running and waiting, as constants or derived from the served models' costs
//! measured at start ([`super::calibrate`]).
//!
//! Verification rows cost arithmetic. Alone, a step streams the weights once and a few more rows
//! are nearly free; in a large batch the step is compute-bound and every rejected draft row
//! slows everyone down. [`LoadPolicy::calibrated`] finds the loads at which, under a cost model
//! fitted on this machine, shorter drafts and then no drafts give more tokens per second.

use super::calibrate::{RowCosts, ASSUMED_ACCEPTANCE};
use super::request::Method;

/// The acceptance each method's load policy is derived at: the draft model's
/// [`ASSUMED_ACCEPTANCE`] (bench-spec: 84 % at k = 4); GLIDE and the n-gram lookup accept far
/// less (bench-spec's code prompts: 18-20 % at a fixed k, 31-44 % with adaptive lengths,
/// BENCHMARKS.md), so 0.4.
pub fn assumed_acceptance(method: Method) -> f64 {
    match method {
        Method::Draft => ASSUMED_ACCEPTANCE,
        Method::None | Method::Ngram | Method::Glide | Method::GlideNgram => 0.4,
    }
}

/// How drafting shrinks as the batch grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPolicy {
    /// From this many sequences (running plus waiting) on, draft at most `shorten_to` tokens.
    pub shorten_at: usize,
    /// The draft length cap between `shorten_at` and `off_at`.
    pub shorten_to: usize,
    /// From this many sequences (running plus waiting) on, draft nothing.
    pub off_at: usize,
}

impl LoadPolicy {
    /// Never limits drafting.
    pub const NEVER: LoadPolicy = LoadPolicy {
        shorten_at: usize::MAX,
        shorten_to: usize::MAX,
        off_at: usize::MAX,
    };

    /// The most tokens a sequence may draft in a step when `load` sequences are running or
    /// waiting.
    pub fn cap(&self, load: usize) -> usize {
        if load >= self.off_at {
            0
        } else if load >= self.shorten_at {
            self.shorten_to
        } else {
            usize::MAX
        }
    }

    /// The policy that maximizes expected tokens per second at each batch size `1..=max_batch`,
    /// for sequences drafting `k` tokens (or fewer, under the cap) each accepted with
    /// probability `acceptance`, when a target forward of `r` rows costs `target.rows(r)` and a
    /// drafter forward over `b` sequences `drafter.rows(b)` per drafted position.
    ///
    /// A step of `b` sequences drafting `c` tokens each costs `c` drafter forwards and one
    /// verification of `b (c + 1)` rows, and yields `b (1 + a + … + a^c)` tokens on average.
    /// With `c_1` the best length for one sequence (0: drafting never pays, `off_at` is 1),
    /// `shorten_at` is the first batch whose best length is shorter than `c_1` (`shorten_to` is
    /// that length), `off_at` the first at which not drafting beats every length.
    pub fn calibrated(
        target: RowCosts,
        drafter: RowCosts,
        k: usize,
        acceptance: f64,
        max_batch: usize,
    ) -> Self {
        let a = acceptance.clamp(0.0, 1.0);
        let rate = |b: usize, c: usize| {
            let tokens: f64 = (0..=c).map(|i| a.powi(i as i32)).sum::<f64>() * b as f64;
            let drafting = if c == 0 {
                0.0
            } else {
                c as f64 * drafter.rows(b)
            };
            tokens / (target.rows(b * (c + 1)) + drafting)
        };
        // The best draft length at batch `b`; ties go to the shorter.
        let best = |b: usize| {
            (0..=k).fold(
                0,
                |best, c| {
                    if rate(b, c) > rate(b, best) {
                        c
                    } else {
                        best
                    }
                },
            )
        };
        // The load policy caps what load changes; alone, each sequence's own draft policy
        // decides (its acceptance may be far from the assumed one).
        let alone = best(1);
        let mut policy = LoadPolicy::NEVER;
        if alone == 0 {
            policy.off_at = 1;
            return policy;
        }
        for b in 2..=max_batch {
            let c = best(b);
            if c == 0 {
                policy.off_at = b;
                break;
            }
            if c < alone && policy.shorten_at == usize::MAX {
                policy.shorten_at = b;
                policy.shorten_to = c;
            }
        }
        policy
    }
}

impl Default for LoadPolicy {
    fn default() -> Self {
        // Measured with the Qwen pair on the 2-core CPU machine (BENCHMARKS.md, issue 4):
        // drafting pays alone, about breaks even at two sequences, and loses 20 % from four.
        // `specd serve` derives its own from the served models ([`LoadPolicy::calibrated`]).
        Self {
            shorten_at: 2,
            shorten_to: 2,
            off_at: 3,
        }
    }
}

/// The load policy of each drafting method: what drafting costs differs (the draft model's
/// forwards, GLIDE's one layer, the n-gram lookup's nothing), so each gives way at its own load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPolicies {
    pub draft: LoadPolicy,
    pub glide: LoadPolicy,
    pub ngram: LoadPolicy,
}

impl LoadPolicies {
    /// Never limits drafting, whatever the method.
    pub const NEVER: LoadPolicies = LoadPolicies::all(LoadPolicy::NEVER);

    /// `policy` for every method.
    pub const fn all(policy: LoadPolicy) -> Self {
        Self {
            draft: policy,
            glide: policy,
            ngram: policy,
        }
    }

    /// The policy `method` drafts under (`glide+ngram` under GLIDE's).
    pub fn of(&self, method: Method) -> LoadPolicy {
        match method {
            Method::None => LoadPolicy::NEVER,
            Method::Draft => self.draft,
            Method::Ngram => self.ngram,
            Method::Glide | Method::GlideNgram => self.glide,
        }
    }
}

impl Default for LoadPolicies {
    fn default() -> Self {
        Self::all(LoadPolicy::default())
    }
}

impl From<LoadPolicy> for LoadPolicies {
    fn from(policy: LoadPolicy) -> Self {
        Self::all(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_policy_shortens_then_stops_drafting() {
        let p = LoadPolicy {
            shorten_at: 4,
            shorten_to: 2,
            off_at: 8,
        };
        assert_eq!(p.cap(1), usize::MAX);
        assert_eq!(p.cap(3), usize::MAX);
        assert_eq!(p.cap(4), 2);
        assert_eq!(p.cap(7), 2);
        assert_eq!(p.cap(8), 0);
        assert_eq!(LoadPolicy::NEVER.cap(1000), usize::MAX);
    }

    /// The CPU pair's shape: 30 ms to stream the target's weights, 6.5 ms of arithmetic a row.
    const TARGET: RowCosts = RowCosts::line(0.030, 0.0065);

    /// Tokens per second of `b` sequences drafting `c` tokens each, written out independently
    /// of `calibrated`'s closure.
    fn rate(b: usize, c: usize, a: f64, drafter: RowCosts) -> f64 {
        let mut tokens = 0.0;
        let mut p = 1.0;
        for _ in 0..=c {
            tokens += p;
            p *= a;
        }
        let time = TARGET.fixed
            + TARGET.per_row * (b * (c + 1)) as f64
            + c as f64 * (drafter.fixed + drafter.per_row * b as f64);
        b as f64 * tokens / time
    }

    /// The length of `0..=k` with the highest rate at batch `b` (the shorter on a tie).
    fn best(b: usize, k: usize, a: f64, drafter: RowCosts) -> usize {
        let mut best = 0;
        for c in 1..=k {
            if rate(b, c, a, drafter) > rate(b, best, a, drafter) {
                best = c;
            }
        }
        best
    }

    #[test]
    fn free_drafts_shorten_then_stop_where_the_rates_cross() {
        let (a, free) = (0.7, RowCosts::FREE);
        let p = LoadPolicy::calibrated(TARGET, free, 4, a, 64);
        assert!(
            1 < p.shorten_at && p.shorten_at < p.off_at && p.off_at < 64,
            "{p:?}"
        );
        let alone = best(1, 4, a, free);
        assert!(
            0 < p.shorten_to && p.shorten_to < alone,
            "{p:?}, alone {alone}"
        );
        // Below `shorten_at`, the best length alone stays the best; at it, `shorten_to` is.
        for b in 1..p.shorten_at {
            assert_eq!(best(b, 4, a, free), alone, "b = {b}");
        }
        assert_eq!(best(p.shorten_at, 4, a, free), p.shorten_to);
        // Drafting still beats not drafting just below `off_at`, and no longer at it.
        assert!(best(p.off_at - 1, 4, a, free) > 0);
        assert!((1..=4).all(|c| rate(p.off_at, c, a, free) <= rate(p.off_at, 0, a, free)));
    }

    #[test]
    fn a_costly_drafter_gives_way_sooner_and_one_that_never_pays_never_drafts() {
        let free = LoadPolicy::calibrated(TARGET, RowCosts::FREE, 4, 0.7, 64);
        let cheap = RowCosts::line(0.002, 0.0005);
        let costly = LoadPolicy::calibrated(TARGET, cheap, 4, 0.7, 64);
        assert!(costly.off_at < free.off_at, "{costly:?} vs {free:?}");
        // A drafter costing two thirds of a target row per drafted token.
        let slow = RowCosts::line(0.025, 0.001);
        let never = LoadPolicy::calibrated(TARGET, slow, 4, 0.7, 64);
        assert_eq!(never.off_at, 1, "{never:?}");
        assert_eq!(never.cap(1), 0);
    }

    #[test]
    fn perfect_free_drafts_on_free_rows_never_give_way() {
        let rows_free = RowCosts::line(0.030, 0.0);
        assert_eq!(
            LoadPolicy::calibrated(rows_free, RowCosts::FREE, 4, 1.0, 64),
            LoadPolicy::NEVER
        );
    }

    #[test]
    fn on_a_gpu_drafting_stops_where_wide_verifications_cost() {
        // One row and 16 cost about the same (the weights' stream), so the narrow line alone
        // would never stop drafting; 64 and 256 rows take the GEMM (H200-like figures).
        let narrow = RowCosts::fit(1, 0.0030, 16, 0.0031);
        assert_eq!(
            LoadPolicy::calibrated(narrow, RowCosts::FREE, 4, 0.4, 64).off_at,
            usize::MAX
        );
        let gpu = narrow.with_wide(16, 64, 0.0100, 256, 0.0180);
        let p = LoadPolicy::calibrated(gpu, RowCosts::FREE, 4, 0.4, 64);
        assert!(p.off_at <= 64, "{p:?}");
        // Alone, drafting four tokens is still the best.
        assert_eq!(p.cap(1), usize::MAX, "{p:?}");
        // At `off_at`, target-only beats every draft length under these costs.
        let rate = |b: usize, c: usize| {
            let tokens: f64 = (0..=c).map(|i| 0.4f64.powi(i as i32)).sum();
            b as f64 * tokens / gpu.rows(b * (c + 1))
        };
        assert!(
            (1..=4).all(|c| rate(p.off_at, c) <= rate(p.off_at, 0)),
            "{p:?}"
        );
    }

    #[test]
    fn cheap_drafters_are_assumed_to_accept_less_than_the_draft_model() {
        assert!(assumed_acceptance(Method::Glide) < assumed_acceptance(Method::Draft));
        assert_eq!(
            assumed_acceptance(Method::Ngram),
            assumed_acceptance(Method::GlideNgram)
        );
        // At 40 %, free drafts on the CPU pair's shape stop paying at a few sequences.
        let p = LoadPolicy::calibrated(TARGET, RowCosts::FREE, 4, 0.4, 64);
        assert!(p.off_at <= 4, "{p:?}");
    }

    #[test]
    fn each_method_drafts_under_its_own_policy() {
        let p = LoadPolicies {
            draft: LoadPolicy::default(),
            glide: LoadPolicy {
                shorten_at: 5,
                shorten_to: 2,
                off_at: 9,
            },
            ngram: LoadPolicy::NEVER,
        };
        assert_eq!(p.of(Method::Draft).cap(3), 0);
        assert_eq!(p.of(Method::Glide).cap(3), usize::MAX);
        assert_eq!(p.of(Method::GlideNgram).cap(5), 2);
        assert_eq!(p.of(Method::Ngram).cap(100), usize::MAX);
        assert_eq!(p.of(Method::None), LoadPolicy::NEVER);
        assert_eq!(LoadPolicies::from(LoadPolicy::NEVER), LoadPolicies::NEVER);
    }
}
