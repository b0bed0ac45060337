//! A table of bad inputs over both transports: each gets the right error code (and names the
//! field), and the server keeps serving a concurrent well-formed stream to completion, which
//! still equals the same request run alone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const KEY: &str = "secret";

/// What a bad WebSocket frame should get back.
struct WsCase {
    name: &'static str,
    frame: Message,
    code: &'static str,
    param: Option<&'static str>,
}

fn text(v: impl ToString) -> Message {
    Message::text(v.to_string())
}

fn gen(extra: Value) -> Message {
    text(generate("bad", "hello", extra))
}

fn ws_cases() -> Vec<WsCase> {
    let case = |name, frame, code, param| WsCase {
        name,
        frame,
        code,
        param,
    };
    let long_prompt = "def f(x):\n    return x\n".repeat(30);
    vec![
        case(
            "broken JSON",
            text("{\"type\": \"generate\","),
            "invalid_json",
            None,
        ),
        case("not JSON at all", text("hello?"), "invalid_json", None),
        case(
            "JSON array",
            text("[1, 2]"),
            "invalid_request",
            Some("type"),
        ),
        case(
            "JSON string",
            text("\"generate\""),
            "invalid_request",
            Some("type"),
        ),
        case(
            "missing type",
            text(json!({"id": "bad", "prompt": "x"})),
            "invalid_request",
            Some("type"),
        ),
        case(
            "unknown type",
            text(json!({"type": "dance", "id": "bad"})),
            "invalid_request",
            Some("type"),
        ),
        case(
            "type not a string",
            text(json!({"type": 7, "id": "bad"})),
            "invalid_request",
            Some("type"),
        ),
        case(
            "missing id",
            text(json!({"type": "generate", "prompt": "x"})),
            "invalid_request",
            Some("id"),
        ),
        case(
            "empty id",
            text(json!({"type": "generate", "id": "", "prompt": "x"})),
            "invalid_request",
            Some("id"),
        ),
        case(
            "huge id",
            text(json!({"type": "generate", "id": "i".repeat(300), "prompt": "x"})),
            "invalid_request",
            Some("id"),
        ),
        case(
            "id not a string",
            text(json!({"type": "generate", "id": 5, "prompt": "x"})),
            "invalid_request",
            Some("id"),
        ),
        case(
            "no prompt",
            text(json!({"type": "generate", "id": "bad"})),
            "invalid_request",
            Some("prompt"),
        ),
        case(
            "prompt and messages",
            gen(json!({"messages": [{"role": "user", "content": "x"}]})),
            "invalid_request",
            Some("prompt"),
        ),
        case(
            "empty prompt",
            gen(json!({"prompt": ""})),
            "invalid_request",
            Some("prompt"),
        ),
        case(
            "prompt is a number",
            gen(json!({"prompt": 42})),
            "invalid_request",
            Some("prompt"),
        ),
        case(
            "prompt too long",
            gen(json!({"prompt": long_prompt})),
            "prompt_too_long",
            Some("prompt"),
        ),
        case(
            "max_tokens a string",
            gen(json!({"max_tokens": "9"})),
            "invalid_request",
            Some("max_tokens"),
        ),
        case(
            "max_tokens negative",
            gen(json!({"max_tokens": -1})),
            "invalid_request",
            Some("max_tokens"),
        ),
        case(
            "max_tokens zero",
            gen(json!({"max_tokens": 0})),
            "invalid_request",
            Some("max_tokens"),
        ),
        case(
            "max_tokens huge",
            gen(json!({"max_tokens": 1_000_000_000_000i64})),
            "invalid_request",
            Some("max_tokens"),
        ),
        case(
            "max_tokens a float",
            gen(json!({"max_tokens": 1e300})),
            "invalid_request",
            Some("max_tokens"),
        ),
        case(
            "temperature negative",
            gen(json!({"temperature": -0.5})),
            "invalid_request",
            Some("temperature"),
        ),
        case(
            "temperature huge",
            gen(json!({"temperature": 1e9})),
            "invalid_request",
            Some("temperature"),
        ),
        case(
            "top_p zero",
            gen(json!({"top_p": 0})),
            "invalid_request",
            Some("top_p"),
        ),
        case(
            "top_p above one",
            gen(json!({"top_p": 1.5})),
            "invalid_request",
            Some("top_p"),
        ),
        case(
            "top_k negative",
            gen(json!({"top_k": -3})),
            "invalid_request",
            Some("top_k"),
        ),
        case(
            "top_k beyond the vocabulary",
            gen(json!({"top_k": 1_000_000_000})),
            "invalid_request",
            Some("top_k"),
        ),
        case(
            "repetition_penalty zero",
            gen(json!({"repetition_penalty": 0})),
            "invalid_request",
            Some("repetition_penalty"),
        ),
        case(
            "seed negative",
            gen(json!({"seed": -1})),
            "invalid_request",
            Some("seed"),
        ),
        case(
            "too many stop strings",
            gen(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "invalid_request",
            Some("stop"),
        ),
        case(
            "empty stop string",
            gen(json!({"stop": [""]})),
            "invalid_request",
            Some("stop"),
        ),
        case(
            "oversized stop string",
            gen(json!({"stop": ["s".repeat(100)]})),
            "invalid_request",
            Some("stop"),
        ),
        case(
            "stop not a list",
            gen(json!({"stop": 3})),
            "invalid_request",
            Some("stop"),
        ),
        case(
            "unknown field",
            gen(json!({"colour": "blue"})),
            "invalid_request",
            Some("colour"),
        ),
        case(
            "unknown method",
            gen(json!({"speculation": {"method": "warp"}})),
            "invalid_request",
            Some("speculation.method"),
        ),
        case(
            "glide not served",
            gen(json!({"speculation": {"method": "glide"}})),
            "invalid_request",
            Some("speculation.method"),
        ),
        case(
            "glide+ngram not served",
            gen(json!({"speculation": {"method": "glide+ngram"}})),
            "invalid_request",
            Some("speculation.method"),
        ),
        case(
            "max_draft too large",
            gen(json!({"speculation": {"max_draft": 99}})),
            "invalid_request",
            Some("speculation.max_draft"),
        ),
        case(
            "max_draft zero",
            gen(json!({"speculation": {"max_draft": 0}})),
            "invalid_request",
            Some("speculation.max_draft"),
        ),
        case(
            "unknown speculation field",
            gen(json!({"speculation": {"k": 2}})),
            "invalid_request",
            Some("speculation.k"),
        ),
        case(
            "bad role",
            text(
                json!({"type": "generate", "id": "bad", "messages": [{"role": "wizard", "content": "x"}]}),
            ),
            "invalid_request",
            Some("messages[0].role"),
        ),
        case(
            "no messages",
            text(json!({"type": "generate", "id": "bad", "messages": []})),
            "invalid_request",
            Some("messages"),
        ),
        case(
            "message without content",
            text(json!({"type": "generate", "id": "bad", "messages": [{"role": "user"}]})),
            "invalid_request",
            Some("messages[0]"),
        ),
        case(
            "cancel of an unknown id",
            text(json!({"type": "cancel", "id": "ghost"})),
            "not_found",
            Some("id"),
        ),
        case(
            "cancel without id",
            text(json!({"type": "cancel"})),
            "invalid_request",
            Some("id"),
        ),
        case(
            "binary frame",
            Message::binary(vec![0u8, 1, 2]),
            "invalid_request",
            Some("frame"),
        ),
    ]
}

/// Reads until an error frame, skipping the frames of requests in flight on the socket.
async fn next_error(ws: &mut Ws) -> Value {
    loop {
        let f = next_json(ws).await;
        if f["type"] == "error" {
            return f;
        }
        assert!(f["type"] == "chunk" || f["type"] == "done", "{f}");
    }
}

/// A bad HTTP request: name, method, path, body, API key, then the expected status, code and
/// `param`.
type HttpCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<String>,
    Option<&'a str>,
    u16,
    &'a str,
    Option<&'a str>,
);

