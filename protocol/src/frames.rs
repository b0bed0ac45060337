//! The WebSocket frames and what they carry.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Method};

/// One chat message (`{"role": "user", "content": "..."}`), as in OpenAI's API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message from `role` with `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// `max_tokens` or the context length was reached.
    Length,
    /// An EOS token or a stop string was produced.
    Stop,
    /// The client cancelled the request.
    Cancelled,
}

impl FinishReason {
    /// The wire name (`length`, `stop`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop => "stop",
            Self::Cancelled => "cancelled",
        }
    }
}

// ------------------------------------------------------------------ client to server

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// Starts a request.
    Generate(Box<GenerateFrame>),
    /// Cancels the request `id`; it ends with a `done` frame whose finish reason is
    /// `cancelled`.
    Cancel(CancelFrame),
}

/// `{"type": "generate", ...}`: a request, told apart from the others on its socket by `id`.
/// Exactly one of `prompt` and `messages`; every other field has the server's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateFrame {
    pub id: String,
    /// Raw prompt text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Generation stops before the first occurrence of any of these strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpeculationParams>,
    /// Generation goes on past the end-of-sequence tokens (fixed-length outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

/// `{"type": "cancel", "id": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelFrame {
    pub id: String,
}

/// Per-request speculation settings (the `speculation` object of a request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculationParams {
    /// Served only where its drafter is (`draft`: a draft model; `glide`, `glide+ngram`: a
    /// GLIDE drafter); the `hello` frame lists the served methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Most tokens drafted per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_draft: Option<i64>,
    /// The draft length follows the acceptance of the request's recent steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<bool>,
}

// ------------------------------------------------------------------ server to client

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// The first frame on every socket: what the server serves and its limits.
    Hello(Hello),
    /// Tokens of a request.
    Chunk(ChunkFrame),
    /// A request's end, with its usage, speculation figures and timings.
    Done(DoneFrame),
    /// A refused frame or a failed request (`id` is null when the frame had no usable id).
    Error(ErrorFrame),
}

/// The `hello` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub model: String,
    pub draft_model: Option<String>,
    pub glide_model: Option<String>,
    /// The methods requests may ask for.
    pub methods: Vec<Method>,
    /// What a request that names none gets.
    pub speculation: HelloSpeculation,
    pub limits: HelloLimits,
}

/// The server's default speculation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloSpeculation {
    pub method: Method,
    pub max_draft: usize,
}

/// Limits a request or connection must keep within.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloLimits {
    pub max_tokens: usize,
    pub max_prompt_tokens: usize,
    pub max_requests_per_connection: usize,
    pub max_frame_bytes: usize,
}

/// The `chunk` frame: tokens that one engine step produced for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFrame {
    pub id: String,
    /// Text that became final (it may lag the tokens: a partial character or a possible stop
    /// string waits for later chunks).
    pub text: String,
    pub tokens: Vec<u32>,
    /// Tokens drafted in the step.
    pub drafted: usize,
    /// Drafted tokens the target accepted.
    pub accepted: usize,
    /// Leading characters of `text` released by accepted draft tokens.
    pub draft_chars: usize,
}

/// The `done` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneFrame {
    pub id: String,
    #[serde(flatten)]
    pub body: DoneBody,
}

/// A finished request's figures: the body of the `done` frame (the OpenAI endpoints add its
/// `speculation` and `timings` to their responses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneBody {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub speculation: SpeculationReport,
    pub timings: Timings,
}

/// OpenAI's usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    /// Usage of a request with these counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// How a request was drafted for, and how well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeculationReport {
    pub method: Method,
    /// Tokens drafted.
    pub drafted: u64,
    /// Drafted tokens the target accepted.
    pub accepted: u64,
    /// `accepted / drafted` (0 when nothing was drafted).
    pub acceptance_rate: f64,
    /// Tokens per verification, the target's own token included.
    pub mean_accepted_length: f64,
    pub verifications: u64,
    /// Share of the verifications that drafted position i whose draft there was accepted.
    pub acceptance_by_position: Vec<f64>,
    /// The drafts that came from prompt lookup (`glide+ngram`).
    pub lookup: LookupReport,
}

/// Drafts from prompt lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReport {
    /// Drafting steps that took the lookup's proposal.
    pub drafts: u64,
    pub drafted: u64,
    pub accepted: u64,
}

