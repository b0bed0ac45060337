//! OpenAI-compatible endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (one JSON
//! body, or Server-Sent Events with `stream: true`) and `GET /v1/models`. specd's own extras
//! (`top_k`, `repetition_penalty`, `speculation`) are accepted in the body; fields OpenAI
//! defines but specd does not implement are accepted only at their neutral values.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};
use specd_engine::actors::{Done, Event, Method, RequestStream};
use specd_engine::generate::FinishReason;
use tokio::sync::watch;

mod request;

use request::read_json;
pub use request::{
    ChatMessage, ChatRequest, CompletionRequest, Content, ContentPart, OneOrMany, PromptField,
    StreamOptions,
};

use crate::auth;
use crate::backend::{Backend, EndpointDefaults, GenerationParams, Prompt};
use crate::error::{ApiError, ErrorCode};
use crate::lifecycle::{InflightGuard, Phase};
use crate::protocol::{done_body, from_value, usage_of};
use crate::server::AppState;

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
            "usage": usage_of(done),
            "speculation": extra.speculation, "timings": extra.timings,
        })
    }

    fn usage_chunk(&self, done: &Done) -> Value {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.backend.model_name(), "choices": [], "usage": usage_of(done),
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
        ignore_eos: body.ignore_eos.unwrap_or(false),
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
        ignore_eos: body.ignore_eos.unwrap_or(false),
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
        "glide_model": backend.glide_name(),
    }]);
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}
