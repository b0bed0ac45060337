//! The official OpenAI Python client against `specd serve` (`pip install openai`, done by
//! scripts/test-deps into .test-env/venv). Fails, saying what to run, when that Python is
//! missing.

mod server;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use server::*;

/// The Python with `openai` installed: `SPECD_TEST_PYTHON`, else .test-env/venv.
fn python() -> PathBuf {
    let p = std::env::var_os("SPECD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-env/venv/bin/python")
        });
    let ok = Command::new(&p)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} has no `openai` package: run scripts/test-deps (it creates .test-env/venv with \
         `pip install openai`), or point SPECD_TEST_PYTHON at a Python that has it",
        p.display()
    );
    p
}

#[actix_rt::test]
async fn the_official_openai_client_streams_completions_and_chat() {
    let python = python();
    let models = Models::get();
    let serve = Serve::start(&models, &["--api-key", "sk-test"], &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", serve.addr))
        .arg("sk-test")
        .arg(models.prompt())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the OpenAI client script failed:\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{report}");

    // The same greedy text as the WebSocket stream (OpenAI's endpoints default to sampling;
    // the script asked for temperature 0).
    let (mut ws, _) = {
        let url = format!("ws://{}/v1/stream", serve.addr);
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer sk-test".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let hello = next_json(&mut ws).await;
        (ws, hello)
    };
    send(
        &mut ws,
        json!({"type": "generate", "id": "w", "prompt": models.prompt(), "max_tokens": 32}),
    )
    .await;
    let (text, _, _) = collect(&mut ws, "w").await;
    assert_eq!(report["completion"].as_str().unwrap(), text);
}
