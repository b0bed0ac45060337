//! `specd serve`'s configuration: one typed struct, filled from defaults, then a TOML file,
//! then `SPECD_<SECTION>__<KEY>` environment variables, then command-line flags (the binary
//! applies those last).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use specd_engine::actors::Method;
use specd_engine::kv::KvDtype;
use specd_engine::model::{Device, WeightStorage};

/// Everything `specd serve` can be told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub limits: Limits,
    pub engine: EngineSection,
}

/// Where and how the server listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; loopback unless told otherwise.
    pub host: String,
    /// Port to bind (0 picks a free one).
    pub port: u16,
    /// When set, every `/v1/*` and `/metrics` request must carry `Authorization: Bearer KEY`
    /// (browsers may send it as the WebSocket subprotocol `bearer.KEY`).
    pub api_key: Option<String>,
    /// Browser origins allowed to open WebSockets and POST, e.g. `https://app.example.com`;
    /// the page's own origin is always allowed, `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Host names the server answers to besides IP addresses and `localhost` (e.g. the name a
    /// reverse proxy forwards); `*` allows any. Guards against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Seconds between WebSocket pings.
    pub heartbeat_secs: f64,
    /// A WebSocket that sends nothing (not even a pong) for this long is closed.
    pub client_timeout_secs: f64,
    /// A WebSocket with no request in flight and no message for this long is closed.
    pub idle_timeout_secs: f64,
    /// On shutdown, streams in flight get this long to finish before they are cancelled.
    pub shutdown_timeout_secs: f64,
    /// HTTP worker threads (model work runs on the engine's own thread).
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            heartbeat_secs: 5.0,
            client_timeout_secs: 30.0,
            idle_timeout_secs: 300.0,
            shutdown_timeout_secs: 10.0,
            workers: 2,
        }
    }
}

/// Which models to serve and how to speculate by default (requests may choose otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Target: a GGUF file or Hugging Face folder (default: the fetched Qwen2.5-Coder-1.5B).
    pub model: Option<PathBuf>,
    /// A tokenizer.json overriding the target's own.
    pub tokenizer: Option<PathBuf>,
    /// Where the models run: "cpu", "cuda" or "cuda:N".
    pub device: Device,
    /// Element type of the target's and draft model's KV caches: "f32" or "bf16" (half the
    /// memory); unset: f32 on the CPU, bf16 on a GPU.
    pub kv_dtype: Option<KvDtype>,
    /// How a quantized file's matrices are held: "stored" (quantized) or "dense"
    /// (dequantized at load: bf16 on a GPU, f32 on the CPU; the draft model follows).
    pub weights: WeightStorage,
    /// Draft model (default with the default target: the fetched Qwen2.5-Coder-0.5B).
    pub draft: Option<PathBuf>,
    /// GLIDE drafter: a safetensors file made for the target (default with the default
    /// target: the trained one, where it is found).
    pub glide: Option<PathBuf>,
    /// Default method [draft when a draft model is served, else glide when a GLIDE drafter is
    /// given, else none].
    pub speculation: Option<Method>,
    /// Default and largest draft length a request may ask for.
    pub max_draft: u16,
    /// Adapt draft length to acceptance by default.
    pub adaptive: bool,
    /// The drafter stops when its top probability falls below this (the draft model and GLIDE);
    /// unset, `specd serve` derives it from its calibration (0.5 where verification rows are
    /// costly, else none).
    pub confidence: Option<f32>,
    /// Keep only the draft head's first N rows (0: all).
    pub draft_head: usize,
    /// Longest suffix the n-gram proposer matches.
    pub ngram: u16,
    /// The model id clients see in `/v1/models` (default: the target's file or folder name).
    pub name: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            model: None,
            tokenizer: None,
            device: Device::Cpu,
            kv_dtype: None,
            weights: WeightStorage::Stored,
            draft: None,
            glide: None,
            speculation: None,
            max_draft: 4,
            adaptive: false,
            confidence: None,
            draft_head: 0,
            ngram: 3,
            name: None,
        }
    }
}

