//! A `specd serve` process for the end-to-end tests, on the tiny model pair written to a
//! temporary folder, or on real models named by `SPECD_E2E_MODEL` / `SPECD_E2E_DRAFT`
//! (README: "Testing against the real pair").
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use specd_engine::model::tiny::{
    tiny_config, tiny_draft_weights, tiny_weights, write_folder, TinySpec,
};
use specd_protocol::ServerFrame;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Tokens `Models::long_request` asks for on the tiny models.
pub const LONG_TOKENS: usize = 4000;

/// The models the tests serve.
pub struct Models {
    pub target: PathBuf,
    pub draft: PathBuf,
    /// Whether these are the tiny models (prompts and lengths are chosen for them).
    pub tiny: bool,
    _dir: Option<tempfile::TempDir>,
}

impl Models {
    /// `SPECD_E2E_MODEL` and `SPECD_E2E_DRAFT` if set, else the tiny pair.
    pub fn get() -> Self {
        if let Ok(target) = std::env::var("SPECD_E2E_MODEL") {
            let draft = std::env::var("SPECD_E2E_DRAFT")
                .expect("SPECD_E2E_MODEL is set: set SPECD_E2E_DRAFT to its draft model too");
            return Self {
                target: target.into(),
                draft: draft.into(),
                tiny: false,
                _dir: None,
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let spec = TinySpec {
            seed: 11,
            weight_scale: 0.35,
            // Room for `long_request`.
            max_position_embeddings: 8192,
            ..Default::default()
        };
        let target = dir.path().join("tiny");
        let draft = dir.path().join("tiny-draft");
        let weights = tiny_weights(&tiny_config(&spec), spec.seed, spec.weight_scale);
        write_folder(&target, &spec, &weights).unwrap();
        write_folder(&draft, &spec, &tiny_draft_weights(&spec, 0.15, 5).unwrap()).unwrap();
        Self {
            target,
            draft,
            tiny: true,
            _dir: Some(dir),
        }
    }

    /// A prompt the target continues for a while when greedy.
    pub fn prompt(&self) -> &'static str {
        if self.tiny {
            "hello world"
        } else {
            "def fibonacci(n):\n"
        }
    }

    /// A generate frame that runs long (cancelled or cut by the tests).
    pub fn long_request(&self, id: &str) -> Value {
        if self.tiny {
            // The tiny target writes 10,000 or more tokens a second and, sampled, ends within
            // about 2,000: 4,000 past its ends (`ignore_eos`), so that a test's cancel lands
            // before the last (with 400, all could be written first, and the request end with
            // `length`).
            json!({"type": "generate", "id": id, "prompt": "the", "max_tokens": LONG_TOKENS,
                   "temperature": 1.0, "seed": 0, "ignore_eos": true,
                   "speculation": {"method": "none"}})
        } else {
            json!({"type": "generate", "id": id, "max_tokens": 400, "temperature": 0,
                   "messages": [{"role": "user", "content": "Write a long, detailed tutorial on Rust lifetimes with many examples."}]})
        }
    }
}

/// An HTTP client whose requests may take as long as a loaded CI machine needs (awc's
/// default gives up after 5 s).
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(300))
        .finish()
}

/// The `specd` binary under test: the one cargo built, or `SPECD_BIN` (scripts/gpu/check runs
/// these tests on a GPU machine, against a carried binary, with `SPECD_DEVICE=cuda`).
pub fn specd_bin() -> std::path::PathBuf {
    std::env::var_os("SPECD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_specd").into())
}

/// Runs the `specd` binary with `args`, `SPECD_HOME` pointing at `home`.
pub fn specd(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(specd_bin())
        .args(args)
        .env("SPECD_HOME", home)
        .output()
        .unwrap()
}

/// A running `specd serve`; killed when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    pub lines: mpsc::Receiver<String>,
    _home: tempfile::TempDir,
}

impl Serve {
    /// Starts `specd serve` over `models` on a free port with `extra` flags and waits until
    /// it is ready.
    pub fn start(models: &Models, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let target = models.target.display().to_string();
        let draft = models.draft.display().to_string();
        let mut args = vec!["--model", &target, "--draft", &draft];
        args.extend(extra);
        Self::start_in(tempfile::tempdir().unwrap(), &args, env)
    }

    /// Starts `specd serve` with `args` (and no models but what they name: the default ones
    /// of the models folder in `home`, its `SPECD_HOME`) on a free port and waits until it is
    /// ready.
    pub fn start_in(home: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.splice(0..0, ["serve".to_string(), "--port".into(), "0".into()]);
        let mut child = Command::new(specd_bin())
            .args(&args)
            .env("SPECD_HOME", home.path())
            // The tiny pair's draft model is as large as its target, so the start-up
            // calibration would find that drafting never pays and switch it off; the tests
            // drive drafting, so they serve without it (a test may set it back).
            .env("SPECD_ENGINE__CALIBRATE", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[specd serve] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addr = None;
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(300))
                .expect("specd serve printed nothing for 300 s or exited");
            if let Some(a) = line.strip_prefix("specd listening on http://") {
                addr = Some(a.trim().to_string());
            }
            if line.starts_with("ready:") {
                break;
            }
        }
        Self {
            child,
            addr: addr.expect("no `specd listening on` line"),
            lines,
            _home: home,
        }
    }

    /// Opens `/v1/stream` and reads the hello frame.
    pub async fn connect(&self) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", self.addr))
            .await
            .unwrap();
        let hello = next_json(&mut ws).await;
        assert!(
            matches!(server_frame(&hello), ServerFrame::Hello(_)),
            "{hello}"
        );
        (ws, hello)
    }

    /// `GET path` as text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut resp = http_client()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        let body = resp.body().limit(1 << 22).await.unwrap();
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// The value of a Prometheus sample whose line starts with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Sends SIGTERM (what `kill` and service managers send).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit; returns its status and the lines it printed since
    /// it became ready.
    pub fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        (status, lines)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next JSON text frame.
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(300), ws.next())
            .await
            .expect("no frame within 300 s")
            .expect("the socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// A frame read as the shared protocol's type (failing, with the frame, when it is not one).
pub fn server_frame(f: &Value) -> ServerFrame {
    serde_json::from_value(f.clone()).unwrap_or_else(|e| panic!("not a server frame ({e}): {f}"))
}

/// Waits for the first chunk of request `id` (an error frame for it fails the test).
pub async fn first_chunk(ws: &mut Ws, id: &str) {
    loop {
        let f = next_json(ws).await;
        match server_frame(&f) {
            ServerFrame::Chunk(c) if c.id == id => return,
            ServerFrame::Error(e) if e.id.as_deref() == Some(id) => panic!("{f}"),
            _ => {}
        }
    }
}

/// Text, token count and final frame of request `id` (frames of other ids are skipped).
pub async fn collect(ws: &mut Ws, id: &str) -> (String, usize, Value) {
    let (mut text, mut tokens) = (String::new(), 0);
    loop {
        let f = next_json(ws).await;
        match server_frame(&f) {
            ServerFrame::Chunk(c) if c.id == id => {
                text.push_str(&c.text);
                tokens += c.tokens.len();
            }
            ServerFrame::Done(d) if d.id == id => return (text, tokens, f),
            ServerFrame::Error(e) if e.id.as_deref() == Some(id) => return (text, tokens, f),
            _ => {}
        }
    }
}
