//! Plain (target-only) generation for one request, and what every generation shares: requests,
//! their validation, stop strings and finish reasons.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::{Model, Tokenizer};
use crate::sampling::SamplingParams;
use crate::speculative::{generate_speculative, DraftPolicyConfig, SpecStats};

/// Largest number of prompt tokens sent through one forward.
pub const PREFILL_CHUNK: usize = 512;

pub use specd_protocol::FinishReason;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Generation goes on past the model's end-of-sequence tokens (to `max_tokens`, a stop
    /// string or the context), which are then ordinary tokens of the output: fixed-length
    /// outputs, for benchmarks and load tests.
    pub ignore_eos: bool,
}

/// The result of a finished generation.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// Generated token ids (EOS excluded; tokens after a stop string excluded).
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// What speculation did (all zero drafts without it).
    pub speculation: SpecStats,
}

/// Holds back streamed text that could still turn into a stop string, and cuts the text at the
/// first stop string.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds decoded text. Returns the text now safe to emit and whether a stop string ended the
    /// output (the stop string itself is never emitted).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        let search_from = self
            .emitted
            .saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        self.text.push_str(delta);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| find_from(&self.text, s, search_from))
            .min();
        if let Some(at) = hit {
            let out = self.text[self.emitted..at].to_string();
            self.emitted = at;
            self.text.truncate(at);
            return (out, true);
        }
        // Keep back the longest suffix that is a proper prefix of some stop string.
        let mut safe = self.text.len();
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        let safe = safe.max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    /// The held-back text, released when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// All text accepted so far (up to a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn find_from(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    let mut from = from.min(haystack.len());
    while !haystack.is_char_boundary(from) {
        from -= 1;
    }
    haystack[from..].find(needle).map(|i| i + from)
}

/// Checks a request against the model's limits, naming the field and the limit.
pub fn validate_request(model: &Model, req: &GenerateRequest) -> Result<()> {
    let ctx = model.config().max_position_embeddings;
    if req.prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt is empty".into()));
    }
    if req.prompt.len() >= ctx {
        return Err(Error::ContextLength {
            len: req.prompt.len(),
            limit: ctx - 1,
        });
    }
    let vocab = model.config().vocab_size;
    if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidRequest(format!(
            "prompt token id {t} is outside the vocabulary of {vocab} tokens"
        )));
    }
    if req.max_tokens == 0 {
        return Err(Error::InvalidRequest(
            "`max_tokens` must be at least 1".into(),
        ));
    }
    req.sampling.validate()
}

/// Generates for one request without speculation, calling `on_text` with each piece of text
/// as soon as it is final. The same token step as speculative generation, with no drafts.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    on_text: impl FnMut(&str),
) -> Result<GenerateOutput> {
    let policy = DraftPolicyConfig {
        max_draft: 0,
        ..Default::default()
    };
    generate_speculative(model, tokenizer, None, policy, req, on_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, String) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            let (o, stopped) = m.push(p);
            out.push_str(&o);
            if stopped {
                return (out, true, m.text().to_string());
            }
        }
        out.push_str(&m.flush());
        (out, false, m.text().to_string())
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_emitted() {
        let (out, stopped, text) = run(&["\n\n"], &["def f():", "\n", "\n", "more"]);
        assert!(stopped);
        assert_eq!(out, "def f():");
        assert_eq!(text, "def f():");
    }

    #[test]
    fn partial_match_is_released_when_it_does_not_complete() {
        let (out, stopped, _) = run(&["END"], &["a E", "N", "x"]);
        assert!(!stopped);
        assert_eq!(out, "a ENx");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_kept_whole() {
        let (out, stopped, _) = run(&["ü!", "b"], &["ä", "ü", "!", "b"]);
        assert!(stopped);
        assert_eq!(out, "ä");
        let (out, stopped, _) = run(&["zz"], &["héllo 🚀", " z"]);
        assert!(!stopped);
        assert_eq!(out, "héllo 🚀 z");
    }
}
