//! End-to-end tests of `specd serve`: the binary, its flags, config file and environment, a
//! WebSocket client (tokio-tungstenite), /metrics, and SIGTERM. Runs on the tiny pair, or on
//! the real pair with SPECD_E2E_MODEL / SPECD_E2E_DRAFT set.

mod server;

use std::time::Duration;

use serde_json::json;
use server::*;
use specd_engine::model::tiny::{
    tiny_config, tiny_draft_weights, tiny_weights, write_folder, write_guessing_glide, TinySpec,
};
use specd_engine::model::{DEFAULT_DRAFT_FILE, DEFAULT_GLIDE_FILE, DEFAULT_TARGET_FILE};

#[actix_rt::test]
async fn greedy_streams_equal_specd_generate_for_every_method() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let home = tempfile::tempdir().unwrap();
    let (mut ws, hello) = serve.connect().await;
    assert_eq!(hello["methods"], json!(["none", "draft", "ngram"]));
    let target = models.target.display().to_string();
    let draft = models.draft.display().to_string();
    for method in ["none", "draft", "ngram"] {
        let mut args = vec!["generate", "--model", &target, "--prompt", models.prompt()];
        args.extend(["--max-tokens", "48", "--speculation", method]);
        if method == "draft" {
            args.extend(["--draft", &draft]);
        }
        let out = specd(&args, home.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = String::from_utf8(out.stdout).unwrap();
        send(
            &mut ws,
            json!({"type": "generate", "id": method, "prompt": models.prompt(),
                             "max_tokens": 48, "speculation": {"method": method}}),
        )
        .await;
        let (text, _, end) = collect(&mut ws, method).await;
        assert_eq!(end["type"], "done", "{end}");
        assert_eq!(
            text, expected,
            "{method}: the server's stream differs from `specd generate`"
        );
    }
}

