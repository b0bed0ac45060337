//! The load tester against a real `specd serve` process (the tiny pair, or the real one with
//! SPECD_E2E_MODEL / SPECD_E2E_DRAFT): as a library and as `specd loadtest`.

mod server;

use std::time::Duration;

use server::*;
use specd_loadtest::{sweep, LevelReport, Load, Prompt, RequestTemplate, Slo, Sweep, Target};
use specd_protocol::{FinishReason, Method};

fn sweep_of(serve: &Serve, loads: Vec<Load>, requests: usize, tokens: usize) -> Sweep {
    Sweep {
        target: Target::new(&format!("http://{}", serve.addr), None, false).unwrap(),
        prompts: vec![
            Prompt::Text("hello world".into()),
            Prompt::Text("the".into()),
        ],
        template: RequestTemplate {
            max_tokens: tokens,
            method: Some(Method::Draft),
            ignore_eos: true,
            ..Default::default()
        },
        loads,
        seed: 3,
        requests,
        max_duration: Duration::from_secs(300),
        progress: false,
        fresh_prompts: false,
    }
}

#[actix_rt::test]
async fn a_sweep_measures_every_request_and_its_speculation() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    // Every request with a prompt of its own (the sweep's wiring of --fresh-prompts).
    let mut s = sweep_of(&serve, vec![Load::Clients(1), Load::Clients(3)], 6, 16);
    s.fresh_prompts = true;
    let runs = sweep(&s).await.unwrap();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run.records.len(), 6, "{}", run.load);
        for r in &run.records {
            assert!(r.error.is_none(), "{r:?}");
            assert_eq!(r.output_tokens, 16, "{r:?}");
            assert_eq!(r.finish_reason, Some(FinishReason::Length));
            let ttft = r.ttft_s.unwrap();
            assert!(ttft > 0.0 && ttft <= r.e2e_s, "{r:?}");
            // Gaps between chunks: one fewer than the chunks, within the request's time.
            assert!(!r.itl_s.is_empty() && r.itl_s.len() < 16, "{r:?}");
            assert!(
                r.itl_s.iter().sum::<f64>() <= r.e2e_s - ttft + 1e-9,
                "{r:?}"
            );
            let s = r.speculation.as_ref().unwrap();
            assert_eq!(s.method, Method::Draft);
            assert!(s.accepted <= s.drafted, "{s:?}");
            // Alone, a request drafts; at 3 sequences the default load policy may turn
            // drafting off.
            if run.load == Load::Clients(1) {
                assert!(s.drafted > 0, "{s:?}");
            }
        }
        let report = LevelReport::new(run, &Slo::default());
        assert_eq!((report.requests, report.succeeded), (6, 6));
        assert_eq!(report.output_tokens, 96);
        assert!(report.output_tokens_per_s > 0.0);
        assert_eq!(report.ttft_ms.as_ref().unwrap().count, 6);
        let drafted: u64 = run
            .records
            .iter()
            .map(|r| r.speculation.as_ref().unwrap().drafted)
            .sum();
        assert_eq!(report.speculation.drafted, drafted);
        // The server counted the same level: the load tester is its only client.
        let server = report.server.as_ref().expect("no /metrics delta");
        assert_eq!(server.generated_tokens, 96.0, "{server:?}");
        assert_eq!(server.requests, 6.0, "{server:?}");
        assert_eq!(server.drafted, drafted as f64, "{server:?}");
        assert_eq!(
            server.accepted, report.speculation.accepted as f64,
            "{server:?}"
        );
    }
    // The three clients of the second level overlapped: some request started before another
    // ended.
    let level = &runs[1].records;
    let overlapped = level.iter().any(|a| {
        level
            .iter()
            .any(|b| b.start_s > a.start_s && b.start_s < a.start_s + a.e2e_s)
    });
    assert!(
        overlapped,
        "no two requests of concurrency 3 were in flight together"
    );
}

