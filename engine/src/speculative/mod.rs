//! Speculative decoding: a proposer drafts tokens, the target verifies them all in one forward,
//! acceptance keeps a prefix (losslessly: greedy output equals the target's own, sampled output
//! follows the target's distribution), and both caches roll back to the accepted length.
//!
//! - [`proposer`]: the [`Proposer`] trait; [`ngram`] (prompt lookup), [`draft_model`] (an
//!   independent small model) and [`glide`] (a one-layer drafter reading the target's cache)
//!   implement it; [`glide_ngram`] combines GLIDE with prompt lookup.
//! - `rounds`: the drafting rounds shared by the drafters with their own cache (catch-up, one
//!   forward a drafted token or a round chained on the device, the choice from each row).
//! - [`accept`]: greedy and stochastic acceptance as plain functions.
//! - [`policy`]: the draft length of a sequence (fixed, adaptive, confidence-gated).
//! - [`stats`]: per-request statistics.
//! - [`verify`]: the drafting and verification phases over a batch.
//! - [`sequence`]: one request's state, acceptance, rollback and commit; the token step over a
//!   batch ([`Speculator`]) and one-request generation.

pub mod accept;
pub mod draft_model;
pub mod glide;
pub mod glide_ngram;
pub mod ngram;
pub mod policy;
pub mod proposer;
mod rounds;
pub mod sequence;
pub mod stats;
pub mod verify;

pub use accept::{accept_greedy, accept_stochastic, Verdict};
pub use draft_model::DraftModelProposer;
pub use glide::GlideProposer;
pub use glide_ngram::{choose_proposal, GlideNgramConfig, GlideNgramProposer, Proposal};
pub use ngram::{NgramMatch, NgramProposer};
pub use policy::{DraftPolicy, DraftPolicyConfig};
pub use proposer::{Draft, ProposeInput, Proposer, ProposerState, TargetView};
pub use sequence::{generate_speculative, AcceptRule, Decision, PhaseTimes, Sequence, Speculator};
pub use stats::{PositionStats, SpecStats};
pub use verify::{drafts_now, propose_drafts, verify, Acceptance, Verified};
