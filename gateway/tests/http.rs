//! The HTTP side against a real server on port 0: OpenAI endpoints (JSON and Server-Sent
//! Events), /v1/models, /health, /metrics and the demo page.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use specd_gateway::{Config, Server};

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let mut resp = http_client()
        .post(format!("http://{}{path}", server.local_addr()))
        .send_json(&body)
        .await
        .unwrap();
    let bytes = resp.body().limit(1 << 22).await.unwrap();
    (
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap(),
    )
}

async fn get(server: &Server, path: &str) -> (u16, String) {
    let mut resp = http_client()
        .get(format!("http://{}{path}", server.local_addr()))
        .send()
        .await
        .unwrap();
    let bytes = resp.body().limit(1 << 22).await.unwrap();
    (
        resp.status().as_u16(),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// Posts a streaming request and parses its events: the JSON payloads, and whether the
/// stream ended with `[DONE]`.
async fn post_sse(server: &Server, path: &str, body: Value) -> (Vec<Value>, bool) {
    let mut resp = http_client()
        .post(format!("http://{}{path}", server.local_addr()))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let bytes = resp.body().limit(1 << 22).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let data = block.strip_prefix("data: ").expect(block);
        assert!(!done, "data after [DONE]");
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).unwrap());
        }
    }
    (events, done)
}

#[actix_rt::test]
async fn completions_as_json_and_as_events_equal_the_websocket_stream() {
    let server = start(|_| {});
    let ws = run_alone(
        &server,
        None,
        generate("w", "hello world", json!({"max_tokens": 24})),
    )
    .await;
    let body = json!({"model": MODEL, "prompt": "hello world", "max_tokens": 24, "temperature": 0});
    let (status, full) = post(&server, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{full}");
    assert_eq!(full["object"], "text_completion");
    assert_eq!(full["model"], MODEL);
    let choice = &full["choices"][0];
    assert_eq!(choice["text"].as_str().unwrap(), ws.text);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(full["usage"]["completion_tokens"], 24);
    assert_eq!(full["speculation"]["method"], "draft");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (events, done) = post_sse(&server, "/v1/completions", streamed).await;
    assert!(done, "no [DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0).and_then(|c| c["text"].as_str()))
        .collect();
    assert_eq!(text, ws.text);
    assert!(events.len() > 3, "not streamed in pieces: {}", events.len());
    let finish: Vec<_> = events
        .iter()
        .filter_map(|e| {
            e["choices"]
                .get(0)
                .and_then(|c| c["finish_reason"].as_str())
        })
        .collect();
    assert_eq!(finish, ["length"]);
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 24);
    assert!(events.iter().all(|e| e["id"] == events[0]["id"]));

    // Stop as a single string.
    let stop: String = ws.text.chars().skip(10).take(2).collect();
    let at = ws.text.find(&stop).unwrap();
    let (_, cut) = post(
        &server,
        "/v1/completions",
        json!({"prompt": "hello world", "max_tokens": 24, "temperature": 0, "stop": stop}),
    )
    .await;
    assert_eq!(cut["choices"][0]["text"].as_str().unwrap(), &ws.text[..at]);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");

    // vLLM's `ignore_eos`: a greedy run that ends with end-of-text (as many tokens as over the
    // WebSocket); with it, the run goes on to `max_tokens`.
    let (prompt, free) = prompt_that_stops(&server, 200).await;
    for (ignore, finish, tokens) in [(false, "stop", free.tokens.len()), (true, "length", 200)] {
        let body =
            json!({"prompt": prompt, "max_tokens": 200, "temperature": 0, "ignore_eos": ignore});
        let (status, out) = post(&server, "/v1/completions", body).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["choices"][0]["finish_reason"], finish, "{out}");
        assert_eq!(out["usage"]["completion_tokens"], tokens, "{out}");
    }
}

