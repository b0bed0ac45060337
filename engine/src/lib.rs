//! specd-engine: models, KV cache, sampling and generation for specd, the speculative-decoding
//! inference server.
//!
//! - [`model`]: our own Llama-family forward over a ragged batch of sequences, loading Hugging
//!   Face safetensors folders and GGUF files (quantized weights stay quantized), tokenizers
//!   (tokenizer.json or built from GGUF metadata).
//! - [`kv`]: the paged KV cache: block pools, block tables, reserve/truncate/free.
//! - [`sampling`]: logits → token, with a seeded RNG per request.
//! - [`chat`]: chat prompts through the model's own Jinja template.
//! - [`speculative`]: speculative decoding: proposers (n-gram, draft model), one-pass verification,
//!   greedy and stochastic acceptance, rollback, draft-length policies, statistics.
//! - [`actors`]: the engine: Scheduler, KvCacheManager, Drafter, Verifier and Acceptor
//!   actors on one thread, continuous batching, preemption, and the [`actors::EngineHandle`].
//! - [`metrics`]: every metric name, help text and bucket set.
//! - [`generate`]: requests, stop strings, and target-only generation (the speculative step
//!   with no drafts).

pub mod actors;
pub mod chat;
pub mod error;
pub mod generate;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod speculative;

pub use error::{Error, Result};