/// What one client may ask of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message (after joining continuation frames).
    pub max_frame_bytes: usize,
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Most prompt tokens [default: the target's context length − 1].
    pub max_prompt_tokens: Option<usize>,
    /// Most tokens one request may generate.
    pub max_tokens: usize,
    /// Requests in flight on one WebSocket.
    pub max_requests_per_connection: usize,
    /// Open WebSockets, all clients together.
    pub max_connections: usize,
    /// Stop strings per request.
    pub max_stop: usize,
    /// Bytes per stop string.
    pub max_stop_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 256 * 1024,
            max_body_bytes: 1024 * 1024,
            max_prompt_tokens: None,
            max_tokens: 4096,
            max_requests_per_connection: 8,
            max_connections: 256,
            max_stop: 4,
            max_stop_bytes: 256,
        }
    }
}

/// Engine sizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Memory for all KV caches (target, draft model, GLIDE), MiB [default: 4096 blocks each].
    pub kv_memory_mib: Option<usize>,
    /// Most sequences in one batch.
    pub max_running: usize,
    /// Most requests waiting for admission before `overloaded`.
    pub max_waiting: usize,
    /// Most tokens (verification rows + prompt chunks) one step may process.
    pub max_batch_tokens: usize,
    /// Most prompt tokens one step prefills while other sequences decode; unset: sized from
    /// measured costs so that a prompt chunk adds at most 0.6 of a decode step.
    pub prefill_chunk: Option<usize>,
    /// Whether the load policy shortens, then stops, drafting as more sequences run, and
    /// drafts with the draft model only when a request has enough tokens left to pay for
    /// reading its prompt (measured at start) (true); false drafts at any load and length
    /// (`serve --no-load-policy`).
    pub load_policy: bool,
    /// Whether a new sequence takes the target's cached keys and values of the longest prefix
    /// of its prompt that an earlier one computed (whole 16-token blocks), instead of
    /// prefilling it again (true).
    pub prefix_cache: bool,
    /// Whether `serve` times the served models at start and derives from their costs each
    /// method's load thresholds and when reading a prompt pays the draft model (true); false
    /// keeps the fixed thresholds and the uncalibrated rule (the prompt is always read).
    pub calibrate: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        let e = specd_engine::actors::EngineConfig::default();
        Self {
            kv_memory_mib: None,
            max_running: e.max_running,
            max_waiting: e.max_waiting,
            max_batch_tokens: e.max_batch_tokens,
            prefill_chunk: e.prefill_chunk,
            prefix_cache: e.prefix_cache,
            load_policy: true,
            calibrate: true,
        }
    }
}

/// Environment variables read by [`Config::load`]: `SPECD_SERVER__PORT=9000`,
/// `SPECD_LIMITS__MAX_TOKENS=512`, … (one underscore pair between section and key).
pub const ENV_PREFIX: &str = "SPECD_";

