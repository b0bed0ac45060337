//! The WebSocket protocol (`GET /v1/stream`): JSON text frames, several requests per socket
//! told apart by `id`. Client frames are parsed in two stages so that every error can be
//! told apart: not JSON (`invalid_json`), then a field missing, unknown or of the wrong type
//! (`invalid_request`, naming the field).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use specd_engine::actors::{Chunk, Done, Method};
use specd_engine::chat::Message;

use crate::backend::{GenerationParams, Prompt, SpeculationParams};
use crate::error::{ApiError, ErrorCode};

/// Longest request id accepted.
pub const MAX_ID_BYTES: usize = 128;

/// A frame from the client.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    Generate(Box<GenerateFrame>),
    Cancel { id: String },
}

/// `{"type":"generate", ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateFrame {
    #[serde(rename = "type")]
    _type: String,
    pub id: String,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
    pub speculation: Option<SpeculationParams>,
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelFrame {
    #[serde(rename = "type")]
    _type: String,
    id: String,
}

impl GenerateFrame {
    /// The prompt: exactly one of `prompt` and `messages`.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) => Ok(Prompt::Text(p.clone())),
            (None, Some(m)) => Ok(Prompt::Messages(m.clone())),
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "prompt",
                "give either `prompt` or `messages`, not both",
            )),
            (None, None) => Err(ApiError::invalid(
                "prompt",
                "missing field `prompt` (or `messages`)",
            )),
        }
    }

    /// The generation settings.
    pub fn params(&self) -> GenerationParams {
        GenerationParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self.stop.clone().unwrap_or_default(),
            speculation: self.speculation.clone(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        }
    }
}

/// Parses a text frame. On failure, returns the error with the frame's `id` if one could be
/// read, so that the client can tell which request was refused.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, (Option<String>, ApiError)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the frame is not JSON: {e}"),
            ),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err((
            None,
            ApiError::invalid("type", "a frame must be a JSON object with a `type`"),
        ));
    };
    let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    if let Some(i) = &id {
        if i.is_empty() || i.len() > MAX_ID_BYTES {
            // Not echoed: an id the client cannot have meant for a request.
            return Err((
                None,
                ApiError::invalid(
                    "id",
                    format!("`id` must have 1 to {MAX_ID_BYTES} bytes, got {}", i.len()),
                ),
            ));
        }
    }
    let fail = |e: ApiError| (id.clone(), e);
    match obj.get("type") {
        Some(Value::String(t)) if t == "generate" => {
            let f: GenerateFrame = from_value(value).map_err(fail)?;
            Ok(ClientFrame::Generate(Box::new(f)))
        }
        Some(Value::String(t)) if t == "cancel" => {
            let f: CancelFrame = from_value(value).map_err(fail)?;
            Ok(ClientFrame::Cancel { id: f.id })
        }
        Some(Value::String(t)) => Err(fail(ApiError::invalid(
            "type",
            format!("unknown frame `type` `{t}`; expected generate or cancel"),
        ))),
        Some(_) => Err(fail(ApiError::invalid("type", "`type` must be a string"))),
        None => Err(fail(ApiError::invalid("type", "missing field `type`"))),
    }
}

/// Deserializes `value` into `T`, naming the field at fault.
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names unknown and missing fields itself; elsewhere the path is the field.
        if path == "." || path.is_empty() {
            let param = inner.split('`').nth(1).unwrap_or("").to_string();
            ApiError::invalid(&param, inner)
        } else {
            ApiError::invalid(&path, format!("`{path}`: {inner}"))
        }
    })
}

/// A frame to the client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    Hello(Value),
    Chunk {
        id: String,
        text: String,
        tokens: Vec<u32>,
        drafted: usize,
        accepted: usize,
        draft_chars: usize,
    },
    Done {
        id: String,
        #[serde(flatten)]
        body: Value,
    },
    Error {
        id: Option<String>,
        code: ErrorCode,
        message: String,
        param: Option<String>,
    },
}

impl ServerFrame {
    /// A chunk frame.
    pub fn chunk(id: &str, c: Chunk) -> Self {
        Self::Chunk {
            id: id.to_owned(),
            text: c.text,
            tokens: c.tokens,
            drafted: c.drafted,
            accepted: c.accepted,
            draft_chars: c.draft_chars,
        }
    }

