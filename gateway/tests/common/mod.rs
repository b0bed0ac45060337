//! Shared by the gateway tests: a real server on port 0 over the tiny target/draft pair, and
//! WebSocket helpers (tokio-tungstenite).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use specd_engine::actors::{EngineConfig, EngineModels, Method};
use specd_engine::model::tiny::{
    tiny_drafter, tiny_guessing_glide, tiny_model_on, TinySpec, CHATML_TEMPLATE,
};
use specd_engine::model::Device;
use specd_engine::speculative::{DraftPolicyConfig, GlideProposer, NgramProposer};
use specd_gateway::{Backend, BackendOptions, Config, Server};
use specd_protocol::ServerFrame;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The served model's id.
pub const MODEL: &str = "tiny";

/// The tiny target (seed 11) with its noisy copy as drafter, behind a fresh engine.
pub fn backend(engine: EngineConfig) -> Backend {
    let spec = TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    };
    backend_of(&spec, engine)
}

/// A larger tiny model whose steps take milliseconds: for tests that must act while a
/// request is still generating.
pub fn slow_spec() -> TinySpec {
    TinySpec {
        hidden_size: 256,
        intermediate_size: 1024,
        num_layers: 6,
        num_heads: 8,
        num_kv_heads: 4,
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    }
}

/// Where the models of these tests run: `SPECD_DEVICE=cuda` runs them on a GPU
/// (scripts/gpu/check).
pub fn device() -> Device {
    std::env::var("SPECD_DEVICE")
        .map(|d| d.parse().expect("SPECD_DEVICE: cpu, cuda or cuda:N"))
        .unwrap_or_default()
}

/// The model of `spec` with its noisy copy as drafter, behind a fresh engine.
pub fn backend_of(spec: &TinySpec, engine: EngineConfig) -> Backend {
    backend_with(spec, engine, false).unwrap()
}

/// The tiny target (as [`backend`]) serving a GLIDE drafter besides its draft model (on the
/// target's device), or why the GLIDE drafter cannot be loaded.
pub fn glide_backend(engine: EngineConfig) -> Result<Backend, String> {
    let spec = TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    };
    backend_with(&spec, engine, true)
}

fn backend_with(
    spec: &TinySpec,
    engine: EngineConfig,
    with_glide: bool,
) -> Result<Backend, String> {
    let target = tiny_model_on(spec, device()).unwrap();
    let draft = tiny_drafter(spec, 0.15, 5, &target).unwrap();
    let glide = if with_glide {
        let g = tiny_guessing_glide(&target.model, 240, 9).map_err(|e| e.to_string())?;
        Some(Arc::new(GlideProposer::new(Arc::new(g))))
    } else {
        None
    };
    let options = BackendOptions {
        model_name: MODEL.into(),
        draft_name: Some("tiny-draft".into()),
        glide_name: glide.as_ref().map(|_| "tiny-glide".into()),
        chat_template: Some(CHATML_TEMPLATE.into()),
        default_method: Method::Draft,
        default_policy: DraftPolicyConfig::default(),
        engine,
    };
    let models = EngineModels {
        tokenizer: Arc::new(target.tokenizer.clone().unwrap()),
        target: Arc::new(target.model),
        draft: Some(Arc::new(draft)),
        ngram: NgramProposer::default(),
        glide,
    };
    Ok(Backend::start(models, options).unwrap())
}

/// A server on a free loopback port, ready, with `tweak` applied to the test defaults.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    start_with_engine(tweak, EngineConfig::default())
}

/// [`start`] with an engine configured as given.
pub fn start_with_engine(tweak: impl FnOnce(&mut Config), engine: EngineConfig) -> Server {
    start_with_backend(tweak, backend(engine))
}

/// [`start`] serving `backend`.
pub fn start_with_backend(tweak: impl FnOnce(&mut Config), backend: Backend) -> Server {
    let mut c = Config::default();
    c.server.port = 0;
    c.server.shutdown_timeout_secs = 5.0;
    tweak(&mut c);
    c.validate().unwrap();
    let server = Server::start(c).unwrap();
    server.set_backend(backend);
    server
}

/// An HTTP client whose requests may take as long as a loaded CI machine needs (awc's
/// default gives up after 5 s).
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(300))
        .finish()
}

/// Opens `/v1/stream` with an optional API key and Origin header.
pub async fn connect(
    server: &Server,
    key: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{}/v1/stream", server.local_addr());
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {k}")).unwrap(),
        );
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let hello = next_json(&mut ws).await;
    assert!(
        matches!(server_frame(&hello), ServerFrame::Hello(_)),
        "{hello}"
    );
    Ok(ws)
}

