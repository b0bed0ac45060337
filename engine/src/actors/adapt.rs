//! Load and catch-up policies that follow the acceptance this server measures.
//!
//! `specd serve` derives its policies from the served models' costs ([`super::calibrate`]) at an
//! assumed acceptance per method; what a method really accepts depends on the models, the
//! device and the requests (the draft model accepted 83 % on the GPU, where the assumed 70 %
//! made its drafting look unprofitable and turned it off before it had drafted once). Here the
//! engine keeps a running count of drafted and accepted tokens per method and derives the
//! policies again when a method's estimate has moved. While a method has drafted too little to
//! be judged it probes: its sequences draft under no cap and no catch-up rule, so that a policy
//! derived at a wrong prior is corrected instead of keeping itself unmeasured.

use super::calibrate::{CatchUpPolicy, DraftCosts, RowCosts};
use super::load::{assumed_acceptance, LoadPolicies, LoadPolicy};
use super::request::Method;

/// What the policies are derived from: the served models' measured costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The target's forward costs.
    pub target: RowCosts,
    /// The draft model's (when one is served).
    pub draft: Option<DraftCosts>,
    /// A GLIDE drafter's forward of one drafted token for each of the sequences, by sequences
    /// (when one is served and was timed; else it counts as free, like the n-gram lookup).
    pub glide: Option<RowCosts>,
    /// Draft length the policies are derived for.
    pub k: usize,
    /// The largest batch the load policies cover.
    pub max_batch: usize,
}

impl Calibration {
    /// The default pair's costs as measured on an H200 (session 11), for tests and examples: a
    /// target step 3.7 ms and 5 rows 3.77 ms (about the same), the 0.5B draft model 2 ms a
    /// row, its prefill 0.05 ms a token; k = 4, 64 sequences. At the assumed acceptance,
    /// drafting with the draft model never pays under these costs.
    pub fn h200_draft_pair() -> Self {
        let target = RowCosts::fit(1, 0.0037, 5, 0.00377);
        Self {
            target,
            draft: Some(DraftCosts {
                k: 4,
                target,
                draft: RowCosts::line(0.002, 0.0),
                catch_up_token: 0.00005,
            }),
            glide: None,
            k: 4,
            max_batch: 64,
        }
    }

    /// The load policies and the draft model's catch-up rule at `acceptance(method)`.
    pub fn policies(&self, acceptance: impl Fn(Method) -> f64) -> (LoadPolicies, CatchUpPolicy) {
        let policy = |drafter, method| {
            LoadPolicy::calibrated(
                self.target,
                drafter,
                self.k,
                acceptance(method),
                self.max_batch,
            )
        };
        // GLIDE's one layer costs about 3 % of a target row per drafted token on the CPU
        // (BENCHMARKS.md), but a round of drafts is a forward of its own on a GPU: its measured
        // costs when there are some.
        let mut load = LoadPolicies {
            glide: policy(self.glide.unwrap_or(RowCosts::FREE), Method::Glide),
            ngram: policy(RowCosts::FREE, Method::Ngram),
            ..LoadPolicies::default()
        };
        let mut catch_up = CatchUpPolicy::default();
        if let Some(costs) = self.draft {
            load.draft = policy(costs.draft, Method::Draft);
            catch_up = CatchUpPolicy::calibrated_at(&costs, acceptance(Method::Draft));
        }
        (load, catch_up)
    }
}

/// Drafted tokens a method's assumed acceptance counts as (the prior's weight).
pub const PRIOR_TOKENS: f64 = 64.0;
/// A method probes (drafts under no cap and no catch-up rule) until it has drafted this many
/// tokens.
pub const PROBE_TOKENS: f64 = 256.0;
/// Counts are halved when a method's drafted tokens pass this, so the estimate follows the
/// recent requests.
pub const WINDOW_TOKENS: f64 = 8192.0;
/// The policies are derived again when an estimate has moved this much since the last time.
pub const REDERIVE_AT: f64 = 0.05;

/// Drafted and accepted tokens per drafting method, and the acceptance they estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasuredAcceptance {
    /// (drafted, accepted), indexed by [`slot`].
    counts: [(f64, f64); COUNTED.len()],
    /// Every drafted token since start (never halved), for probing.
    seen: [f64; COUNTED.len()],
}

/// The methods counted apart, in [`slot`] order (`glide+ngram` counts as GLIDE, whose policy it
/// drafts under).
const COUNTED: [Method; 3] = [Method::Draft, Method::Ngram, Method::Glide];

/// The index of a drafting method's counts in [`COUNTED`].
fn slot(method: Method) -> Option<usize> {
    let method = match method {
        Method::GlideNgram => Method::Glide,
        m => m,
    };
    COUNTED.iter().position(|&m| m == method)
}

impl MeasuredAcceptance {
    /// Counts one verification: `drafted` tokens proposed, `accepted` of them kept.
    pub fn record(&mut self, method: Method, drafted: usize, accepted: usize) {
        let Some(i) = slot(method) else { return };
        let c = &mut self.counts[i];
        c.0 += drafted as f64;
        c.1 += accepted.min(drafted) as f64;
        self.seen[i] += drafted as f64;
        if c.0 > WINDOW_TOKENS {
            *c = (c.0 / 2.0, c.1 / 2.0);
        }
    }

    /// The acceptance of `method`: its counts with [`PRIOR_TOKENS`] at the assumed acceptance.
    pub fn estimate(&self, method: Method) -> f64 {
        let prior = assumed_acceptance(method);
        match slot(method) {
            None => prior,
            Some(i) => {
                let (d, a) = self.counts[i];
                (a + PRIOR_TOKENS * prior) / (d + PRIOR_TOKENS)
            }
        }
    }

