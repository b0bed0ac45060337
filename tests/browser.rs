//! The demo page in headless Chromium (Debian's `chromium`, installed by scripts/test-deps),
//! driven over the DevTools protocol: the page connects to `/v1/stream`, streams a greedy
//! completion into the page with drafted tokens marked, and the screenshot is kept as a test
//! artifact (target/test-artifacts/demo-page.png).

mod server;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use server::*;
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> PathBuf {
    let p = std::env::var_os("SPECD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-deps (it installs Debian's `chromium`), or point \
         SPECD_CHROMIUM at a Chromium binary",
        p.display()
    );
    p
}

/// A headless Chromium with its DevTools endpoint; killed when dropped.
struct Browser {
    child: Child,
    ws_url: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let ws_url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium did not print its DevTools address within 60 s");
        Self {
            child,
            ws_url,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol connection: one command at a time, events skipped.
struct Cdp {
    ws: Ws,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({"id": self.next, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .expect("DevTools did not answer")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == self.next {
                    assert!(v["error"].is_null(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expr` in the page; returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }
}

#[actix_rt::test]
async fn the_demo_page_streams_text_with_drafted_tokens_marked() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    // What the page should show: the greedy completion of the same request.
    let (mut ws, _) = serve.connect().await;
    send(
        &mut ws,
        json!({"type": "generate", "id": "ref", "prompt": models.prompt(), "max_tokens": 40,
                         "speculation": {"method": "draft", "max_draft": 4}}),
    )
    .await;
    let (expected, _, _) = collect(&mut ws, "ref").await;

    let browser = Browser::launch();
    let (bws, _) = tokio_tungstenite::connect_async(&browser.ws_url)
        .await
        .unwrap();
    let mut cdp = Cdp {
        ws: bws,
        next: 0,
        session: None,
    };
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;
    let query = serde_urlencoded::to_string([
        ("prompt", models.prompt()),
        ("mode", "raw"),
        ("max_tokens", "40"),
        ("temperature", "0"),
        ("method", "draft"),
        ("max_draft", "4"),
        ("autostart", "1"),
    ])
    .unwrap();
    let url = format!("http://{}/?{query}", serve.addr);
    cdp.call("Page.navigate", json!({"url": url})).await;

    let start = Instant::now();
    let mut states = Vec::new();
    loop {
        let state = cdp
            .eval("document.body && document.body.dataset.state")
            .await;
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "done" || state == "error" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the page never finished: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = cdp
        .eval("document.getElementById('status').textContent")
        .await;
    assert_eq!(
        states.last().unwrap(),
        "done",
        "states {states:?}, status {status}"
    );
    let shown = cdp
        .eval("document.getElementById('output').textContent")
        .await;
    assert_eq!(
        shown.as_str().unwrap(),
        expected,
        "the page shows other text than was streamed"
    );
    let drafted = cdp
        .eval("document.querySelectorAll('#output span.drafted').length")
        .await;
    let from_target = cdp
        .eval("document.querySelectorAll('#output span.target').length")
        .await;
    assert!(
        drafted.as_u64().unwrap() > 0,
        "no drafted tokens are marked"
    );
    assert!(
        from_target.as_u64().unwrap() > 0,
        "no target tokens are marked"
    );
    let acceptance = cdp
        .eval("document.getElementById('acceptance').textContent")
        .await;
    assert!(
        acceptance.as_str().unwrap().contains('%'),
        "acceptance shows {acceptance}"
    );
    let tps = cdp.eval("document.getElementById('tps').textContent").await;
    println!("page: status {status}, acceptance {acceptance}, tokens/s {tps}");

    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("demo-page.png");
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}
