//! The bodies of the OpenAI endpoints and their checks: unknown fields are refused by name,
//! fields OpenAI defines but specd does not implement pass only at their neutral values.

use actix_web::web;
use actix_web::HttpRequest;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use specd_engine::chat::Message;

use crate::backend::{Prompt, SpeculationParams};
use crate::error::{ApiError, ErrorCode};

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `prompt` of a completion: text, one text in a list, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The body of `POST /v1/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptField,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub n: Option<i64>,
    pub best_of: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<u64>,
    pub echo: Option<bool>,
    pub logprobs: Option<Value>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    pub suffix: Option<Value>,
    pub user: Option<String>,
    pub speculation: Option<SpeculationParams>,
    /// Go on past the end-of-sequence token (vLLM's extension of the same name).
    pub ignore_eos: Option<bool>,
}

/// Message content: text, or a list of text parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
    pub name: Option<String>,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    pub user: Option<String>,
    pub speculation: Option<SpeculationParams>,
    /// Go on past the end-of-sequence token (vLLM's extension of the same name).
    pub ignore_eos: Option<bool>,
}

/// Refuses OpenAI features specd does not implement unless they hold their neutral value.
fn neutral(param: &str, ok: bool, what: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            param,
            format!("`{param}` is not supported by specd: {what}"),
        ))
    }
}

fn one_choice(n: Option<i64>) -> Result<(), ApiError> {
    neutral("n", n.is_none_or(|n| n == 1), "only one choice (`n`: 1)")
}

fn no_penalties(presence: Option<f64>, frequency: Option<f64>) -> Result<(), ApiError> {
    neutral(
        "presence_penalty",
        presence.is_none_or(|p| p == 0.0),
        "use `repetition_penalty`",
    )?;
    neutral(
        "frequency_penalty",
        frequency.is_none_or(|p| p == 0.0),
        "use `repetition_penalty`",
    )
}

fn empty_bias(bias: &Option<Value>) -> Result<(), ApiError> {
    let ok = match bias {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(_) => false,
    };
    neutral("logit_bias", ok, "leave it empty")
}

impl PromptField {
    /// The one prompt of a request.
    pub(super) fn into_prompt(self) -> Result<Prompt, ApiError> {
        let many = || ApiError::invalid("prompt", "only one prompt per request is supported");
        Ok(match self {
            PromptField::Text(t) => Prompt::Text(t),
            PromptField::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
            PromptField::Tokens(t) => Prompt::Tokens(t),
            PromptField::TokenLists(mut v) if v.len() == 1 => Prompt::Tokens(v.remove(0)),
            PromptField::Texts(v) if v.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` is empty"))
            }
            _ => return Err(many()),
        })
    }
}

impl CompletionRequest {
    pub(super) fn check(&self) -> Result<(), ApiError> {
        one_choice(self.n)?;
        neutral(
            "best_of",
            self.best_of.is_none_or(|b| b == 1),
            "only `best_of`: 1",
        )?;
        neutral("echo", self.echo != Some(true), "`echo` must be false")?;
        let no_logprobs = matches!(
            self.logprobs,
            None | Some(Value::Null) | Some(Value::Bool(false))
        );
        neutral(
            "logprobs",
            no_logprobs,
            "log probabilities are not returned",
        )?;
        neutral(
            "suffix",
            matches!(self.suffix, None | Some(Value::Null)),
            "no insertion mode",
        )?;
        no_penalties(self.presence_penalty, self.frequency_penalty)?;
        empty_bias(&self.logit_bias)
    }
}

impl ChatRequest {
    pub(super) fn check(&self) -> Result<(), ApiError> {
        one_choice(self.n)?;
        neutral(
            "logprobs",
            self.logprobs != Some(true) && self.top_logprobs.is_none_or(|t| t == 0),
            "log probabilities are not returned",
        )?;
        no_penalties(self.presence_penalty, self.frequency_penalty)?;
        empty_bias(&self.logit_bias)?;
        if let (Some(a), Some(b)) = (self.max_tokens, self.max_completion_tokens) {
            if a != b {
                return Err(ApiError::invalid(
                    "max_completion_tokens",
                    "`max_tokens` and `max_completion_tokens` disagree; send one",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn messages(&self) -> Result<Vec<Message>, ApiError> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    Content::Text(t) => t.clone(),
                    Content::Parts(parts) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                _ => {
                                    return Err(ApiError::invalid(
                                        &format!("messages[{i}].content[{j}]"),
                                        "only text parts (`{\"type\":\"text\",\"text\":...}`) are supported",
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                Ok(Message::new(&m.role, &content))
            })
            .collect()
    }
}

/// Reads a JSON body of at most `limit` bytes. The body must be declared JSON: a browser
/// cannot send that cross-site without asking first (CORS), which specd never allows.
pub(super) async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Value, ApiError> {
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return Err(ApiError::invalid(
            "content-type",
            "the body must be JSON sent with `Content-Type: application/json`",
        ));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid("body", format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::invalid(
                "body",
                format!("the body exceeds {limit} bytes (limits.max_body_bytes)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("the body is not JSON: {e}")))
}
