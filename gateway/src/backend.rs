//! What the endpoints serve: the engine, the target's tokenizer and chat template, and the
//! checks that turn a client's request into an [`EngineRequest`] (every rejection names the
//! field and the limit).

use std::sync::Arc;

use specd_engine::actors::{
    Engine, EngineConfig, EngineHandle, EngineModels, EngineRequest, Method, RequestStream,
};
use specd_engine::chat::{ChatTemplate, Message};
use specd_engine::generate::GenerateRequest;
use specd_engine::model::Tokenizer;
use specd_engine::sampling::{SamplingParams, MAX_TEMPERATURE};
use specd_engine::speculative::DraftPolicyConfig;

use crate::config::Limits;
use crate::error::{ApiError, ErrorCode};

/// The longest draft a request may ask for (the verifier's batch-invariant row limit − 1).
pub const MAX_DRAFT: usize = specd_engine::model::SMALL_BATCH_ROWS - 1;

/// How a [`Backend`] is set up besides its models.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// The id clients use for the target (`/v1/models`).
    pub model_name: String,
    /// The draft model's name, if one is served.
    pub draft_name: Option<String>,
    /// The GLIDE drafter's name, if one is served.
    pub glide_name: Option<String>,
    /// The target's Jinja chat template (chat requests are refused without one).
    pub chat_template: Option<String>,
    /// Method of requests that do not choose one.
    pub default_method: Method,
    /// Draft length of requests that do not choose one.
    pub default_policy: DraftPolicyConfig,
    pub engine: EngineConfig,
}

/// The loaded models and their running engine.
#[derive(Debug)]
pub struct Backend {
    handle: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    options: BackendOptions,
    context: usize,
    vocab: usize,
    /// The methods requests may choose (`none`, `ngram`, and those whose drafter is loaded).
    methods: Vec<Method>,
    /// Dropped with the backend: stopping the engine ends every stream still open.
    _engine: Engine,
}

/// A prompt as a client gave it.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
    Tokens(Vec<u32>),
}

pub use specd_protocol::SpeculationParams;

/// Generation settings common to every endpoint; `None` takes the endpoint's default.
#[derive(Debug, Clone, Default)]
pub struct GenerationParams {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub speculation: Option<SpeculationParams>,
    /// Generation goes on past the end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Defaults that differ between endpoints.
#[derive(Debug, Clone, Copy)]
pub struct EndpointDefaults {
    /// `None`: as many as the limit allows.
    pub max_tokens: Option<usize>,
    pub temperature: f64,
}

impl Backend {
    /// Starts the engine over `models`.
    pub fn start(models: EngineModels, options: BackendOptions) -> Result<Self, ApiError> {
        let methods = models.methods();
        if !methods.contains(&options.default_method) {
            return Err(ApiError::internal(format!(
                "the default speculation method is `{}` but {} is not loaded",
                options.default_method,
                options
                    .default_method
                    .needs_model()
                    .unwrap_or("its drafter")
            )));
        }
        let template = match &options.chat_template {
            Some(src) => Some(
                ChatTemplate::new(
                    src,
                    models.tokenizer.bos_token(),
                    models.tokenizer.eos_token(),
                )
                .map_err(|e| ApiError::internal(e.to_string()))?,
            ),
            None => None,
        };
        let context = models.target.config().max_position_embeddings;
        let vocab = models.target.config().vocab_size;
        let tokenizer = models.tokenizer.clone();
        let engine = Engine::start(models, options.engine.clone())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Self {
            handle: engine.handle(),
            tokenizer,
            template,
            options,
            context,
            vocab,
            methods,
            _engine: engine,
        })
    }

    /// The engine's handle (stats, cancellation).
    pub fn engine(&self) -> &EngineHandle {
        &self.handle
    }

    /// The target's id for clients.
    pub fn model_name(&self) -> &str {
        &self.options.model_name
    }

    /// The draft model's name, if one is served.
    pub fn draft_name(&self) -> Option<&str> {
        self.options.draft_name.as_deref()
    }

    /// The GLIDE drafter's name, if one is served.
    pub fn glide_name(&self) -> Option<&str> {
        self.options.glide_name.as_deref()
    }

    /// The target's context length in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The methods requests may choose.
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// Method and draft length of requests that choose none.
    pub fn defaults(&self) -> (Method, &DraftPolicyConfig) {
        (self.options.default_method, &self.options.default_policy)
    }

    /// The most prompt tokens a request may bring.
    pub fn max_prompt_tokens(&self, limits: &Limits) -> usize {
        let ctx = self.context.saturating_sub(1);
        limits.max_prompt_tokens.map_or(ctx, |m| m.min(ctx))
    }