#[actix_rt::test]
async fn a_server_that_is_down_is_a_clear_error() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Sweep {
        target: Target::new(&format!("http://127.0.0.1:{port}"), None, false).unwrap(),
        prompts: vec![Prompt::Text("x".into())],
        template: RequestTemplate {
            max_tokens: 1,
            ..Default::default()
        },
        loads: vec![Load::Clients(1)],
        seed: 0,
        requests: 1,
        max_duration: Duration::from_secs(10),
        progress: false,
        fresh_prompts: false,
    };
    let e = format!("{:#}", sweep(&s).await.unwrap_err());
    assert!(e.contains("is specd serving there?"), "{e}");
}

#[test]
fn specd_loadtest_prints_the_table_and_writes_json() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = std::process::Command::new(specd_bin())
        .args([
            "loadtest",
            "--url",
            &format!("http://{}", serve.addr),
            "--fresh-prompts",
            "--concurrency",
            "1,2",
            "--rate",
            "50",
            "--slo-ttft-ms",
            "60000",
            "--requests",
            "4",
            "--max-tokens",
            "8",
            "--ignore-eos",
            "--speculation",
            "ngram",
            "--charts",
        ])
        .arg(dir.path().join("charts"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| load | requests | errors |"), "{stdout}");
    assert!(stdout.contains("| 2 clients | 4 | 0 |"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let level = &doc["levels"][1];
    assert_eq!(level["summary"]["output_tokens"], 32, "{level}");
    assert_eq!(level["requests"].as_array().unwrap().len(), 4);
    assert_eq!(
        level["summary"]["speculation"]["methods"]["ngram"], 4,
        "{level}"
    );
    assert_eq!(doc["levels"].as_array().unwrap().len(), 3);
    assert_eq!(doc["levels"][2]["summary"]["load"]["rate"]["per_s"], 50.0);
    assert_eq!(doc["levels"][2]["summary"]["slo_attainment"], 1.0);
    for chart in [
        "ttft-cdf",
        "tpot-cdf",
        "e2e-cdf",
        "throughput-by-concurrency",
        "ttft-by-concurrency",
    ] {
        let svg = std::fs::read_to_string(dir.path().join(format!("charts/{chart}.svg")))
            .unwrap_or_else(|e| panic!("no {chart}.svg: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{chart}.svg draws no line"
        );
    }
    assert!(stdout.contains("| 50 req/s | 4 | 0 |"), "{stdout}");
    let refused = std::process::Command::new(specd_bin())
        .args([
            "loadtest",
            "--url",
            "http://192.0.2.1:8000",
            "--requests",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}

#[actix_rt::test]
async fn an_open_loop_sends_at_its_rate_whatever_the_answers_take() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let load = Load::Rate {
        per_s: 40.0,
        burstiness: 1.0,
    };
    let runs = sweep(&sweep_of(&serve, vec![load], 20, 24)).await.unwrap();
    let run = &runs[0];
    assert_eq!(run.records.len(), 20);
    assert!(run
        .records
        .iter()
        .all(|r| r.error.is_none() && r.output_tokens == 24));
    // Request i is sent at its scheduled arrival (the seeded gaps), not when an answer comes:
    // never early, and late only by its connection's opening.
    let gaps = specd_loadtest::open_loop::arrival_gaps(40.0, 1.0, 20, 3).unwrap();
    let mut due = 0.0;
    for (i, r) in run.records.iter().enumerate() {
        if i > 0 {
            due += gaps[i];
        }
        assert!(
            r.start_s >= due - 1e-3 && r.start_s < due + 0.5,
            "request {i} sent at {} s, due at {due} s",
            r.start_s
        );
    }
    let slo = Slo {
        ttft_ms: Some(60_000.0),
        ..Default::default()
    };
    let report = LevelReport::new(run, &slo);
    assert_eq!(report.load, load);
    assert_eq!(report.goodput_requests_per_s, report.requests_per_s);
}

#[actix_rt::test]
async fn connections_the_server_refuses_are_overloaded_requests_not_a_failed_run() {
    let models = Models::get();
    // Two connections at most: an open loop of long requests arriving fast goes over.
    let serve = Serve::start(&models, &[], &[("SPECD_LIMITS__MAX_CONNECTIONS", "2")]);
    let load = Load::Rate {
        per_s: 200.0,
        burstiness: 1.0,
    };
    let runs = sweep(&sweep_of(&serve, vec![load], 12, 1000))
        .await
        .unwrap();
    let records = &runs[0].records;
    assert_eq!(records.len(), 12);
    let refused: Vec<_> = records.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        !refused.is_empty(),
        "no connection was refused at a limit of 2"
    );
    assert!(
        refused
            .iter()
            .all(|r| r.error == Some(specd_protocol::ErrorCode::Overloaded)),
        "{refused:?}"
    );
    assert!(records
        .iter()
        .any(|r| r.error.is_none() && r.output_tokens == 1000));
    let report = LevelReport::new(&runs[0], &Slo::default());
    assert_eq!(report.errors.get("overloaded"), Some(&refused.len()));
}

#[actix_rt::test]
async fn the_openai_endpoints_streamed_are_measured_like_the_websocket() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let mut s = sweep_of(
        &serve,
        vec![
            Load::Clients(2),
            Load::Rate {
                per_s: 50.0,
                burstiness: 1.0,
            },
        ],
        4,
        16,
    );
    s.template.api = specd_loadtest::Api::Openai;
    // A text prompt (/v1/completions) and a chat (/v1/chat/completions).
    s.prompts = vec![
        Prompt::Text("hello world".into()),
        Prompt::Messages(vec![specd_protocol::Message::new("user", "hi")]),
    ];
    let runs = sweep(&s).await.unwrap();
    for run in &runs {
        assert_eq!(run.records.len(), 4, "{}", run.load);
        for r in &run.records {
            assert!(r.error.is_none(), "{r:?}");
            assert_eq!(r.output_tokens, 16, "{r:?}");
            assert_eq!(r.finish_reason, Some(FinishReason::Length), "{r:?}");
            let ttft = r.ttft_s.unwrap();
            assert!(ttft > 0.0 && ttft <= r.e2e_s, "{r:?}");
        }
        let server = LevelReport::new(run, &Slo::default())
            .server
            .expect("no /metrics delta");
        assert_eq!(
            (server.generated_tokens, server.requests),
            (64.0, 4.0),
            "{server:?}"
        );
    }
    // A refused body is a record with the server's error code.
    s.template.max_tokens = 1 << 30;
    s.loads = vec![Load::Clients(1)];
    s.requests = 1;
    let runs = sweep(&s).await.unwrap();
    assert_eq!(
        runs[0].records[0].error,
        Some(specd_protocol::ErrorCode::InvalidRequest),
        "{:?}",
        runs[0].records[0]
    );
}

#[actix_rt::test]
async fn a_soak_with_cancels_disconnects_and_slow_readers_keeps_the_invariants() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let s = specd_loadtest::Soak {
        target: Target::new(&format!("http://{}", serve.addr), None, false).unwrap(),
        prompts: vec![
            Prompt::Text("hello world".into()),
            Prompt::Text("the".into()),
        ],
        template: RequestTemplate {
            max_tokens: 200,
            ignore_eos: true,
            ..Default::default()
        },
        clients: 8,
        duration: Duration::from_secs(6),
        cancel_share: 0.25,
        disconnect_share: 0.25,
        slow_share: 0.25,
        // A 6 s run on the tiny models is too short to judge memory growth.
        max_rss_growth: f64::INFINITY,
        seed: 5,
    };
    let r = specd_loadtest::soak(&s).await.unwrap();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    for behaviour in ["normal", "cancel", "disconnect", "slow"] {
        assert!(
            r.requests.get(behaviour).is_some_and(|&n| n > 0),
            "no {behaviour} request: {r:?}"
        );
    }
    assert_eq!(r.kv_blocks_used_after, Some(0.0), "{r:?}");
    assert!(
        r.rss.len() >= 3 && r.rss.iter().all(|&(_, b)| b > 1e6),
        "{:?}",
        r.rss
    );
    assert!(r.rss_growth.is_some() && r.passed, "{r:?}");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}
