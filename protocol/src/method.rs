//! The speculation method.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a request is drafted for: one type from the command line (`--speculation`, clap) and the
/// configuration file and wire (`"none"`, `"draft"`, `"ngram"`, `"glide"`, `"glide+ngram"`,
/// serde) to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Target only: one token per forward.
    None,
    /// A small draft model (`--draft`, default: the fetched Qwen2.5-Coder-0.5B).
    Draft,
    /// Prompt lookup: continue an earlier occurrence of the last tokens.
    Ngram,
    /// A GLIDE drafter (`--glide`): a small decoder whose cross-attention reads the target's
    /// own KV cache.
    Glide,
    /// GLIDE, or prompt lookup when the last tokens continue a long earlier match (edits of
    /// given code): served wherever GLIDE is.
    #[serde(rename = "glide+ngram")]
    #[cfg_attr(feature = "clap", value(name = "glide+ngram"))]
    GlideNgram,
}

impl Method {
    /// Every method, in the order names are listed.
    pub const ALL: [Method; 5] = [
        Method::None,
        Method::Draft,
        Method::Ngram,
        Method::Glide,
        Method::GlideNgram,
    ];

    /// The wire name (`none`, `draft`, `ngram`, `glide`, `glide+ngram`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Draft => "draft",
            Method::Ngram => "ngram",
            Method::Glide => "glide",
            Method::GlideNgram => "glide+ngram",
        }
    }

    /// The default when none is chosen, from the drafters at hand: `draft` when a draft model
    /// was given (`given_draft`), else `glide+ngram` when a GLIDE drafter was given or found for
    /// the default target (`glide`: the fastest method on the default pair, on the CPU and the
    /// GPU, BENCHMARKS.md), else `draft` when the default pair's draft model is at hand
    /// (`default_draft`), else `none`.
    pub fn default_with(given_draft: bool, glide: bool, default_draft: bool) -> Method {
        if given_draft {
            Method::Draft
        } else if glide {
            Method::GlideNgram
        } else if default_draft {
            Method::Draft
        } else {
            Method::None
        }
    }

    /// Whether requests of this method need the engine's draft model.
    pub fn needs_draft_model(self) -> bool {
        self == Method::Draft
    }

    /// Whether requests of this method need a GLIDE drafter (`glide`, `glide+ngram`).
    pub fn needs_glide(self) -> bool {
        matches!(self, Method::Glide | Method::GlideNgram)
    }

    /// The model a request of this method needs loaded besides the target, for messages
    /// (`a draft model`, `a GLIDE drafter`); `None` when it needs none.
    pub fn needs_model(self) -> Option<&'static str> {
        match self {
            Method::Draft => Some("a draft model"),
            Method::Glide | Method::GlideNgram => Some("a GLIDE drafter"),
            Method::None | Method::Ngram => None,
        }
    }

    /// The names, for messages: `none, draft, ngram, glide, glide+ngram`.
    pub fn names() -> String {
        Self::ALL.map(Method::as_str).join(", ")
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`Method`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown speculation method `{0}`; expected one of {names}", names = Method::names())]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMethod(s.to_string()))
    }
}
