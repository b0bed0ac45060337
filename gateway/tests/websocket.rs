//! The WebSocket protocol against a real server on port 0 (tokio-tungstenite client).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Greedy, the tiny target writes 178 tokens before its end-of-text token.
const PROMPT: &str = "hello world";

/// A request that runs for 400 tokens (sampled, seed 0: no end-of-text before).
fn long(id: &str) -> serde_json::Value {
    generate(
        id,
        "the",
        json!({"max_tokens": 400, "temperature": 1.0, "seed": 0, "speculation": {"method": "none"}}),
    )
}

#[actix_rt::test]
async fn multiplexed_requests_each_equal_their_request_alone() {
    // Five requests at once would make the load policy switch drafting off (the draft model
    // no longer drafts in a request's first step, before the burst is in): this test is about
    // multiplexing, so it drafts at any load.
    let server = start_with_engine(
        |_| {},
        specd_engine::actors::EngineConfig {
            load: specd_engine::actors::LoadPolicies::NEVER,
            ..Default::default()
        },
    );
    let frames = vec![
        generate(
            "plain",
            PROMPT,
            json!({"max_tokens": 40, "speculation": {"method": "none"}}),
        ),
        generate(
            "draft",
            PROMPT,
            json!({"max_tokens": 40, "speculation": {"method": "draft", "max_draft": 4}}),
        ),
        generate(
            "ngram",
            "x = 1\nx = 1\nx =",
            json!({"max_tokens": 30, "speculation": {"method": "ngram", "max_draft": 3}}),
        ),
        generate(
            "chat",
            "",
            json!({"prompt": null, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 25}),
        ),
        // Sampling without drafts consumes the request's RNG the same way in any batch.
        generate(
            "sampled",
            PROMPT,
            json!({"max_tokens": 30, "temperature": 0.8, "top_p": 0.9, "seed": 3, "speculation": {"method": "none"}}),
        ),
    ];
    let frames: Vec<_> = frames
        .into_iter()
        .map(|mut f| {
            if f["prompt"].is_null() {
                f.as_object_mut().unwrap().remove("prompt");
            }
            f
        })
        .collect();
    let mut alone = HashMap::new();
    for f in &frames {
        let id = f["id"].as_str().unwrap().to_string();
        alone.insert(id, run_alone(&server, None, f.clone()).await);
    }
    let mut ws = connect(&server, None, None).await.unwrap();
    for f in &frames {
        send(&mut ws, f.clone()).await;
    }
    let mut together: HashMap<String, Outcome> = HashMap::new();
    let mut order = Vec::new();
    while together.values().filter(|o| !o.end.is_null()).count() < frames.len() {
        let f = next_json(&mut ws).await;
        let id = f["id"].as_str().unwrap().to_string();
        order.push(id.clone());
        together.entry(id).or_default().add(&f);
    }
    for (id, a) in &alone {
        let t = &together[id];
        assert_eq!(t.end["type"], "done", "{id}: {}", t.end);
        assert_eq!(t.text, a.text, "{id}: text differs when multiplexed");
        assert_eq!(t.tokens, a.tokens, "{id}");
        assert_eq!(t.finish_reason(), a.finish_reason(), "{id}");
        let usage = &t.end["usage"];
        assert_eq!(
            usage["completion_tokens"].as_u64().unwrap() as usize,
            t.tokens.len()
        );
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(usage["prompt_tokens"].as_u64().unwrap() + t.tokens.len() as u64)
        );
        assert!(t.draft_chars as usize <= t.text.chars().count(), "{id}");
    }
    // Greedy speculation is lossless: the drafted request equals the plain one.
    assert_eq!(together["draft"].tokens, together["plain"].tokens);
    assert_eq!(together["plain"].drafted, 0);
    let d = &together["draft"];
    assert!(
        d.drafted > 0 && d.accepted > 0 && d.draft_chars > 0,
        "{:?}",
        d
    );
    let spec = &d.end["speculation"];
    assert_eq!(spec["method"], "draft");
    assert_eq!(spec["drafted"].as_u64(), Some(d.drafted));
    assert_eq!(spec["accepted"].as_u64(), Some(d.accepted));
    // None of the draft model's drafts came from prompt lookup (http.rs checks n-gram's).
    assert_eq!(
        spec["lookup"],
        json!({"drafts": 0, "drafted": 0, "accepted": 0})
    );
    assert!(d.end["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);
    // Frames of different requests really were interleaved on the one socket.
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= frames.len(),
        "frames were not interleaved: {order:?}"
    );
    wait_engine_idle(&server).await;
}

