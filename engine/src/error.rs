//! The engine's one error type.

use std::path::PathBuf;

/// Errors raised by the engine. Variants are grouped by what went wrong; every message names the
/// file, tensor, field or limit involved so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or parsed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// The model's architecture is not one specd runs.
    #[error("{}: unsupported architecture `{architecture}` (specd runs llama, mistral and qwen2)", path.display())]
    UnsupportedArchitecture { path: PathBuf, architecture: String },

    /// A tensor the architecture needs is absent from the weights.
    #[error("{}: missing tensor `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: String },

    /// A tensor has a shape other than the configuration implies.
    #[error("{}: tensor `{name}` has shape {actual:?}, expected {expected:?}", path.display())]
    TensorShape {
        path: PathBuf,
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },

    /// The model configuration is missing a field or holds an impossible value.
    #[error("{}: config: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Rendering the chat template failed.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// A request parameter is out of range; the message names the field and the limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The sequence would exceed the model's context length.
    #[error("sequence of {len} tokens exceeds the context length of {limit} tokens")]
    ContextLength { len: usize, limit: usize },

    /// The KV pool has too few free blocks for what was asked.
    #[error("KV cache exhausted: {needed} more blocks needed, {free} of {total} free")]
    KvExhausted {
        needed: usize,
        free: usize,
        total: usize,
    },

    /// The engine's waiting queue is full; the request was not accepted.
    #[error("overloaded: {waiting} requests are already waiting (limit {limit}); retry later")]
    Overloaded { waiting: usize, limit: usize },

    /// The engine has stopped and takes no more requests.
    #[error("the engine has stopped")]
    EngineStopped,

    /// A draft model that cannot draft for the target (different vocabulary).
    #[error("draft model {}: {message}", path.display())]
    IncompatibleDraft { path: PathBuf, message: String },

    /// The device could not be used: no GPU, a driver too old, not enough GPU memory, a
    /// failed kernel; the message says which and what to do.
    #[error("device: {0}")]
    Device(String),

    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// The client-facing code of this error (the gateway's wire codes): what the client did
    /// wrong, or `overloaded`/`internal` when the fault is on this side.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::ContextLength { .. } | Error::KvExhausted { .. } => "prompt_too_long",
            Error::Overloaded { .. } | Error::EngineStopped => "overloaded",
            _ => "internal",
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Config {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