/// `glide+ngram` is served wherever a GLIDE drafter is: its greedy completion equals the
/// target-only one, and without a GLIDE drafter it is refused naming the field.
#[actix_rt::test]
async fn glide_and_ngram_completions_are_served_with_glide_and_refused_without() {
    let body = |method: &str| {
        json!({"prompt": "======", "max_tokens": 40, "temperature": 0,
               "speculation": {"method": method, "max_draft": 4}})
    };
    let server = start(|_| {});
    let (status, e) = post(&server, "/v1/completions", body("glide+ngram")).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["param"].as_str()),
        (Some("invalid_request"), Some("speculation.method")),
        "{e}"
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`glide+ngram` needs a GLIDE drafter"),
        "{message}"
    );

    let backend = glide_backend(specd_engine::actors::EngineConfig::default())
        .unwrap_or_else(|e| panic!("the GLIDE drafter does not load on {}: {e}", device()));
    let server = start_with_backend(|_| {}, backend);
    let (status, plain) = post(&server, "/v1/completions", body("none")).await;
    assert_eq!(status, 200, "{plain}");
    let (status, both) = post(&server, "/v1/completions", body("glide+ngram")).await;
    assert_eq!(status, 200, "{both}");
    assert_eq!(both["speculation"]["method"], "glide+ngram");
    assert_eq!(both["choices"][0]["text"], plain["choices"][0]["text"]);
    assert_eq!(both["usage"], plain["usage"]);
    assert!(
        both["speculation"]["drafted"].as_u64().unwrap() > 0,
        "{both}"
    );
    let idle = wait_engine_idle(&server).await;
    assert_eq!(idle.kv_glide.blocks_used, 0, "{idle:?}");
    assert_eq!(idle.kv_accounting_errors, 0, "{idle:?}");
}

#[actix_rt::test]
async fn chat_completions_use_the_chat_template_and_stream_deltas() {
    let server = start(|_| {});
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    let mut ws = connect(&server, None, None).await.unwrap();
    send(
        &mut ws,
        json!({"type": "generate", "id": "c", "messages": messages, "max_tokens": 20}),
    )
    .await;
    let expected = run_to_end(&mut ws, "c").await;
    let body = json!({"model": MODEL, "messages": messages, "max_tokens": 20, "temperature": 0});
    let (status, full) = post(&server, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{full}");
    assert_eq!(full["object"], "chat.completion");
    let msg = &full["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["content"].as_str().unwrap(), expected.text);
    assert_eq!(
        full["choices"][0]["finish_reason"],
        expected.finish_reason()
    );

    let mut streamed = body;
    streamed["stream"] = json!(true);
    // Content given as text parts, as newer clients send it.
    streamed["messages"][1]["content"] = json!([{"type": "text", "text": "hi"}]);
    let (events, done) = post_sse(&server, "/v1/chat/completions", streamed).await;
    assert!(done);
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected.text);
    let last = events.last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        expected.finish_reason()
    );
}

#[actix_rt::test]
async fn dropping_an_event_stream_cancels_the_request() {
    let server = start(|_| {});
    let body = json!({"prompt": "the", "max_tokens": 400, "temperature": 1.0, "seed": 0, "stream": true,
                      "speculation": {"method": "none"}});
    let mut resp = http_client()
        .post(format!("http://{}/v1/completions", server.local_addr()))
        .send_json(&body)
        .await
        .unwrap();
    let first = resp.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let stats = server
        .state()
        .backend()
        .unwrap()
        .engine()
        .stats()
        .await
        .unwrap();
    assert_eq!(stats.running + stats.waiting, 1, "{stats:?}");
    drop(resp);
    let idle = wait_engine_idle(&server).await;
    assert_eq!(idle.kv_accounting_errors, 0);
}