/// Without a GLIDE drafter a `glide` request is refused naming the field and what is served;
/// with one, `glide` is among the methods and its greedy stream equals the target-only one.
#[actix_rt::test]
async fn glide_is_served_where_a_glide_drafter_is_loaded_and_refused_by_name_elsewhere() {
    let glide = |id: &str, prompt: &str| {
        generate(
            id,
            prompt,
            json!({"max_tokens": 40, "speculation": {"method": "glide", "max_draft": 4}}),
        )
    };
    let server = start(|_| {});
    let (mut ws, hello) = connect_hello(&server).await;
    assert_eq!(hello["methods"], json!(["none", "draft", "ngram"]));
    assert!(hello["glide_model"].is_null(), "{hello}");
    send(&mut ws, glide("g", PROMPT)).await;
    let e = run_to_end(&mut ws, "g").await.end;
    assert_eq!(
        (&e["type"], &e["code"], &e["param"]),
        (
            &json!("error"),
            &json!("invalid_request"),
            &json!("speculation.method")
        ),
        "{e}"
    );
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("`glide` needs a GLIDE drafter")
            && message.contains("serves none, draft, ngram"),
        "{message}"
    );

    // On a GPU too: the drafter runs on its target's device.
    let backend = glide_backend(specd_engine::actors::EngineConfig::default())
        .unwrap_or_else(|e| panic!("the GLIDE drafter does not load on {}: {e}", device()));
    let server = start_with_backend(|_| {}, backend);
    let (mut ws, hello) = connect_hello(&server).await;
    assert_eq!(
        hello["methods"],
        json!(["none", "draft", "ngram", "glide", "glide+ngram"])
    );
    assert_eq!(hello["glide_model"], "tiny-glide");
    // After the second prompt the target repeats tokens, which the tiny GLIDE drafts well.
    let mut accepted = 0;
    for prompt in [PROMPT, "======"] {
        let plain = run_alone(
            &server,
            None,
            generate(
                "p",
                prompt,
                json!({"max_tokens": 40, "speculation": {"method": "none"}}),
            ),
        )
        .await;
        send(&mut ws, glide("g", prompt)).await;
        let g = run_to_end(&mut ws, "g").await;
        assert_eq!(g.end["type"], "done", "{}", g.end);
        assert_eq!(g.end["speculation"]["method"], "glide");
        assert_eq!(
            (&g.tokens, &g.text),
            (&plain.tokens, &plain.text),
            "{prompt:?}"
        );
        assert!(g.drafted > 0, "{g:?}");
        accepted += g.accepted;
    }
    assert!(accepted > 0, "no GLIDE draft was accepted");
    let idle = wait_engine_idle(&server).await;
    assert_eq!(idle.kv_glide.blocks_used, 0, "{idle:?}");
    assert_eq!(idle.kv_accounting_errors, 0, "{idle:?}");
}