    /// Checks a request against the limits and builds it for the engine.
    pub fn prepare(
        &self,
        prompt: Prompt,
        params: &GenerationParams,
        defaults: EndpointDefaults,
        limits: &Limits,
    ) -> Result<EngineRequest, ApiError> {
        let max_tokens = match params.max_tokens {
            None => defaults
                .max_tokens
                .unwrap_or(limits.max_tokens)
                .min(limits.max_tokens),
            Some(v) if v >= 1 && v as u64 <= limits.max_tokens as u64 => v as usize,
            Some(v) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!(
                        "`max_tokens` must be between 1 and {} (limits.max_tokens), got {v}",
                        limits.max_tokens
                    ),
                ))
            }
        };
        let sampling = self.sampling(params, defaults)?;
        let stop = check_stop(&params.stop, limits)?;
        let (method, policy) = self.speculation(params.speculation.as_ref())?;
        let prompt = self.tokenize(prompt, limits)?;
        Ok(EngineRequest {
            generate: GenerateRequest {
                prompt,
                max_tokens,
                sampling,
                stop,
                ignore_eos: params.ignore_eos,
            },
            method,
            policy,
        })
    }

    /// Queues a prepared request.
    pub async fn submit(&self, req: EngineRequest) -> Result<RequestStream, ApiError> {
        self.handle
            .submit(req)
            .await
            .map_err(|e| ApiError::from(&e))
    }

    fn sampling(
        &self,
        p: &GenerationParams,
        defaults: EndpointDefaults,
    ) -> Result<SamplingParams, ApiError> {
        let temperature = p.temperature.unwrap_or(defaults.temperature);
        if !(0.0..=MAX_TEMPERATURE as f64).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("`temperature` must be between 0 and {MAX_TEMPERATURE}, got {temperature}"),
            ));
        }
        let top_p = p.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = p.top_k.unwrap_or(0);
        if !(0..=self.vocab as i64).contains(&top_k) {
            return Err(ApiError::invalid(
                "top_k",
                format!(
                    "`top_k` must be between 0 (off) and the vocabulary size {}, got {top_k}",
                    self.vocab
                ),
            ));
        }
        let penalty = p.repetition_penalty.unwrap_or(1.0);
        if !(penalty > 0.0 && penalty <= 10.0) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("`repetition_penalty` must be in (0, 10], got {penalty}"),
            ));
        }
        Ok(SamplingParams {
            temperature: temperature as f32,
            top_k: top_k as usize,
            top_p: top_p as f32,
            repetition_penalty: penalty as f32,
            seed: p.seed.unwrap_or(0),
        })
    }

    fn speculation(
        &self,
        s: Option<&SpeculationParams>,
    ) -> Result<(Method, DraftPolicyConfig), ApiError> {
        let (default_method, default_policy) = self.defaults();
        let mut policy = *default_policy;
        let Some(s) = s else {
            return Ok((default_method, policy));
        };
        let method = s.method.unwrap_or(default_method);
        if !self.methods.contains(&method) {
            let served: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
            return Err(ApiError::invalid(
                "speculation.method",
                format!(
                    "`speculation.method` `{method}` needs {} and this server has none (it \
                     serves {})",
                    method.needs_model().unwrap_or("a drafter"),
                    served.join(", ")
                ),
            ));
        }
        if let Some(k) = s.max_draft {
            if !(1..=MAX_DRAFT as i64).contains(&k) {
                return Err(ApiError::invalid(
                    "speculation.max_draft",
                    format!("`speculation.max_draft` must be between 1 and {MAX_DRAFT}, got {k}"),
                ));
            }
            policy.max_draft = k as usize;
        }
        if let Some(a) = s.adaptive {
            policy.adaptive = a;
        }
        if policy.max_draft == 0 && method != Method::None {
            policy.max_draft = DraftPolicyConfig::default().max_draft;
        }
        Ok((method, policy))
    }

    fn tokenize(&self, prompt: Prompt, limits: &Limits) -> Result<Vec<u32>, ApiError> {
        let internal = |e: specd_engine::Error| ApiError::internal(e.to_string());
        let tokens = match prompt {
            Prompt::Text(t) if t.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` is empty"))
            }
            Prompt::Text(t) => self.tokenizer.encode(&t, true).map_err(internal)?,
            Prompt::Messages(m) => {
                check_messages(&m)?;
                let template = self.template.as_ref().ok_or_else(|| {
                    ApiError::invalid(
                        "messages",
                        "the model ships no chat template: send a `prompt` instead",
                    )
                })?;
                let text = template
                    .render(&m, true)
                    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
                self.tokenizer.encode(&text, true).map_err(internal)?
            }
            Prompt::Tokens(t) => {
                if let Some(bad) = t.iter().find(|&&t| t as usize >= self.vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "token id {bad} is outside the vocabulary of {} tokens",
                            self.vocab
                        ),
                    ));
                }
                t
            }
        };
        if tokens.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt has no tokens"));
        }
        let max = self.max_prompt_tokens(limits);
        if tokens.len() > max {
            return Err(ApiError::new(
                ErrorCode::PromptTooLong,
                format!(
                    "the prompt has {} tokens; at most {max} are allowed (context {} tokens)",
                    tokens.len(),
                    self.context
                ),
            )
            .with_param("prompt"));
        }
        Ok(tokens)
    }
}

fn check_stop(stop: &[String], limits: &Limits) -> Result<Vec<String>, ApiError> {
    if stop.len() > limits.max_stop {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {} stop strings are allowed (limits.max_stop), got {}",
                limits.max_stop,
                stop.len()
            ),
        ));
    }
    for s in stop {
        if s.is_empty() || s.len() > limits.max_stop_bytes {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "each stop string must have 1 to {} bytes (limits.max_stop_bytes), got {}",
                    limits.max_stop_bytes,
                    s.len()
                ),
            ));
        }
    }
    Ok(stop.to_vec())
}

fn check_messages(messages: &[Message]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` must be system, user or assistant, got `{}`",
                    m.role
                ),
            ));
        }
    }
    Ok(())
}