impl Config {
    /// Defaults, then the TOML file if given, then `SPECD_<SECTION>__<KEY>` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    f.display()
                ))));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only sectioned variables: SPECD_HOME and SPECD_THREADS mean other things.
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let config: Config = fig.merge(env).extract().map_err(Box::new)?;
        config
            .validate()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(config)
    }

    /// Rejects settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        for (key, v) in [
            ("server.heartbeat_secs", s.heartbeat_secs),
            ("server.client_timeout_secs", s.client_timeout_secs),
            ("server.idle_timeout_secs", s.idle_timeout_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e6) {
                return Err(format!(
                    "{key} must be a positive number of seconds, got {v}"
                ));
            }
        }
        if !(0.0..1e6).contains(&s.shutdown_timeout_secs) {
            return Err(format!(
                "server.shutdown_timeout_secs must be in [0, 1e6), got {}",
                s.shutdown_timeout_secs
            ));
        }
        if s.client_timeout_secs <= s.heartbeat_secs {
            return Err(format!(
                "server.client_timeout_secs ({}) must exceed server.heartbeat_secs ({})",
                s.client_timeout_secs, s.heartbeat_secs
            ));
        }
        if s.workers == 0 {
            return Err("server.workers must be at least 1".into());
        }
        if s.api_key.as_deref() == Some("") {
            return Err("server.api_key must not be empty (leave it out to disable keys)".into());
        }
        let l = &self.limits;
        let min = |key: &str, v: usize, lo: usize| {
            if v < lo {
                Err(format!("limits.{key} must be at least {lo}, got {v}"))
            } else {
                Ok(())
            }
        };
        min("max_frame_bytes", l.max_frame_bytes, 1024)?;
        min("max_body_bytes", l.max_body_bytes, 1024)?;
        min("max_tokens", l.max_tokens, 1)?;
        min(
            "max_requests_per_connection",
            l.max_requests_per_connection,
            1,
        )?;
        min("max_connections", l.max_connections, 1)?;
        min("max_stop_bytes", l.max_stop_bytes, 1)?;
        if let Some(p) = l.max_prompt_tokens {
            min("max_prompt_tokens", p, 1)?;
        }
        if !(1..=15).contains(&self.model.max_draft) {
            return Err(format!(
                "model.max_draft must be in 1..=15, got {}",
                self.model.max_draft
            ));
        }
        if self.model.ngram == 0 {
            return Err("model.ngram must be at least 1".into());
        }
        let e = &self.engine;
        min("engine.max_running", e.max_running, 1)?;
        min("engine.max_batch_tokens", e.max_batch_tokens, 16)?;
        if let Some(n) = e.prefill_chunk {
            min("engine.prefill_chunk", n, 1)?;
        }
        Ok(())
    }

    /// The address to bind.
    pub fn bind_addr(&self) -> std::io::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        (self.server.host.as_str(), self.server.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                std::io::Error::other(format!("cannot resolve host {}", self.server.host))
            })
    }

    pub(crate) fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v)
    }
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "specd.toml",
                "[server]\nport = 9001\napi_key = \"k\"\n[limits]\nmax_tokens = 64\n",
            )?;
            jail.set_env("SPECD_LIMITS__MAX_TOKENS", "32");
            jail.set_env("SPECD_HOME", "/elsewhere"); // not a config key: ignored
            jail.set_env("SPECD_MODEL__DEVICE", "cuda:1");
            let c = Config::load(Some(Path::new("specd.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.model.device, Device::Cuda(1));
            assert_eq!(c.server.port, 9001);
            assert_eq!(c.server.api_key.as_deref(), Some("k"));
            assert_eq!(c.limits.max_tokens, 32);
            assert_eq!(c.server.host, "127.0.0.1");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[server]\nprot = 1\n")?;
            let e = Config::load(Some(Path::new("a.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("prot"), "{e}");
            jail.create_file("b.toml", "[limits]\nmax_connections = 0\n")?;
            let e = Config::load(Some(Path::new("b.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("limits.max_connections"), "{e}");
            jail.create_file("c.toml", "[model]\ndevice = \"metal\"\n")?;
            let e = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("device") && e.contains("metal"), "{e}");
            jail.create_file("d.toml", "[model]\nspeculation = \"warp\"\n")?;
            let e = Config::load(Some(Path::new("d.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("speculation") && e.contains("warp"), "{e}");
            jail.create_file("e.toml", "[model]\nspeculation = \"ngram\"\n")?;
            let c = Config::load(Some(Path::new("e.toml"))).unwrap();
            assert_eq!(c.model.speculation, Some(Method::Ngram));
            jail.create_file(
                "f.toml",
                "[model]\nspeculation = \"glide\"\nglide = \"g.safetensors\"\n",
            )?;
            let c = Config::load(Some(Path::new("f.toml"))).unwrap();
            assert_eq!(c.model.speculation, Some(Method::Glide));
            assert_eq!(c.model.glide.as_deref(), Some(Path::new("g.safetensors")));
            let e = Config::load(Some(Path::new("missing.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("missing.toml"), "{e}");
            Ok(())
        });
    }
}