#[actix_rt::test]
async fn a_client_leaving_a_whole_response_cancels_the_request() {
    let server = start_with_backend(|_| {}, backend_of(&slow_spec(), Default::default()));
    let engine = server.state().backend().unwrap();
    // A sampled request long enough to leave in the middle of: the first seed whose output
    // runs 300 tokens before an end token (which seed that is depends on the device's
    // arithmetic).
    let mut found = None;
    for seed in 1..=20 {
        let body = json!({"prompt": "the", "max_tokens": 400, "temperature": 1.0, "seed": seed,
                          "speculation": {"method": "none"}});
        let (status, full) = post(&server, "/v1/completions", body.clone()).await;
        assert_eq!(status, 200, "{full}");
        let tokens = full["usage"]["completion_tokens"].as_u64().unwrap();
        if tokens >= 300 {
            found = Some((body, tokens));
            break;
        }
    }
    let (body, tokens) = found.expect("no seed of 1..=20 gives a reference request of 300 tokens");
    // The same request, abandoned by its client (the connection closes) once it streams.
    let steps = engine.engine().stats().await.unwrap().steps;
    let url = format!("http://{}/v1/completions", server.local_addr());
    let client = actix_rt::spawn(async move { http_client().post(url).send_json(&body).await });
    loop {
        let s = engine.engine().stats().await.unwrap();
        if s.running == 1 && s.steps > steps + 5 {
            break;
        }
        assert!(
            !client.is_finished(),
            "the request ended before the client left"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    client.abort();
    wait_engine_idle(&server).await;
    let used = engine.engine().stats().await.unwrap().steps - steps;
    assert!(
        used < tokens / 2,
        "{used} steps after the client left of {tokens} for the whole"
    );
}

#[actix_rt::test]
async fn a_flood_beyond_the_engine_queue_is_refused_as_overloaded() {
    let engine = specd_engine::actors::EngineConfig {
        max_running: 1,
        max_waiting: 1,
        ..Default::default()
    };
    let server = start_with_engine(|_| {}, engine);
    let body = json!({"prompt": "the", "max_tokens": 200, "temperature": 1.0, "seed": 0,
                      "speculation": {"method": "none"}});
    let replies = futures_util::future::join_all(
        (0..6).map(|_| post(&server, "/v1/completions", body.clone())),
    )
    .await;
    let ok = replies.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = replies.iter().filter(|(s, _)| *s == 503).collect();
    assert!(ok >= 2, "{replies:?}");
    assert!(!refused.is_empty(), "nothing was refused: {replies:?}");
    for (_, b) in &refused {
        assert_eq!(b["error"]["code"], "overloaded", "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("limit"),
            "{b}"
        );
    }
    assert_eq!(ok + refused.len(), 6, "{replies:?}");
    wait_engine_idle(&server).await;
}

#[actix_rt::test]
async fn models_health_metrics_and_the_page() {
    // Not ready until the backend is set.
    let mut c = Config::default();
    c.server.port = 0;
    let server = Server::start(c).unwrap();
    let (status, body) = get(&server, "/health").await;
    assert_eq!((status, body.contains("loading")), (503, true), "{body}");
    let (status, body) = post(&server, "/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("overloaded")),
        "{body}"
    );
    server.set_backend(backend(Default::default()));
    let (status, body) = get(&server, "/health").await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = get(&server, "/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["context_length"], 512);

    let (status, page) = get(&server, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") && page.contains("/v1/stream"),
        "not the demo page"
    );

    let mut ws = connect(&server, None, None).await.unwrap();
    send(
        &mut ws,
        generate("m", "hello world", json!({"max_tokens": 12})),
    )
    .await;
    run_to_end(&mut ws, "m").await;
    // Every n-gram draft comes from prompt lookup, and is counted so.
    let (status, ngram) = post(
        &server,
        "/v1/completions",
        json!({"prompt": "x = 1\nx = 1\nx =", "max_tokens": 30, "temperature": 0,
               "speculation": {"method": "ngram", "max_draft": 3}}),
    )
    .await;
    assert_eq!(status, 200, "{ngram}");
    let spec = &ngram["speculation"];
    assert!(spec["drafted"].as_u64().unwrap() > 0, "{ngram}");
    assert_eq!(
        (&spec["lookup"]["drafted"], &spec["lookup"]["accepted"]),
        (&spec["drafted"], &spec["accepted"]),
        "{ngram}"
    );
    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "specd_generated_tokens_total",
        "specd_prompt_tokens_total",
        "specd_spec_draft_tokens_total",
        "specd_spec_accepted_tokens_total",
        "specd_spec_lookup_drafts_total",
        "specd_spec_lookup_accepted_tokens_total",
        "specd_requests_total{finish_reason=\"length\",error_code=\"none\"}",
        "specd_spec_draft_tokens_per_position_total{method=\"ngram\",position=\"1\"}",
        "specd_kv_cache_blocks_total",
        "specd_kv_cache_utilization_ratio",
        "specd_running_sequences",
        "specd_websocket_connections",
        "specd_process_resident_memory_bytes",
        "specd_time_to_first_token_seconds_bucket{le=\"0.005\"}",
        "specd_step_duration_seconds_bucket{phase=\"verify\"",
        "# HELP specd_generated_tokens_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    // This socket is open: the gauge says so.
    let open: f64 = text
        .lines()
        .find(|l| l.starts_with("specd_websocket_connections "))
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open >= 1.0, "{open}");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(50)).await;
}
