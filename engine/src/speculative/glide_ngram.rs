//! GLIDE combined with prompt lookup (`glide+ngram`): each step, a sequence whose recent
//! tokens continue a long earlier match (an edit of given code, a repeated identifier list)
//! takes the n-gram proposal, which costs no model, and every other sequence takes GLIDE's.
//!
//! The choice ([`choose_proposal`]) is made from the history alone, before GLIDE drafts: a
//! sampled GLIDE draft is never kept or dropped for what it drew, which would bias the
//! distribution acceptance assumes it was drawn from. An n-gram draft is deterministic
//! (one-hot `q`), so sampled acceptance stays exact either way.
//!
//! GLIDE's own cache stays as if GLIDE had drafted every step: a sequence taking the n-gram
//! proposal still has GLIDE read the committed tokens its cache lacks (no head rows), so the
//! next GLIDE draft has no catch-up to pay and the cache and pool hold what `glide` alone would.

use std::sync::Arc;

use super::glide::{glide_drafts, glide_read_committed, glide_state};
use super::ngram::{NgramMatch, NgramProposer};
use super::proposer::{Draft, ProposeInput, Proposer, ProposerState, TargetView};
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::GlideModel;

/// When a sequence takes the n-gram proposal over GLIDE's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlideNgramConfig {
    /// The n-gram proposal needs a matched suffix of at least this many tokens.
    pub min_match: usize,
    /// Suffixes are matched up to this many tokens (longest first: a longer match is a more
    /// specific occurrence to continue).
    pub max_match: usize,
}

impl Default for GlideNgramConfig {
    fn default() -> Self {
        Self {
            min_match: 2,
            max_match: 8,
        }
    }
}

/// Which proposal a sequence takes at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposal {
    Ngram,
    Glide,
}

/// The n-gram proposal when its match is at least `min_match` tokens long and it fills the
/// step's `budget` (GLIDE is asked for `budget` tokens: a shorter lookup would draft less),
/// GLIDE's otherwise.
pub fn choose_proposal(ngram: Option<&NgramMatch>, budget: usize, min_match: usize) -> Proposal {
    match ngram {
        Some(m) if budget > 0 && m.len >= min_match && m.tokens.len() >= budget => Proposal::Ngram,
        _ => Proposal::Glide,
    }
}

/// The `glide+ngram` proposer: GLIDE's drafter and pool, prompt lookup where it matches long.
#[derive(Debug, Clone)]
pub struct GlideNgramProposer {
    model: Arc<GlideModel>,
    ngram: NgramProposer,
    config: GlideNgramConfig,
}

impl GlideNgramProposer {
    /// Combines `model` with prompt lookup under `config` (refused unless
    /// `1 <= min_match <= max_match <= 32`).
    pub fn new(model: Arc<GlideModel>, config: GlideNgramConfig) -> Result<Self> {
        // Suffixes shorter than `min_match` could never be taken: they are not looked for.
        let ngram = NgramProposer::new(config.max_match, config.min_match)?;
        Ok(Self {
            model,
            ngram,
            config,
        })
    }

    pub fn config(&self) -> GlideNgramConfig {
        self.config
    }
}

/// The same sequence's input, borrowed again (to split a batch between the two proposals).
fn reborrow<'b>(s: &'b mut ProposeInput<'_>) -> ProposeInput<'b> {
    ProposeInput {
        tokens: s.tokens,
        target_table: s.target_table,
        state: &mut *s.state,
        max: s.max,
        sampling: s.sampling,
        rng: &mut *s.rng,
        confidence: s.confidence,
    }
}

impl Proposer for GlideNgramProposer {
    fn name(&self) -> &'static str {
        "glide+ngram"
    }

    fn new_state(&self) -> ProposerState {
        glide_state(&self.model)
    }

    fn new_pool(&self, max_blocks: usize) -> KvPool {
        self.model.new_pool(max_blocks)
    }

    fn has_own_cache(&self) -> bool {
        true
    }

    fn reads_target_cache(&self) -> bool {
        true
    }

    fn propose(
        &self,
        target: TargetView<'_>,
        kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>> {
        let mut drafts = vec![Draft::default(); batch.len()];
        let (mut glide_idx, mut glide_in, mut ngram_in) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in batch.iter_mut().enumerate() {
            let m = self.ngram.lookup_match(s.tokens, s.max);
            match choose_proposal(m.as_ref(), s.max, self.config.min_match) {
                Proposal::Ngram => {
                    drafts[i].tokens = m.expect("chosen only with a match").tokens;
                    drafts[i].lookup = true;
                    ngram_in.push(reborrow(s));
                }
                Proposal::Glide => {
                    glide_idx.push(i);
                    glide_in.push(reborrow(s));
                }
            }
        }
        if !ngram_in.is_empty() {
            glide_read_committed(&self.model, target, kv, &mut ngram_in)?;
        }
        if !glide_in.is_empty() {
            let glide = glide_drafts(&self.model, target, kv, &mut glide_in)?;
            for (i, d) in glide_idx.into_iter().zip(glide) {
                drafts[i] = d;
            }
        }
        Ok(drafts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(len: usize, tokens: usize) -> NgramMatch {
        NgramMatch {
            len,
            tokens: (0..tokens as u32).collect(),
        }
    }

    #[test]
    fn a_long_match_that_fills_the_budget_takes_the_ngram_proposal() {
        assert_eq!(choose_proposal(Some(&matched(4, 4)), 4, 4), Proposal::Ngram);
        assert_eq!(choose_proposal(Some(&matched(8, 6)), 6, 4), Proposal::Ngram);
        assert_eq!(choose_proposal(Some(&matched(5, 1)), 1, 4), Proposal::Ngram);
    }

    #[test]
    fn a_short_match_a_short_proposal_or_none_takes_glides() {
        assert_eq!(
            choose_proposal(Some(&matched(3, 4)), 4, 4),
            Proposal::Glide,
            "match too short"
        );
        assert_eq!(
            choose_proposal(Some(&matched(8, 2)), 4, 4),
            Proposal::Glide,
            "GLIDE would draft more"
        );
        assert_eq!(choose_proposal(None, 4, 4), Proposal::Glide);
        assert_eq!(
            choose_proposal(Some(&matched(8, 0)), 0, 4),
            Proposal::Glide,
            "nothing to draft"
        );
    }

    #[test]
    fn settings_are_checked() {
        let tiny = crate::model::tiny::tiny_model(&Default::default()).unwrap();
        let glide = Arc::new(crate::model::tiny::tiny_guessing_glide(&tiny.model, 64, 1).unwrap());
        let bad = |min_match, max_match| {
            GlideNgramProposer::new(
                glide.clone(),
                GlideNgramConfig {
                    min_match,
                    max_match,
                },
            )
            .is_err()
        };
        assert!(bad(0, 8));
        assert!(bad(5, 4));
        assert!(bad(4, 40));
        assert!(!bad(4, 8));
    }
}