#[actix_rt::test]
async fn multiplexing_cancel_stop_strings_and_a_closed_socket() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let (mut ws, _) = serve.connect().await;
    send(&mut ws, models.long_request("long")).await;
    send(
        &mut ws,
        json!({"type": "generate", "id": "short", "prompt": models.prompt(), "max_tokens": 32}),
    )
    .await;
    // `short` completes while `long` streams on the same socket.
    let mut long_chunks = 0;
    let (mut short_text, mut short_end) = (String::new(), json!(null));
    while short_end.is_null() {
        let f = next_json(&mut ws).await;
        match (f["id"].as_str().unwrap(), f["type"].as_str().unwrap()) {
            ("long", "chunk") => long_chunks += 1,
            ("short", "chunk") => short_text.push_str(f["text"].as_str().unwrap()),
            ("short", "done") => short_end = f,
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    assert!(long_chunks > 0, "the long request did not stream alongside");
    send(&mut ws, json!({"type": "cancel", "id": "long"})).await;
    let (_, _, end) = collect(&mut ws, "long").await;
    assert_eq!(end["finish_reason"], "cancelled", "{end}");

    // A stop string from the middle of the short output cuts there.
    let chars: Vec<char> = short_text.chars().collect();
    assert!(chars.len() >= 8, "too little text: {short_text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let at = short_text.find(&stop).unwrap();
    send(&mut ws, json!({"type": "generate", "id": "cut", "prompt": models.prompt(), "max_tokens": 32, "stop": [stop]})).await;
    let (text, _, end) = collect(&mut ws, "cut").await;
    assert_eq!(
        (text.as_str(), end["finish_reason"].as_str()),
        (&short_text[..at], Some("stop"))
    );

    // Closing the socket mid-stream frees the request's KV blocks (seen in /metrics).
    send(&mut ws, models.long_request("gone")).await;
    first_chunk(&mut ws, "gone").await;
    assert!(
        serve
            .metric("specd_kv_cache_blocks_used{model=\"target\"}")
            .await
            > 0.0
    );
    drop(ws);
    let mut freed = false;
    for _ in 0..200 {
        let used = serve
            .metric("specd_kv_cache_blocks_used{model=\"target\"}")
            .await;
        let running = serve.metric("specd_running_sequences").await;
        if used == 0.0 && running == 0.0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(freed, "blocks still held after the socket closed");
    assert_eq!(serve.metric("specd_websocket_connections").await, 0.0);
}

#[actix_rt::test]
async fn config_file_environment_and_sigterm() {
    let models = Models::get();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("specd.toml");
    std::fs::write(
        &config,
        "[server]\nshutdown_timeout_secs = 0.0\n[limits]\nmax_tokens = 4500\nmax_requests_per_connection = 3\n",
    )
    .unwrap();
    let serve = Serve::start(
        &models,
        &["--config", config.to_str().unwrap()],
        &[("SPECD_LIMITS__MAX_PROMPT_TOKENS", "100")],
    );
    let (mut ws, hello) = serve.connect().await;
    let limits = &hello["limits"];
    assert_eq!(limits["max_tokens"], 4500, "{hello}");
    assert_eq!(limits["max_prompt_tokens"], 100, "{hello}");
    assert_eq!(limits["max_requests_per_connection"], 3, "{hello}");
    send(&mut ws, models.long_request("long")).await;
    first_chunk(&mut ws, "long").await;
    // SIGTERM with no grace period: the stream is cancelled with a final frame, the socket
    // closed, the process ends cleanly.
    serve.sigterm();
    let (_, _, end) = collect(&mut ws, "long").await;
    assert_eq!(end["finish_reason"], "cancelled", "{end}");
    let (status, lines) = serve.wait();
    assert!(status.success(), "{status:?}");
    assert!(
        lines.iter().any(|l| l.contains("1 streams cancelled")),
        "{lines:?}"
    );
}

/// With no --model, `serve` serves the default pair and the default GLIDE drafter it finds in
/// the models folder (tiny models under the default names here): glide+ngram is the default
/// method, every method is offered (the draft model too), and GLIDE's greedy streams equal
/// the target-only one (on a GPU too, `SPECD_DEVICE=cuda`).
#[actix_rt::test]
async fn the_default_glide_drafter_is_found_and_served() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    let spec = TinySpec {
        seed: 11,
        weight_scale: 0.35,
        ..Default::default()
    };
    let weights = tiny_weights(&tiny_config(&spec), spec.seed, spec.weight_scale);
    write_folder(&models.join(DEFAULT_TARGET_FILE), &spec, &weights).unwrap();
    let draft = tiny_draft_weights(&spec, 0.15, 5).unwrap();
    write_folder(&models.join(DEFAULT_DRAFT_FILE), &spec, &draft).unwrap();
    write_guessing_glide(&models.join(DEFAULT_GLIDE_FILE), &spec, 240, 9).unwrap();
    let serve = Serve::start_in(home, &[], &[]);
    let (mut ws, hello) = serve.connect().await;
    assert_eq!(hello["speculation"]["method"], "glide+ngram", "{hello}");
    assert_eq!(
        hello["methods"],
        json!(["none", "draft", "ngram", "glide", "glide+ngram"])
    );
    assert_eq!(hello["glide_model"], "glide-qwen2.5-coder-1.5b-instruct");
    let mut texts = Vec::new();
    for method in ["none", "glide", "glide+ngram", "draft"] {
        send(
            &mut ws,
            json!({"type": "generate", "id": method, "prompt": "======", "max_tokens": 40,
                   "speculation": {"method": method}}),
        )
        .await;
        let (text, _, end) = collect(&mut ws, method).await;
        assert_eq!(end["type"], "done", "{end}");
        assert_eq!(end["speculation"]["method"], method, "{end}");
        texts.push(text);
    }
    assert_eq!(texts[0], texts[1], "glide changed the text");
    assert_eq!(texts[0], texts[2], "glide+ngram changed the text");
    assert_eq!(texts[0], texts[3], "the draft model changed the text");
}

#[test]
fn without_models_serve_says_what_to_run() {
    let home = tempfile::tempdir().unwrap();
    let out = specd(&["serve", "--port", "0"], home.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stderr.contains("scripts/fetch-models"), "{stderr}");
    assert!(
        !stdout.contains("listening"),
        "bound before checking the models: {stdout}"
    );
    // A config file with an unknown key names it.
    let config = home.path().join("bad.toml");
    std::fs::write(&config, "[server]\nhots = \"0.0.0.0\"\n").unwrap();
    let out = specd(
        &["serve", "--config", config.to_str().unwrap()],
        home.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("hots"), "{stderr}");
}