/// A request with a bad header: name, path, headers, then the expected status and code.
type HeaderCase<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

/// An oversized message: an `invalid_request` error naming the limit, then close 1009.
async fn refused_as_too_big(ws: &mut Ws) {
    let e = next_json(ws).await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("invalid_request"), Some("frame")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("4096"), "{e}");
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(c))) => break c.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no close frame after an oversized message: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Size);
}

fn error_body(e: WsError) -> (u16, Value) {
    match e {
        WsError::Http(resp) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

async fn http(
    method: &str,
    path: &str,
    body: Option<String>,
    key: Option<&str>,
    addr: std::net::SocketAddr,
) -> (u16, Value) {
    let client = http_client();
    let url = format!("http://{addr}{path}");
    let mut req = match method {
        "GET" => client.get(url),
        _ => client
            .post(url)
            .insert_header(("content-type", "application/json")),
    };
    if let Some(k) = key {
        req = req.insert_header(("authorization", format!("Bearer {k}")));
    }
    let mut resp = match body {
        Some(b) => req.send_body(b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = resp.body().limit(1 << 20).await.unwrap();
    (
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn bad_inputs_get_their_codes_while_a_good_stream_completes() {
    let server = start(|c| {
        c.server.api_key = Some(KEY.into());
        c.server.allowed_origins = vec!["https://ok.example".into()];
        c.limits.max_frame_bytes = 4096;
        c.limits.max_body_bytes = 8192;
        c.limits.max_prompt_tokens = Some(64);
        c.limits.max_tokens = 500;
        c.limits.max_requests_per_connection = 4;
        c.limits.max_connections = 10;
        c.limits.max_stop_bytes = 64;
    });
    let addr = server.local_addr();
    let good_frame = generate(
        "good",
        "the",
        json!({"max_tokens": 300, "speculation": {"method": "draft", "max_draft": 3}}),
    );
    let reference = run_alone(&server, Some(KEY), good_frame.clone()).await;
    assert_eq!(reference.finish_reason(), "length");

    // The well-formed stream, read concurrently by its own task.
    let mut good = connect(&server, Some(KEY), None).await.unwrap();
    send(&mut good, good_frame).await;
    let first = next_json(&mut good).await;
    assert_eq!(first["type"], "chunk");
    let good_task = actix_rt::spawn(async move {
        let mut out = Outcome::default();
        out.add(&first);
        while !out.add(&next_json(&mut good).await) {}
        (out, Instant::now())
    });
    let bad_start = Instant::now();
    let mut checked = 0;

    // Frame-level errors on one socket, which stays open through all of them.
    let mut ws = connect(&server, Some(KEY), None).await.unwrap();
    for c in ws_cases() {
        ws.send(c.frame.clone()).await.unwrap();
        let e = next_error(&mut ws).await;
        assert_eq!(e["code"], c.code, "{}: {e}", c.name);
        if let Some(p) = c.param {
            assert_eq!(e["param"], p, "{}: {e}", c.name);
            let named = e["message"]
                .as_str()
                .unwrap()
                .contains(p.split('[').next().unwrap());
            assert!(
                named || p == "frame",
                "{}: the message does not name `{p}`: {e}",
                c.name
            );
        }
        // The error names the request when the frame carried a usable id.
        if let Some(id) = e["id"].as_str() {
            assert!(id == "bad" || id == "ghost", "{}: {e}", c.name);
        }
        checked += 1;
    }

    // Duplicate id while the first is in flight; then a flood beyond the per-socket limit.
    send(
        &mut ws,
        generate("dup", "the", json!({"max_tokens": 400, "temperature": 1.0})),
    )
    .await;
    send(&mut ws, generate("dup", "the", json!({}))).await;
    let e = next_error(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("invalid_request"), Some("id")),
        "{e}"
    );
    checked += 1;
    for i in 0..4 {
        send(
            &mut ws,
            generate(
                &format!("flood{i}"),
                "the",
                json!({"max_tokens": 400, "temperature": 1.0}),
            ),
        )
        .await;
    }
    let e = next_error(&mut ws).await;
    assert_eq!(e["code"], "overloaded", "{e}");
    assert_eq!(e["id"], "flood3", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("max_requests_per_connection"),
        "{e}"
    );
    checked += 1;
    for id in ["dup", "flood0", "flood1", "flood2"] {
        send(&mut ws, json!({"type": "cancel", "id": id})).await;
    }
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 4 {
        let f = next_json(&mut ws).await;
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "done" {
            ended.insert(
                f["id"].as_str().unwrap().to_string(),
                f["finish_reason"].clone(),
            );
        }
    }
    assert_eq!(
        ended["dup"], "cancelled",
        "the first `dup` did not go on to its own end"
    );

    // An oversized message sent as small fragments is refused the same way.
    let mut frag = connect(&server, Some(KEY), None).await.unwrap();
    let piece = "z".repeat(3000);
    frag.send(Message::Frame(Frame::message(
        piece.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    frag.send(Message::Frame(Frame::message(
        piece,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    refused_as_too_big(&mut frag).await;
    checked += 1;

    // An oversized frame: an error naming the limit, then the socket closes with 1009.
    let mut big = connect(&server, Some(KEY), None).await.unwrap();
    big.send(gen(json!({"prompt": "x".repeat(5000)})))
        .await
        .unwrap();
    refused_as_too_big(&mut big).await;
    checked += 1;

    // Refused upgrades: no key, a wrong key, a foreign origin; an allowed origin passes.
    let (status, body) = error_body(connect(&server, None, None).await.unwrap_err());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = error_body(connect(&server, Some("wrong"), None).await.unwrap_err());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let evil = connect(&server, Some(KEY), Some("https://evil.example"))
        .await
        .unwrap_err();
    let (status, body) = error_body(evil);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden_origin"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("evil.example"));
    connect(&server, Some(KEY), Some("https://ok.example"))
        .await
        .unwrap();
    let same = format!("http://{addr}");
    connect(&server, Some(KEY), Some(&same)).await.unwrap();
    checked += 3;

    // A flood of connections: refused as overloaded at the limit, naming it.
    let mut open = Vec::new();
    let refusal = loop {
        match connect(&server, Some(KEY), None).await {
            Ok(ws) => open.push(ws),
            Err(e) => break error_body(e),
        }
        assert!(open.len() <= 10, "the connection limit was not enforced");
    };
    assert_eq!(
        (refusal.0, refusal.1["error"]["code"].as_str()),
        (503, Some("overloaded"))
    );
    assert!(refusal.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_connections"));
    drop(open);
    checked += 1;

    // HTTP: the same error type in OpenAI's error shape.
    let big_body = json!({"prompt": "y".repeat(9000)}).to_string();
    let http_cases: Vec<HttpCase> = vec![
        ("no key", "POST", "/v1/completions", Some(json!({"prompt": "x"}).to_string()), None, 401, "unauthorized", None),
        ("wrong key", "POST", "/v1/completions", Some(json!({"prompt": "x"}).to_string()), Some("nope"), 401, "unauthorized", None),
        ("no key for metrics", "GET", "/metrics", None, None, 401, "unauthorized", None),
        ("broken JSON", "POST", "/v1/completions", Some("{\"prompt\":".into()), Some(KEY), 400, "invalid_json", None),
        ("prompt of the wrong type", "POST", "/v1/completions", Some(json!({"prompt": 5}).to_string()), Some(KEY), 400, "invalid_request", Some("prompt")),
        ("missing prompt", "POST", "/v1/completions", Some(json!({"max_tokens": 5}).to_string()), Some(KEY), 400, "invalid_request", Some("prompt")),
        ("negative max_tokens", "POST", "/v1/completions", Some(json!({"prompt": "x", "max_tokens": -1}).to_string()), Some(KEY), 400, "invalid_request", Some("max_tokens")),
        ("n of 2", "POST", "/v1/completions", Some(json!({"prompt": "x", "n": 2}).to_string()), Some(KEY), 400, "invalid_request", Some("n")),
        ("stream not a bool", "POST", "/v1/completions", Some(json!({"prompt": "x", "stream": "yes"}).to_string()), Some(KEY), 400, "invalid_request", Some("stream")),
        ("unknown model", "POST", "/v1/completions", Some(json!({"prompt": "x", "model": "gpt-4"}).to_string()), Some(KEY), 404, "not_found", Some("model")),
        ("unknown field", "POST", "/v1/completions", Some(json!({"prompt": "x", "colour": 1}).to_string()), Some(KEY), 400, "invalid_request", Some("colour")),
        ("token ids outside the vocabulary", "POST", "/v1/completions", Some(json!({"prompt": [1, 99999999]}).to_string()), Some(KEY), 400, "invalid_request", Some("prompt")),
        ("prompt too long", "POST", "/v1/completions", Some(json!({"prompt": "def f(x):\n    return x\n".repeat(30)}).to_string()), Some(KEY), 400, "prompt_too_long", Some("prompt")),
        ("body too large", "POST", "/v1/completions", Some(big_body), Some(KEY), 400, "invalid_request", Some("body")),
        ("no messages", "POST", "/v1/chat/completions", Some(json!({"messages": []}).to_string()), Some(KEY), 400, "invalid_request", Some("messages")),
        ("bad role", "POST", "/v1/chat/completions", Some(json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string()), Some(KEY), 400, "invalid_request", Some("messages[0].role")),
        ("image part", "POST", "/v1/chat/completions", Some(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}).to_string()), Some(KEY), 400, "invalid_request", None),
        ("presence penalty", "POST", "/v1/chat/completions", Some(json!({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 1.0}).to_string()), Some(KEY), 400, "invalid_request", Some("presence_penalty")),
        ("unknown route", "GET", "/v2/everything", None, Some(KEY), 404, "not_found", None),
    ];
    for (name, method, path, body, key, status, code, param) in http_cases {
        let (s, b) = http(method, path, body, key, addr).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {b}"
        );
        assert!(
            b["error"]["type"].is_string() && b["error"]["message"].is_string(),
            "{name}: {b}"
        );
        if let Some(p) = param {
            assert_eq!(b["error"]["param"], p, "{name}: {b}");
        }
        checked += 1;
    }
    // Requests a browser on another site could make: a foreign Host (DNS rebinding), a
    // foreign Origin on a POST, a body not declared JSON (no CORS preflight).
    let json_body = json!({"prompt": "x"}).to_string();
    let header_cases: Vec<HeaderCase> = vec![
        (
            "foreign Host",
            "/v1/models",
            vec![("host", "evil.example:8000")],
            403,
            "forbidden_origin",
        ),
        (
            "foreign Host on the page",
            "/",
            vec![("host", "evil.example")],
            403,
            "forbidden_origin",
        ),
        (
            "foreign Origin on a POST",
            "/v1/completions",
            vec![("origin", "https://evil.example")],
            403,
            "forbidden_origin",
        ),
        (
            "text/plain body",
            "/v1/completions",
            vec![("content-type", "text/plain")],
            400,
            "invalid_request",
        ),
    ];
    for (name, path, headers, status, code) in header_cases {
        let client = http_client();
        let url = format!("http://{addr}{path}");
        let mut req = if path == "/v1/completions" {
            client
                .post(url)
                .insert_header(("content-type", "application/json"))
        } else {
            client.get(url)
        };
        req = req.insert_header(("authorization", format!("Bearer {KEY}")));
        for (k, v) in headers {
            req = req.insert_header((k, v));
        }
        let mut resp = req.send_body(json_body.clone()).await.unwrap();
        let b: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
        assert_eq!(
            (resp.status().as_u16(), b["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {b}"
        );
        checked += 1;
    }
    let mut rebinding = format!("ws://{addr}/v1/stream")
        .into_client_request()
        .unwrap();
    rebinding
        .headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    rebinding
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    rebinding
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (status, body) = error_body(
        tokio_tungstenite::connect_async(rebinding)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden_origin")),
        "{body}"
    );
    checked += 1;

    assert!(checked >= 30, "only {checked} bad inputs");
    println!("{checked} bad inputs answered with their codes");

    // The socket that took every bad frame still serves.
    send(&mut ws, generate("fine", "hello", json!({"max_tokens": 5}))).await;
    let fine = loop {
        let f = next_json(&mut ws).await;
        if f["id"] == "fine" && (f["type"] == "done" || f["type"] == "error") {
            break f;
        }
    };
    assert_eq!(fine["type"], "done", "{fine}");

    let (out, good_end) = tokio::time::timeout(Duration::from_secs(120), good_task)
        .await
        .expect("the good stream did not finish")
        .unwrap();
    assert!(
        good_end > bad_start,
        "the good stream was over before the bad inputs began"
    );
    assert_eq!(out.finish_reason(), "length", "{}", out.end);
    assert_eq!(
        out.text, reference.text,
        "the good stream changed under bad input"
    );
    assert_eq!(out.tokens, reference.tokens);
    drop(ws);
    let s = wait_engine_idle(&server).await;
    assert_eq!(s.kv_accounting_errors, 0);
}
