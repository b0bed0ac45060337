//! The dashboard against a real Prometheus: `specd serve` on the tiny pair, Debian's
//! `prometheus` scraping it every second, the load tester driving it for about 20 s; then every
//! PromQL expression of dashboards/grafana/specd.json (template variables substituted) must
//! return at least one series, and `promtool check config` must pass on the shipped config.
//! scripts/test-deps installs Prometheus.

mod server;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use server::*;
use specd_loadtest::{sweep, Load, Prompt, RequestTemplate, Sweep, Target};
use specd_protocol::Method;

const DASHBOARD: &str = "dashboards/grafana/specd.json";
const SHIPPED_CONFIG: &str = "dashboards/prometheus/prometheus.yml";
/// What `$__rate_interval` becomes: several 1 s scrapes, and the whole load run.
const RATE_INTERVAL: &str = "40s";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn need(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "`{tool}` is not installed: run scripts/test-deps (it installs Debian's prometheus package)"
    );
}

/// A Prometheus on a free loopback port, scraping `target` every second, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: specd\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// GETs an API path; `None` while Prometheus is not up.
    async fn api(&self, path_and_query: &str) -> Option<Value> {
        let mut resp = http_client()
            .get(format!("{}{path_and_query}", self.url))
            .send()
            .await
            .ok()?;
        let body = resp.body().limit(1 << 24).await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    async fn query(&self, expr: &str) -> Value {
        let q = serde_urlencoded::to_string([("query", expr)]).unwrap();
        let v = self
            .api(&format!("/api/v1/query?{q}"))
            .await
            .expect("prometheus answered nothing");
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the dashboard's panels, with the panel's title.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$instance", ".*")
                // A concrete alternation, not `.*`: `=~".*"` would also match series
                // without the label, hiding a selector on a label that does not exist.
                .replace("$method", "draft|ngram");
            assert!(!expr.contains('$'), "a variable left unsubstituted: {expr}");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

#[test]
fn the_shipped_prometheus_config_passes_promtool() {
    need("promtool");
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo().join(SHIPPED_CONFIG))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    need("prometheus");
    need("promtool");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(DASHBOARD)).unwrap()).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());

    let models = Models::get();
    let serve = Serve::start(&models, &[], &[]);
    let prom = Prometheus::start(&serve.addr);
    let up = Instant::now();
    loop {
        let ready = prom.api("/api/v1/query?query=up").await;
        if ready.is_some_and(|v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        }) {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "prometheus did not start scraping within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // About 20 s of load: the draft model alone (it drafts at low load), then n-gram lookup
    // from two clients, then target-only from four; every level bounded by time.
    let prompts = vec![
        Prompt::Text("hello world".into()),
        Prompt::Text("the the the the".into()),
    ];
    for (method, clients) in [(Method::Draft, 1), (Method::Ngram, 2), (Method::None, 4)] {
        let s = Sweep {
            target: Target::new(&format!("http://{}", serve.addr), None, false).unwrap(),
            prompts: prompts.clone(),
            template: RequestTemplate {
                max_tokens: 48,
                method: Some(method),
                ignore_eos: true,
                ..Default::default()
            },
            loads: vec![Load::Clients(clients)],
            seed: 0,
            requests: 1_000_000,
            max_duration: Duration::from_secs(7),
            progress: false,
            fresh_prompts: false,
        };
        let runs = sweep(&s).await.unwrap();
        assert!(
            runs[0].records.iter().all(|r| r.error.is_none()),
            "{method}: a request failed"
        );
    }
    // Two more scrapes after the load.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut wrong = Vec::new();
    for (title, expr) in &exprs {
        let result = prom.query(expr).await;
        let series = result.as_array().cloned().unwrap_or_default();
        // Each series carries the labels the expression groups by (a misspelt label would
        // group everything into one series without it), and one at least has a number (a
        // ratio of two absent rates is NaN).
        let grouped: Vec<&str> = expr
            .split("by (")
            .skip(1)
            .flat_map(|rest| rest.split(')').next().unwrap_or("").split(','))
            .map(str::trim)
            .filter(|l| *l != "le")
            .collect();
        let labelled = series
            .iter()
            .all(|s| grouped.iter().all(|l| s["metric"].get(*l).is_some()));
        let finite = series.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if series.is_empty() || !labelled || !finite {
            wrong.push(format!("{title}: {expr} -> {result}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "dashboard queries without series, without their grouping labels, or only NaN:\n{}",
        wrong.join("\n")
    );
    // The template variables' values exist too.
    for (label, metric) in [
        ("instance", "specd_generated_tokens_total"),
        ("method", "specd_accepted_length_count"),
    ] {
        let q = serde_urlencoded::to_string([("match[]", metric)]).unwrap();
        let v = prom
            .api(&format!("/api/v1/label/{label}/values?{q}"))
            .await
            .unwrap();
        assert!(
            v["data"].as_array().is_some_and(|a| !a.is_empty()),
            "no values of ${label}: {v}"
        );
    }
}
