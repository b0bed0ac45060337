//! The load tester against a real `specd serve` process (the tiny pair, or the real one with
//! SPECD_E2E_MODEL / SPECD_E2E_DRAFT): as a library and as `specd loadtest`.

mod server;

use std::time::Duration;

use server::*;
use specd_loadtest::{sweep, LevelReport, Prompt, RequestTemplate, Sweep, Target};
use specd_protocol::{FinishReason, Method};

fn sweep_of(serve: &Serve, concurrency: Vec<usize>, requests: usize, tokens: usize) -> Sweep {
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
        concurrency,
        requests,
        max_duration: Duration::from_secs(300),
        progress: false,
    }
}

#[actix_rt::test]
async fn a_sweep_measures_every_request_and_its_speculation() {
    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let runs = sweep(&sweep_of(&serve, vec![1, 3], 6, 16)).await.unwrap();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run.records.len(), 6, "concurrency {}", run.concurrency);
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
            if run.concurrency == 1 {
                assert!(s.drafted > 0, "{s:?}");
            }
        }
        let report = LevelReport::new(run);
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
        concurrency: vec![1],
        requests: 1,
        max_duration: Duration::from_secs(10),
        progress: false,
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
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--max-tokens",
            "8",
            "--ignore-eos",
            "--speculation",
            "ngram",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| concurrency | requests | errors |"),
        "{stdout}"
    );
    assert!(stdout.contains("| 2 | 4 | 0 |"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let level = &doc["levels"][0];
    assert_eq!(level["summary"]["output_tokens"], 32, "{level}");
    assert_eq!(level["requests"].as_array().unwrap().len(), 4);
    assert_eq!(
        level["summary"]["speculation"]["methods"]["ngram"], 4,
        "{level}"
    );
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
