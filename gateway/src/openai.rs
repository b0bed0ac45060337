//! OpenAI-compatible endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (one JSON
//! body, or Server-Sent Events with `stream: true`) and `GET /v1/models`. specd's own extras
//! (`top_k`, `repetition_penalty`, `speculation`) are accepted in the body; fields OpenAI
//! defines but specd does not implement are accepted only at their neutral values.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use specd_engine::actors::{Done, Event, Method, RequestStream};
use specd_engine::chat::Message;
use specd_engine::generate::FinishReason;
use tokio::sync::watch;

use crate::auth;
use crate::backend::{Backend, EndpointDefaults, GenerationParams, Prompt, SpeculationParams};
use crate::error::{ApiError, ErrorCode};
use crate::lifecycle::{InflightGuard, Phase};
use crate::protocol::{done_body, from_value, usage_body};
use crate::server::AppState;

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
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
    fn into_prompt(self) -> Result<Prompt, ApiError> {
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
    fn check(&self) -> Result<(), ApiError> {
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
    fn check(&self) -> Result<(), ApiError> {
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

    fn messages(&self) -> Result<Vec<Message>, ApiError> {
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
async fn read_json(
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

fn check_model(backend: &Backend, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != backend.model_name() => Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "model `{m}` is not served here; this server serves `{}` (see /v1/models)",
                backend.model_name()
            ),
        )
        .with_param("model")),
        _ => Ok(()),
    }
}

/// What a response needs besides the engine's events.
struct Call {
    backend: Arc<Backend>,
    chat: bool,
    id: String,
    created: u64,
    method: Method,
    include_usage: bool,
}

impl Call {
    fn object(&self, streaming: bool) -> &'static str {
        match (self.chat, streaming) {
            (false, _) => "text_completion",
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
        }
    }

    /// One choice of a stream chunk: `text` (completions) or `delta` (chat).
    fn stream_chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.backend.model_name(), "choices": [choice],
        })
    }

    fn full(&self, text: String, done: &Done) -> Value {
        let finish = finish_reason(done.finish_reason);
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        };
        let extra = done_body(done, self.method);
        json!({
            "id": self.id, "object": self.object(false), "created": self.created,
            "model": self.backend.model_name(), "choices": [choice],
            "usage": usage_body(done),
            "speculation": extra["speculation"], "timings": extra["timings"],
        })
    }

    fn usage_chunk(&self, done: &Done) -> Value {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.backend.model_name(), "choices": [], "usage": usage_body(done),
        })
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        // Cancelled requests only end this way on shutdown; they are reported as errors.
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn shutdown_error() -> ApiError {
    ApiError::new(
        ErrorCode::Overloaded,
        "the server shut down before the completion finished",
    )
}

/// `POST /v1/completions`.
pub async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let backend = state.guard_http(&req)?;
    let body: CompletionRequest =
        from_value(read_json(&req, payload, state.config.limits.max_body_bytes).await?)?;
    body.check()?;
    check_model(&backend, &body.model)?;
    let params = GenerationParams {
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        repetition_penalty: body.repetition_penalty,
        seed: body.seed,
        stop: body
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
        speculation: body.speculation.clone(),
    };
    // OpenAI's defaults: 16 tokens, temperature 1.
    let defaults = EndpointDefaults {
        max_tokens: Some(16),
        temperature: 1.0,
    };
    let include_usage = body.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
    let prompt = body.prompt.into_prompt()?;
    respond(
        state,
        backend,
        prompt,
        params,
        defaults,
        body.stream,
        include_usage,
        false,
    )
    .await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let backend = state.guard_http(&req)?;
    let body: ChatRequest =
        from_value(read_json(&req, payload, state.config.limits.max_body_bytes).await?)?;
    body.check()?;
    check_model(&backend, &body.model)?;
    let params = GenerationParams {
        max_tokens: body.max_tokens.or(body.max_completion_tokens),
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        repetition_penalty: body.repetition_penalty,
        seed: body.seed,
        stop: body
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
        speculation: body.speculation.clone(),
    };
    let defaults = EndpointDefaults {
        max_tokens: None,
        temperature: 1.0,
    };
    let include_usage = body.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
    let prompt = Prompt::Messages(body.messages()?);
    respond(
        state,
        backend,
        prompt,
        params,
        defaults,
        body.stream,
        include_usage,
        true,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    state: web::Data<AppState>,
    backend: Arc<Backend>,
    prompt: Prompt,
    params: GenerationParams,
    defaults: EndpointDefaults,
    stream: Option<bool>,
    include_usage: bool,
    chat: bool,
) -> Result<HttpResponse, ApiError> {
    let req = backend.prepare(prompt, &params, defaults, &state.config.limits)?;
    let method = req.method;
    let guard = state.lifecycle.try_enter().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Overloaded,
            "the server is shutting down and takes no new requests",
        )
    })?;
    let events = backend.submit(req).await?;
    let call = Call {
        backend,
        chat,
        id: format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, events.id()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        method,
        include_usage,
    };
    let run = Running {
        events,
        phase: state.lifecycle.watch(),
        cancelled: false,
        call,
        _guard: guard,
    };
    if stream == Some(true) {
        Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(run.into_sse()))
    } else {
        let (call, text, done) = run.collect().await?;
        Ok(HttpResponse::Ok().json(call.full(text, &done)))
    }
}