    /// Whether `method` has drafted too little yet to be judged.
    pub fn probing(&self, method: Method) -> bool {
        slot(method).is_some_and(|i| self.seen[i] < PROBE_TOKENS)
    }
}

/// The engine's policies, derived again from [`Calibration`] as acceptance is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptivePolicies {
    pub calibration: Calibration,
    pub measured: MeasuredAcceptance,
    /// The estimates the current policies were derived at, per method of [`COUNTED`].
    derived_at: [f64; COUNTED.len()],
}

impl AdaptivePolicies {
    /// Policies from `calibration` at the assumed acceptances.
    pub fn new(calibration: Calibration) -> Self {
        let measured = MeasuredAcceptance::default();
        let derived_at = COUNTED.map(|m| measured.estimate(m));
        Self {
            calibration,
            measured,
            derived_at,
        }
    }

    /// The policies at the current estimates.
    pub fn policies(&self) -> (LoadPolicies, CatchUpPolicy) {
        self.calibration.policies(|m| self.measured.estimate(m))
    }

    /// The policies again if an estimate moved by [`REDERIVE_AT`] since they were last
    /// derived (`None`: keep the current ones).
    pub fn rederive(&mut self) -> Option<(LoadPolicies, CatchUpPolicy)> {
        let now = COUNTED.map(|m| self.measured.estimate(m));
        let moved = now
            .iter()
            .zip(&self.derived_at)
            .any(|(a, b)| (a - b).abs() >= REDERIVE_AT);
        if !moved {
            return None;
        }
        self.derived_at = now;
        Some(self.policies())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> Calibration {
        Calibration::h200_draft_pair()
    }

    #[test]
    fn the_estimate_starts_at_the_prior_and_follows_what_is_measured() {
        let mut m = MeasuredAcceptance::default();
        assert_eq!(m.estimate(Method::Draft), assumed_acceptance(Method::Draft));
        assert!(m.probing(Method::Draft) && m.probing(Method::Glide));
        assert!(!m.probing(Method::None));
        for _ in 0..100 {
            m.record(Method::Draft, 4, 3);
        }
        let e = m.estimate(Method::Draft);
        assert!((e - (300.0 + 64.0 * 0.7) / 464.0).abs() < 1e-12, "{e}");
        assert!(!m.probing(Method::Draft));
        // glide+ngram counts as GLIDE; the draft model's counts are its own.
        m.record(Method::GlideNgram, 4, 0);
        assert!(m.estimate(Method::Glide) < assumed_acceptance(Method::Glide));
        assert_eq!(m.estimate(Method::GlideNgram), m.estimate(Method::Glide));
        // Accepted never exceeds drafted; a long run is halved, keeping the ratio.
        for _ in 0..10_000 {
            m.record(Method::Ngram, 4, 4);
        }
        assert!(m.estimate(Method::Ngram) <= 1.0 && m.estimate(Method::Ngram) > 0.99);
    }

    #[test]
    fn a_glide_drafter_that_costs_gives_way_at_a_lower_load_than_a_free_one() {
        // The real target on an H100 as `serve` calibrated it (session 23): 1.9 ms + 0.17 ms a
        // row, 9.9 ms at 64 rows and 0.051 ms a row more; GLIDE measured at 61 % there.
        let target = RowCosts::line(0.0019, 0.00017).with_wide(
            crate::actors::calibrate::WIDE_ROWS,
            64,
            0.0099,
            256,
            0.0099 + 192.0 * 0.000051,
        );
        let at = |glide| {
            let c = Calibration {
                target,
                draft: None,
                glide,
                k: 4,
                max_batch: 64,
            };
            c.policies(|_| 0.61).0.glide
        };
        let free = at(None);
        // A drafted token at 0.25 ms + 0.06 ms a sequence (1.2 ms for 16 sequences).
        let costly = at(Some(RowCosts::line(0.00025, 0.00006)));
        assert_eq!(
            free.off_at,
            usize::MAX,
            "a free drafter at 61 % drafts at any load"
        );
        assert_eq!(costly.off_at, 8, "{costly:?}");
        // Alone it still drafts: a round costs a sixth of a step and saves more.
        assert_eq!(costly.cap(1), usize::MAX, "{costly:?}");
        // A drafter as dear as a target step never pays.
        assert_eq!(at(Some(RowCosts::line(0.002, 0.0))).off_at, 1);
    }

    #[test]
    fn a_draft_model_measured_above_the_prior_is_drafted_with_again() {
        // At the assumed 70 % drafting 4 tokens with the draft model does not pay on this GPU
        // shape: its prompt is never read (so it never drafts).
        let mut a = AdaptivePolicies::new(gpu());
        let (_, catch_up) = a.policies();
        assert!(!catch_up.pays(100, 1000, true), "{catch_up:?}");
        // It probes meanwhile, and measures 87.5 %: the prompt is worth reading again.
        assert!(a.measured.probing(Method::Draft));
        for _ in 0..100 {
            a.measured.record(Method::Draft, 4, 4);
            a.measured.record(Method::Draft, 4, 3);
        }
        let (load, catch_up) = a.rederive().expect("the estimate moved");
        assert_eq!(load.draft.cap(1), usize::MAX, "{load:?}");
        assert!(catch_up.pays(100, 1000, true), "{catch_up:?}");
        // Nothing moved since: nothing to derive.
        assert_eq!(a.rederive(), None);
    }

    #[test]
    fn without_a_draft_model_the_catch_up_rule_is_the_default() {
        let c = Calibration {
            draft: None,
            glide: None,
            ..gpu()
        };
        let (_, catch_up) = c.policies(assumed_acceptance);
        assert_eq!(catch_up, CatchUpPolicy::default());
    }
}