    /// A done frame.
    pub fn done(id: &str, d: &Done, method: Method) -> Self {
        Self::Done {
            id: id.to_owned(),
            body: done_body(d, method),
        }
    }

    /// An error frame.
    pub fn error(id: Option<String>, e: ApiError) -> Self {
        Self::Error {
            id,
            code: e.code,
            message: e.message,
            param: e.param,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","id":null,"code":"internal","message":"{e}"}}"#)
        })
    }
}

/// `finish_reason`, `usage`, `speculation` and `timings` of a finished request (the `done`
/// frame's body; the HTTP endpoints add `speculation` and `timings` to their responses too).
pub fn done_body(d: &Done, method: Method) -> Value {
    let ms = |t: std::time::Duration| (t.as_secs_f64() * 1e6).round() / 1e3;
    let s = &d.speculation;
    let decode = d
        .timings
        .total
        .saturating_sub(d.timings.time_to_first_token.unwrap_or_default());
    let tps = if d.usage.completion_tokens > 1 && !decode.is_zero() {
        (d.usage.completion_tokens - 1) as f64 / decode.as_secs_f64()
    } else {
        0.0
    };
    json!({
        "finish_reason": d.finish_reason.as_str(),
        "usage": usage_body(d),
        "speculation": {
            "method": method.as_str(),
            "drafted": s.drafted_tokens,
            "accepted": s.accepted_tokens,
            "acceptance_rate": s.acceptance_rate(),
            "mean_accepted_length": s.mean_accepted_length(),
            "verifications": s.verifications,
            "acceptance_by_position": s.acceptance_by_position(),
            "lookup": {
                "drafts": s.lookup_drafts,
                "drafted": s.lookup_drafted_tokens,
                "accepted": s.lookup_accepted_tokens,
            },
        },
        "timings": {
            "queued_ms": ms(d.timings.queued),
            "ttft_ms": d.timings.time_to_first_token.map(ms),
            "total_ms": ms(d.timings.total),
            "tokens_per_second": (tps * 10.0).round() / 10.0,
            "preemptions": d.timings.preemptions,
        },
    })
}

/// OpenAI's usage object.
pub fn usage_body(d: &Done) -> Value {
    json!({
        "prompt_tokens": d.usage.prompt_tokens,
        "completion_tokens": d.usage.completion_tokens,
        "total_tokens": d.usage.prompt_tokens + d.usage.completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (Option<String>, ApiError) {
        parse_client_frame(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let (id, e) = err(r#"{"type":"generate","id":"a","prompt":"x","max_tokens":"9"}"#);
        assert_eq!(id.as_deref(), Some("a"));
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.param.as_deref(), Some("max_tokens"), "{e}");
        let (_, e) = err(r#"{"type":"generate","id":"a","prompt":"x","colour":1}"#);
        assert_eq!(e.param.as_deref(), Some("colour"), "{e}");
        let (_, e) = err(r#"{"type":"generate","id":"a","prompt":"x","speculation":{"k":1}}"#);
        assert_eq!(e.param.as_deref(), Some("speculation.k"), "{e}");
        assert!(e.message.contains("`k`"), "{e}");
        let (_, e) = err(r#"{"type":"generate","prompt":"x"}"#);
        assert_eq!(e.param.as_deref(), Some("id"), "{e}");
        let (id, e) = err("{nope");
        assert_eq!((id, e.code), (None, ErrorCode::InvalidJson));
        let (_, e) = err(r#"{"type":"dance","id":"z"}"#);
        assert!(e.message.contains("dance"), "{e}");
    }

    #[test]
    fn frames_parse() {
        let f = parse_client_frame(r#"{"type":"cancel","id":"r1"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Cancel { id } if id == "r1"));
        let f = parse_client_frame(
            r#"{"type":"generate","id":"r2","messages":[{"role":"user","content":"hi"}],"stop":["\n"],"speculation":{"method":"ngram","max_draft":3}}"#,
        )
        .unwrap();
        let ClientFrame::Generate(g) = f else {
            panic!("not generate")
        };
        assert!(matches!(g.prompt().unwrap(), Prompt::Messages(m) if m.len() == 1));
        assert_eq!(g.params().stop, vec!["\n".to_string()]);
    }
}