/// A request in flight on an HTTP response. Dropping it (the client went away) drops the
/// engine stream, which cancels the request.
struct Running {
    events: RequestStream,
    phase: watch::Receiver<Phase>,
    cancelled: bool,
    call: Call,
    _guard: InflightGuard,
}

impl Running {
    /// The next engine event, cancelling the request when the shutdown grace period ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if !self.cancelled && *self.phase.borrow_and_update() == Phase::Cancelling {
                self.cancelled = true;
                self.call.backend.engine().cancel(self.events.id());
            }
            tokio::select! {
                ev = self.events.next_event() => return ev,
                changed = self.phase.changed(), if !self.cancelled => {
                    if changed.is_err() {
                        self.cancelled = true;
                        self.call.backend.engine().cancel(self.events.id());
                    }
                }
            }
        }
    }

    async fn collect(mut self) -> Result<(Call, String, Box<Done>), ApiError> {
        let mut text = String::new();
        loop {
            match self.next().await {
                Some(Event::Chunk(c)) => text.push_str(&c.text),
                Some(Event::Done(d)) if d.finish_reason == FinishReason::Cancelled => {
                    return Err(shutdown_error())
                }
                Some(Event::Done(d)) => return Ok((self.call, text, d)),
                Some(Event::Error(e)) => return Err(e.into()),
                None => return Err(ApiError::internal("the engine stopped")),
            }
        }
    }

    fn into_sse(self) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
        let first = self
            .call
            .chat
            .then(|| sse(&self.call.stream_chunk(Some(""), true, None)));
        let start = (Some(self), first.into_iter().collect::<Vec<_>>());
        futures_util::stream::unfold(start, |(mut run, mut queue)| async move {
            loop {
                if !queue.is_empty() {
                    let b = queue.remove(0);
                    return Some((Ok(b), (run, queue)));
                }
                let r = run.as_mut()?;
                match r.next().await {
                    Some(Event::Chunk(c)) if c.text.is_empty() => {}
                    Some(Event::Chunk(c)) => {
                        queue.push(sse(&r.call.stream_chunk(Some(&c.text), false, None)))
                    }
                    Some(Event::Done(d)) if d.finish_reason == FinishReason::Cancelled => {
                        queue.push(sse(&shutdown_error().openai_body()));
                        queue.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        run = None;
                    }
                    Some(Event::Done(d)) => {
                        let fr = finish_reason(d.finish_reason);
                        let text = (!r.call.chat).then_some("");
                        queue.push(sse(&r.call.stream_chunk(text, false, Some(fr))));
                        if r.call.include_usage {
                            queue.push(sse(&r.call.usage_chunk(&d)));
                        }
                        queue.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        run = None;
                    }
                    Some(Event::Error(e)) => {
                        queue.push(sse(&ApiError::from(e).openai_body()));
                        queue.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        run = None;
                    }
                    None => {
                        queue.push(sse(&ApiError::internal("the engine stopped").openai_body()));
                        queue.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        run = None;
                    }
                }
            }
        })
    }
}

/// `GET /v1/models`.
pub async fn models(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    auth::authorize(&req, &state.config.server, &[])?;
    let backend = state.backend()?;
    let data = json!([{
        "id": backend.model_name(), "object": "model", "created": 0, "owned_by": "specd",
        "context_length": backend.context(), "draft_model": backend.draft_name(),
    }]);
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}