/// Opens `/v1/stream` without a key and returns the socket with its `hello` frame.
pub async fn connect_hello(server: &Server) -> (Ws, Value) {
    let url = format!("ws://{}/v1/stream", server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert!(
        matches!(server_frame(&hello), ServerFrame::Hello(_)),
        "{hello}"
    );
    (ws, hello)
}

/// The next JSON frame (pings are answered by the library while reading).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("no frame within 60 s")
            .expect("the socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// A frame read as the shared protocol's type (failing, with the frame, when it is not one).
pub fn server_frame(f: &Value) -> ServerFrame {
    serde_json::from_value(f.clone()).unwrap_or_else(|e| panic!("not a server frame ({e}): {f}"))
}

/// Sends a JSON frame.
pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// A generate frame: `extra` fields are merged in.
pub fn generate(id: &str, prompt: &str, extra: Value) -> Value {
    let mut f = json!({"type": "generate", "id": id, "prompt": prompt});
    if let (Some(f), Value::Object(e)) = (f.as_object_mut(), extra) {
        f.extend(e);
    }
    f
}

/// What one request streamed.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub text: String,
    pub tokens: Vec<u64>,
    pub chunks: usize,
    pub drafted: u64,
    pub accepted: u64,
    pub draft_chars: u64,
    /// The `done` frame, or the `error` frame that ended it.
    pub end: Value,
}

impl Outcome {
    /// Adds a frame of this request; returns whether it ended the request. The frame is read
    /// as the shared protocol's [`ServerFrame`], so a frame the types do not describe fails.
    pub fn add(&mut self, f: &Value) -> bool {
        match server_frame(f) {
            ServerFrame::Chunk(c) => {
                self.text.push_str(&c.text);
                self.tokens.extend(c.tokens.iter().map(|&t| u64::from(t)));
                self.chunks += 1;
                self.drafted += c.drafted as u64;
                self.accepted += c.accepted as u64;
                self.draft_chars += c.draft_chars as u64;
                false
            }
            ServerFrame::Done(_) | ServerFrame::Error(_) => {
                self.end = f.clone();
                true
            }
            ServerFrame::Hello(_) => panic!("a second hello frame: {f}"),
        }
    }

    pub fn finish_reason(&self) -> &str {
        self.end["finish_reason"].as_str().unwrap_or("<error>")
    }
}

/// Reads frames until request `id` ends (frames of other ids are an error here).
pub async fn run_to_end(ws: &mut Ws, id: &str) -> Outcome {
    let mut out = Outcome::default();
    loop {
        let f = next_json(ws).await;
        assert_eq!(f["id"], id, "{f}");
        if out.add(&f) {
            return out;
        }
    }
}

/// Sends one request on a fresh socket and reads it to the end.
pub async fn run_alone(server: &Server, key: Option<&str>, frame: Value) -> Outcome {
    let mut ws = connect(server, key, None).await.unwrap();
    let id = frame["id"].as_str().unwrap().to_string();
    send(&mut ws, frame).await;
    run_to_end(&mut ws, &id).await
}

/// A prompt whose greedy run (target only) ends with the end-of-text token before `max_tokens`,
/// with that run. Where the tiny random model stops depends on the arithmetic of the device its
/// tests run on (near ties break differently on a GPU), so tests that need a run that stops
/// find one instead of assuming it of a fixed prompt. Panics, naming the prompts tried, if none
/// stops.
pub async fn prompt_that_stops(server: &Server, max_tokens: usize) -> (String, Outcome) {
    const CANDIDATES: &[&str] = &[
        "hello world",
        "the",
        "def main():",
        "import os",
        "fn add(a: i32, b: i32) -> i32 {",
        "a b c d",
        "print('hi')",
        "return x",
        "// comment",
        "class Point:",
        "for i in range(10):",
        "let x = 1;",
    ];
    for prompt in CANDIDATES {
        let frame = generate(
            "stops",
            prompt,
            json!({"max_tokens": max_tokens, "speculation": {"method": "none"}}),
        );
        let run = run_alone(server, None, frame).await;
        if run.finish_reason() == "stop" {
            return (prompt.to_string(), run);
        }
    }
    panic!(
        "no greedy run of {CANDIDATES:?} ended with end-of-text within {max_tokens} tokens on {}",
        device()
    );
}

/// Waits until the engine has no sequence and no KV block in use.
pub async fn wait_engine_idle(server: &Server) -> specd_engine::actors::EngineStats {
    let backend = server.state().backend().unwrap();
    for _ in 0..500 {
        let s = backend.engine().stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 && s.kv_target.blocks_used == 0 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the engine still holds work after 5 s: {:?}",
        backend.engine().stats().await.unwrap()
    );
}