#[actix_rt::test]
async fn cancel_ends_a_request_and_the_socket_keeps_serving() {
    let server = start(|_| {});
    let mut ws = connect(&server, None, None).await.unwrap();
    send(&mut ws, long("long")).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "chunk", "{first}");
    send(&mut ws, json!({"type": "cancel", "id": "long"})).await;
    let mut out = Outcome::default();
    out.add(&first);
    while !out.add(&next_json(&mut ws).await) {}
    assert_eq!(out.end["type"], "done", "{}", out.end);
    assert_eq!(out.finish_reason(), "cancelled");
    let n = out.end["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n < 400, "cancel came too late to matter: {n} tokens");
    wait_engine_idle(&server).await;
    // A second cancel of the finished request raced its end: ignored, the socket still serves.
    send(&mut ws, json!({"type": "cancel", "id": "long"})).await;
    send(&mut ws, generate("after", PROMPT, json!({"max_tokens": 5}))).await;
    assert_eq!(run_to_end(&mut ws, "after").await.finish_reason(), "length");
    // A cancel of an id never used is an error that names it but belongs to no request.
    send(&mut ws, json!({"type": "cancel", "id": "nobody"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert!(
        e["id"].is_null() && e["message"].as_str().unwrap().contains("nobody"),
        "{e}"
    );
}

#[actix_rt::test]
async fn stop_strings_cut_the_text_before_them() {
    let server = start(|_| {});
    let free = run_alone(
        &server,
        None,
        generate("a", PROMPT, json!({"max_tokens": 60})),
    )
    .await;
    assert_eq!(free.finish_reason(), "length");
    // A stop string taken from the middle of the free output.
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() > 20, "too little text to cut: {:?}", free.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let at = free.text.find(&stop).unwrap();
    for method in ["none", "draft", "ngram"] {
        let cut = run_alone(
            &server,
            None,
            generate("b", PROMPT, json!({"max_tokens": 60, "stop": [stop, "never-there"], "speculation": {"method": method}})),
        )
        .await;
        assert_eq!(cut.finish_reason(), "stop", "{method}");
        assert_eq!(cut.text, free.text[..at], "{method}: stop {stop:?}");
    }
}

/// `ignore_eos` runs past the end-of-text token to `max_tokens`: the text up to where the free
/// run ended is the same, and it must be a boolean.
#[actix_rt::test]
async fn ignore_eos_runs_to_max_tokens() {
    let server = start(|_| {});
    let (prompt, free) = prompt_that_stops(&server, 250).await;
    assert!(free.tokens.len() < 250, "{}", free.tokens.len());
    for method in ["none", "draft", "ngram"] {
        let past = run_alone(
            &server,
            None,
            generate(
                "b",
                &prompt,
                json!({"max_tokens": 250, "ignore_eos": true, "speculation": {"method": method}}),
            ),
        )
        .await;
        assert_eq!(past.finish_reason(), "length", "{method}: {}", past.end);
        assert_eq!(past.tokens.len(), 250, "{method}");
        assert_eq!(past.tokens[..free.tokens.len()], free.tokens, "{method}");
    }
    let mut ws = connect(&server, None, None).await.unwrap();
    send(&mut ws, generate("c", PROMPT, json!({"ignore_eos": "yes"}))).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("ignore_eos"), "{e}");
}

#[actix_rt::test]
async fn closing_the_socket_mid_stream_frees_the_requests_blocks() {
    let server = start(|_| {});
    let mut ws = connect(&server, None, None).await.unwrap();
    send(&mut ws, long("x")).await;
    send(&mut ws, generate("y", "the", json!({"max_tokens": 300}))).await;
    // Both requests are in the engine once each has streamed a chunk (on a loaded machine the
    // second frame may otherwise still be unread when the connection drops).
    let mut streaming = std::collections::HashSet::new();
    while streaming.len() < 2 {
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["type"], "chunk", "{frame}");
        streaming.insert(frame["id"].as_str().unwrap().to_string());
    }
    let backend = server.state().backend().unwrap();
    let busy = backend.engine().stats().await.unwrap();
    assert!(busy.kv_target.blocks_used > 0, "{busy:?}");
    drop(ws); // no close frame: the TCP connection just ends
    let idle = wait_engine_idle(&server).await;
    assert_eq!(idle.kv_draft.blocks_used, 0);
    assert_eq!(idle.kv_accounting_errors, 0);
    assert!(idle.finished >= 2);
    // The connection slot is released too.
    for _ in 0..100 {
        if server.state().connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.state().connections(), 0);
}

#[actix_rt::test]
async fn a_client_that_stops_answering_pings_is_dropped_and_an_idle_one_closed() {
    let server = start(|c| {
        c.server.heartbeat_secs = 0.1;
        c.server.client_timeout_secs = 0.5;
        c.server.idle_timeout_secs = 0.8;
    });
    // Silent: never reads, so never answers a ping.
    let mut silent = connect(&server, None, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut saw_close = None;
    while let Some(Ok(m)) = silent.next().await {
        if let Message::Close(c) = m {
            saw_close = c;
            break;
        }
    }
    let c = saw_close.expect("the server sent no close frame");
    assert_eq!(c.code, CloseCode::Away, "{c:?}");
    // Answers pings but sends nothing: closed as idle.
    let mut idle = connect(&server, None, None).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = idle.next().await {
            if let Message::Close(c) = m {
                return c;
            }
        }
        None
    })
    .await
    .expect("idle socket not closed");
    let c = closed.expect("no close frame");
    assert_eq!(c.code, CloseCode::Normal, "{c:?}");
    assert!(c.reason.contains("idle"), "{c:?}");
}

