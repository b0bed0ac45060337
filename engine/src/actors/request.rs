//! What clients hand the engine and what comes back on a request's stream.

use std::time::Duration;

use crate::generate::{FinishReason, GenerateRequest};
use crate::speculative::{DraftPolicyConfig, SpecStats};

/// The engine's id of a request.
pub type RequestId = u64;

pub use specd_protocol::{Method, UnknownMethod};

/// A request to the engine.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub generate: GenerateRequest,
    pub method: Method,
    /// Draft length settings (ignored for [`Method::None`]).
    pub policy: DraftPolicyConfig,
}

/// Tokens a step produced for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub tokens: Vec<u32>,
    /// Text that became final (may lag the tokens by a partial character or a possible stop
    /// string; the rest comes in later chunks).
    pub text: String,
    /// Tokens drafted in the step.
    pub drafted: usize,
    /// Drafted tokens the target accepted; the chunk's other token came from the target.
    pub accepted: usize,
    /// Leading characters of `text` released by accepted draft tokens (the rest came from
    /// the target's own tokens or from text held back earlier).
    pub draft_chars: usize,
    /// The engine step that produced it: steps are numbered from 1 in order, and chunks of
    /// different requests from one step share it (0: text released when the request ended).
    pub step: u64,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Submission to admission into the batch.
    pub queued: Duration,
    /// Submission to the first token.
    pub time_to_first_token: Option<Duration>,
    /// Submission to the end.
    pub total: Duration,
    /// Times the sequence was preempted and recomputed.
    pub preemptions: u32,
}

/// The end of a request.
#[derive(Debug, Clone)]
pub struct Done {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub speculation: SpecStats,
    pub timings: Timings,
}

/// A failure of one request, with the client-facing code ([`crate::Error::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: &'static str,
    pub message: String,
}

impl From<&crate::Error> for RequestError {
    fn from(e: &crate::Error) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// One event on a request's stream: chunks, then exactly one `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    Chunk(Chunk),
    Done(Box<Done>),
    Error(RequestError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_has_one_name_on_the_command_line_in_config_and_on_the_wire() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m);
        }
        let e = "warp".parse::<Method>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown speculation method `warp`; expected one of none, draft, ngram, glide, \
             glide+ngram"
        );
        assert!(serde_json::from_str::<Method>("\"Draft\"").is_err());
        assert_eq!("glide".parse::<Method>(), Ok(Method::Glide));
        assert_eq!("glide+ngram".parse::<Method>(), Ok(Method::GlideNgram));
        assert_eq!(
            serde_json::from_str::<Method>("\"glide+ngram\"").unwrap(),
            Method::GlideNgram
        );
    }

    #[test]
    fn draft_and_glide_need_their_models_and_are_the_defaults_with_them() {
        // A given draft model wins; then GLIDE (with prompt lookup), then the default pair's
        // draft model.
        for (glide, default_draft) in [(false, false), (true, false), (true, true)] {
            assert_eq!(
                Method::default_with(true, glide, default_draft),
                Method::Draft
            );
        }
        assert_eq!(Method::default_with(false, true, true), Method::GlideNgram);
        assert_eq!(Method::default_with(false, true, false), Method::GlideNgram);
        assert_eq!(Method::default_with(false, false, true), Method::Draft);
        assert_eq!(Method::default_with(false, false, false), Method::None);
        let needing: Vec<Method> = Method::ALL
            .into_iter()
            .filter(|m| m.needs_draft_model())
            .collect();
        assert_eq!(needing, [Method::Draft]);
        let models: Vec<(Method, &str)> = Method::ALL
            .into_iter()
            .filter_map(|m| m.needs_model().map(|n| (m, n)))
            .collect();
        assert_eq!(
            models,
            [
                (Method::Draft, "a draft model"),
                (Method::Glide, "a GLIDE drafter"),
                (Method::GlideNgram, "a GLIDE drafter")
            ]
        );
        let glide: Vec<Method> = Method::ALL
            .into_iter()
            .filter(|m| m.needs_glide())
            .collect();
        assert_eq!(glide, [Method::Glide, Method::GlideNgram]);
    }
}
