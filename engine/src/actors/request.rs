//! What clients hand the engine and what comes back on a request's stream.

use std::time::Duration;

use crate::generate::{FinishReason, GenerateRequest};
use crate::spec::{DraftPolicyConfig, SpecStats};

/// The engine's id of a request.
pub type RequestId = u64;

/// How a request is drafted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Target only.
    None,
    /// The engine's draft model.
    Draft,
    /// Prompt lookup (n-gram).
    Ngram,
}

impl Method {
    /// The wire name (`none`, `draft`, `ngram`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Draft => "draft",
            Method::Ngram => "ngram",
        }
    }
}

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
