//! The WebSocket protocol (`GET /v1/stream`): JSON text frames, several requests per socket
//! told apart by `id`. Client frames are parsed in two stages so that every error can be
//! told apart: not JSON (`invalid_json`), then a field missing, unknown or of the wrong type
//! (`invalid_request`, naming the field).

use serde_json::Value;
use specd_engine::actors::{Chunk, Done, Method};
pub use specd_protocol::{
    CancelFrame, ChunkFrame, ClientFrame, DoneBody, DoneFrame, ErrorFrame, GenerateFrame,
    LookupReport, ServerFrame, SpeculationParams, SpeculationReport, Timings, Usage,
};

use crate::backend::{GenerationParams, Prompt};
use crate::error::{ApiError, ErrorCode};

/// Longest request id accepted.
pub const MAX_ID_BYTES: usize = 128;

/// The prompt of a generate frame: exactly one of `prompt` and `messages`.
pub fn frame_prompt(g: &GenerateFrame) -> Result<Prompt, ApiError> {
    match (&g.prompt, &g.messages) {
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

/// The generation settings of a generate frame.
pub fn frame_params(g: &GenerateFrame) -> GenerationParams {
    GenerationParams {
        max_tokens: g.max_tokens,
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        repetition_penalty: g.repetition_penalty,
        seed: g.seed,
        stop: g.stop.clone().unwrap_or_default(),
        speculation: g.speculation.clone(),
        ignore_eos: g.ignore_eos.unwrap_or(false),
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
    let Value::Object(mut obj) = value else {
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
    // The tag is read here rather than by serde, so that an error inside a frame names its
    // field (serde buffers an internally tagged enum's fields and loses their paths).
    let kind = obj.remove("type");
    match kind {
        Some(Value::String(t)) if t == "generate" => {
            let f: GenerateFrame = from_value(Value::Object(obj)).map_err(fail)?;
            Ok(ClientFrame::Generate(Box::new(f)))
        }
        Some(Value::String(t)) if t == "cancel" => {
            let f: CancelFrame = from_value(Value::Object(obj)).map_err(fail)?;
            Ok(ClientFrame::Cancel(f))
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

/// A chunk frame.
pub fn chunk_frame(id: &str, c: Chunk) -> ServerFrame {
    ServerFrame::Chunk(ChunkFrame {
        id: id.to_owned(),
        text: c.text,
        tokens: c.tokens,
        drafted: c.drafted,
        accepted: c.accepted,
        draft_chars: c.draft_chars,
    })
}

/// A done frame.
pub fn done_frame(id: &str, d: &Done, method: Method) -> ServerFrame {
    ServerFrame::Done(DoneFrame {
        id: id.to_owned(),
        body: done_body(d, method),
    })
}

/// An error frame.
pub fn error_frame(id: Option<String>, e: ApiError) -> ServerFrame {
    ServerFrame::Error(ErrorFrame {
        id,
        code: e.code,
        message: e.message,
        param: e.param,
    })
}

/// A frame's JSON text.
pub fn frame_json(frame: &ServerFrame) -> String {
    serde_json::to_string(frame).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","id":null,"code":"internal","message":"{e}"}}"#)
    })
}

/// `finish_reason`, `usage`, `speculation` and `timings` of a finished request (the `done`
/// frame's body; the HTTP endpoints add `speculation` and `timings` to their responses too).
pub fn done_body(d: &Done, method: Method) -> DoneBody {
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
    DoneBody {
        finish_reason: d.finish_reason,
        usage: usage_of(d),
        speculation: SpeculationReport {
            method,
            drafted: s.drafted_tokens,
            accepted: s.accepted_tokens,
            acceptance_rate: s.acceptance_rate(),
            mean_accepted_length: s.mean_accepted_length(),
            verifications: s.verifications,
            acceptance_by_position: s.acceptance_by_position(),
            lookup: LookupReport {
                drafts: s.lookup_drafts,
                drafted: s.lookup_drafted_tokens,
                accepted: s.lookup_accepted_tokens,
            },
        },
        timings: Timings {
            queued_ms: ms(d.timings.queued),
            ttft_ms: d.timings.time_to_first_token.map(ms),
            total_ms: ms(d.timings.total),
            tokens_per_second: (tps * 10.0).round() / 10.0,
            preemptions: d.timings.preemptions,
        },
    }
}

/// OpenAI's usage object.
pub fn usage_of(d: &Done) -> Usage {
    Usage::new(d.usage.prompt_tokens, d.usage.completion_tokens)
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
        assert!(matches!(f, ClientFrame::Cancel(c) if c.id == "r1"));
        let f = parse_client_frame(
            r#"{"type":"generate","id":"r2","messages":[{"role":"user","content":"hi"}],"stop":["\n"],"speculation":{"method":"ngram","max_draft":3}}"#,
        )
        .unwrap();
        let ClientFrame::Generate(g) = f else {
            panic!("not generate")
        };
        assert!(matches!(frame_prompt(&g).unwrap(), Prompt::Messages(m) if m.len() == 1));
        assert_eq!(frame_params(&g).stop, vec!["\n".to_string()]);
    }
}