/// Reads to the request's final frame, then to the server's close frame.
async fn final_then_close(ws: &mut Ws) -> (Outcome, CloseCode) {
    let mut out = Outcome::default();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                if f["id"] == "extra" {
                    // Sent while draining: refused.
                    assert_eq!(f["code"], "overloaded", "{f}");
                    continue;
                }
                if out.add(&f) {
                    break;
                }
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("stream ended without a final frame: {other:?}"),
        }
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(c))) => return (out, c.unwrap().code),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[actix_rt::test]
async fn graceful_shutdown_lets_streams_finish_within_the_grace_period() {
    let server = start(|c| c.server.shutdown_timeout_secs = 20.0);
    let addr = server.local_addr();
    let lifecycle = server.state().lifecycle.clone();
    let mut ws = connect(&server, None, None).await.unwrap();
    send(&mut ws, long("long")).await;
    assert_eq!(next_json(&mut ws).await["type"], "chunk");
    let stopper = std::thread::spawn(move || server.shutdown());
    while lifecycle.phase() == specd_gateway::lifecycle::Phase::Serving {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    send(&mut ws, generate("extra", PROMPT, json!({}))).await;
    // New sockets are refused while draining.
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/stream")).await;
    assert!(refused.is_err(), "a socket opened during shutdown");
    let (out, close) = final_then_close(&mut ws).await;
    assert_eq!(out.finish_reason(), "length", "{}", out.end);
    assert_eq!(
        out.tokens.len() + 1,
        400,
        "all of it streamed (the first chunk was read above)"
    );
    assert_eq!(close, CloseCode::Away);
    assert_eq!(stopper.join().unwrap(), 0, "nothing had to be cancelled");
}

#[actix_rt::test]
async fn graceful_shutdown_cancels_what_outlives_the_grace_period() {
    let server = start(|c| c.server.shutdown_timeout_secs = 0.0);
    let mut ws = connect(&server, None, None).await.unwrap();
    send(&mut ws, long("long")).await;
    assert_eq!(next_json(&mut ws).await["type"], "chunk");
    let backend = server.state().backend().unwrap();
    let stopper = std::thread::spawn(move || server.shutdown());
    let (out, close) = final_then_close(&mut ws).await;
    assert_eq!(out.end["type"], "done", "{}", out.end);
    assert_eq!(out.finish_reason(), "cancelled");
    assert_eq!(close, CloseCode::Away);
    assert_eq!(stopper.join().unwrap(), 1, "one stream had to be cancelled");
    let s = backend.engine().stats().await.unwrap();
    assert_eq!((s.running, s.kv_target.blocks_used), (0, 0), "{s:?}");
}