/// Where a request's time went, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queued_ms: f64,
    /// Null when no token was produced.
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
    /// Output tokens after the first, per second of decoding.
    pub tokens_per_second: f64,
    pub preemptions: u32,
}

/// The `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault (`max_tokens`, `speculation.method`), when there is one.
    pub param: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn client_frames_round_trip_and_refuse_unknown_fields() {
        let g = ClientFrame::Generate(Box::new(GenerateFrame {
            id: "r1".into(),
            messages: Some(vec![Message::new("user", "hi")]),
            max_tokens: Some(8),
            speculation: Some(SpeculationParams {
                method: Some(Method::GlideNgram),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(
            v,
            json!({"type": "generate", "id": "r1", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 8, "speculation": {"method": "glide+ngram"}})
        );
        assert_eq!(serde_json::from_value::<ClientFrame>(v).unwrap(), g);
        let c = ClientFrame::Cancel(CancelFrame { id: "r1".into() });
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v, json!({"type": "cancel", "id": "r1"}));
        assert_eq!(serde_json::from_value::<ClientFrame>(v).unwrap(), c);
        let e = serde_json::from_value::<ClientFrame>(
            json!({"type": "cancel", "id": "a", "colour": 1}),
        );
        assert!(e.unwrap_err().to_string().contains("colour"));
        let e = serde_json::from_value::<ClientFrame>(json!({"type": "dance", "id": "a"}));
        assert!(e.unwrap_err().to_string().contains("dance"));
    }

    #[test]
    fn server_frames_round_trip_and_accept_new_fields() {
        let frames = [
            ServerFrame::Hello(Hello {
                model: "m".into(),
                draft_model: None,
                glide_model: Some("g".into()),
                methods: vec![Method::None, Method::Glide],
                speculation: HelloSpeculation {
                    method: Method::Glide,
                    max_draft: 4,
                },
                limits: HelloLimits {
                    max_tokens: 1,
                    max_prompt_tokens: 2,
                    max_requests_per_connection: 3,
                    max_frame_bytes: 4,
                },
            }),
            ServerFrame::Chunk(ChunkFrame {
                id: "a".into(),
                text: "x".into(),
                tokens: vec![1, 2],
                drafted: 3,
                accepted: 1,
                draft_chars: 1,
            }),
            ServerFrame::Done(DoneFrame {
                id: "a".into(),
                body: DoneBody {
                    finish_reason: FinishReason::Stop,
                    usage: Usage::new(3, 4),
                    speculation: SpeculationReport {
                        method: Method::Draft,
                        drafted: 4,
                        accepted: 2,
                        acceptance_rate: 0.5,
                        mean_accepted_length: 2.0,
                        verifications: 2,
                        acceptance_by_position: vec![1.0, 0.5],
                        lookup: LookupReport {
                            drafts: 0,
                            drafted: 0,
                            accepted: 0,
                        },
                    },
                    timings: Timings {
                        queued_ms: 0.5,
                        ttft_ms: None,
                        total_ms: 9.0,
                        tokens_per_second: 100.0,
                        preemptions: 0,
                    },
                },
            }),
            ServerFrame::Error(ErrorFrame {
                id: None,
                code: ErrorCode::InvalidRequest,
                message: "m".into(),
                param: Some("max_tokens".into()),
            }),
        ];
        for f in frames {
            let mut v = serde_json::to_value(&f).unwrap();
            assert_eq!(serde_json::from_value::<ServerFrame>(v.clone()).unwrap(), f);
            v["added_later"] = json!(1);
            assert_eq!(
                serde_json::from_value::<ServerFrame>(v).unwrap(),
                f,
                "a new field breaks it"
            );
        }
        let done = json!({"type": "done", "id": "a", "finish_reason": "length",
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            "speculation": {"method": "none", "drafted": 0, "accepted": 0, "acceptance_rate": 0.0,
                "mean_accepted_length": 1.0, "verifications": 0, "acceptance_by_position": [],
                "lookup": {"drafts": 0, "drafted": 0, "accepted": 0}},
            "timings": {"queued_ms": 0.1, "ttft_ms": 2.0, "total_ms": 3.0, "tokens_per_second": 0.0,
                "preemptions": 0}});
        let ServerFrame::Done(d) = serde_json::from_value(done).unwrap() else {
            panic!("not done")
        };
        assert_eq!(d.body.finish_reason, FinishReason::Length);
        assert_eq!(d.body.timings.ttft_ms, Some(2.0));
    }
}
