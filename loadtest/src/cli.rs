//! The command line, shared by `specd-loadtest` and `specd loadtest`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use specd_protocol::Method;

use crate::{
    prompts, sweep, table, Api, LevelReport, Load, RequestTemplate, Slo, Soak, Sweep, Target,
};

/// The load tester's options (`specd-loadtest` and `specd loadtest`).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// The server (`http://HOST:PORT`; loopback only unless --allow-remote).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// How requests reach the server: `ws` (the WebSocket protocol) or `openai` (the OpenAI
    /// endpoints, streamed as Server-Sent Events).
    #[arg(long, value_enum, default_value = "ws")]
    pub api: Api,
    /// Allow a server that is not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// The server's API key (or SPECD_API_KEY).
    #[arg(long, env = "SPECD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Closed loop: comma-separated concurrencies (clients with one request in flight each),
    /// run in turn [default: 1,2,4,8 when no --rate is given].
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Open loop: comma-separated arrival rates in requests per second, run after the
    /// concurrencies.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Shape of the open loop's gamma-distributed gaps: 1 is a Poisson process, below 1
    /// burstier, above 1 more regular.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Seed of the open loop's arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests per level (concurrency or rate).
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// Seconds per level after which no request starts.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    /// A JSONL file of prompts (`{"prompt": ...}` or `{"messages": [...]}` per line); default:
    /// the built-in twenty code prompts.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Give every request a prompt of its own (a last line naming the level and the request
    /// appended), so that the server's prefix cache serves what prompts share, not whole
    /// prompts repeated from earlier requests: each arrival's prompt is then prefilled, as new
    /// conversations are.
    #[arg(long)]
    pub fresh_prompts: bool,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature (the server's default when not given).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// The speculation method (the server's default when not given).
    #[arg(long, value_enum)]
    pub speculation: Option<Method>,
    /// Most tokens drafted per step.
    #[arg(long)]
    pub max_draft: Option<usize>,
    /// Generate max_tokens for every request, past end-of-text (comparable runs).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Soak mode instead of a sweep: this many seconds of --concurrency clients (the first value;
    /// 16 if none) mixing cancels, abrupt disconnects and slow readers; fails unless every stream
    /// ended with one final frame, the KV cache came back to zero blocks and the server's
    /// resident memory grew at most --max-rss-growth.
    #[arg(long)]
    pub soak_seconds: Option<u64>,
    /// Soak: share of requests cancelled after their first chunk.
    #[arg(long, default_value_t = 0.1)]
    pub cancel_share: f64,
    /// Soak: share of requests whose connection is dropped after their first chunk.
    #[arg(long, default_value_t = 0.1)]
    pub disconnect_share: f64,
    /// Soak: share of requests read slowly (20 ms per frame).
    #[arg(long, default_value_t = 0.1)]
    pub slow_share: f64,
    /// Soak: largest growth of the server's resident memory from the run's first third to its
    /// last.
    #[arg(long, default_value_t = 0.1)]
    pub max_rss_growth: f64,
    /// Goodput counts requests whose time to first token is at most this many ms.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// ... and whose time per output token is at most this many ms.
    #[arg(long)]
    pub slo_tpot_ms: Option<f64>,
    /// ... and whose end-to-end latency is at most this many ms.
    #[arg(long)]
    pub slo_e2e_ms: Option<f64>,
    /// Also draw charts here (SVG): latency CDFs per level, and throughput and TTFT against
    /// concurrency (with two or more concurrencies).
    #[arg(long)]
    pub charts: Option<PathBuf>,
    /// Also write the report (every level, with its requests' records) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the sweep `a` describes, prints its table and writes its JSON report (or, with
/// --soak-seconds, runs the soak instead and prints its summary).
pub fn run(a: LoadtestArgs) -> anyhow::Result<()> {
    let s = sweep_of(&a)?;
    match a.soak_seconds {
        Some(seconds) => run_soak(&a, &soak_of(&a, &s, seconds)),
        None => run_sweep(&a, &s),
    }
}

/// The sweep `a` describes: its prompts (read first), target, request template and levels.
fn sweep_of(a: &LoadtestArgs) -> anyhow::Result<Sweep> {
    let prompts = match &a.prompts {
        Some(p) => prompts::from_jsonl(p)?,
        None => prompts::built_in(),
    };
    Ok(Sweep {
        target: Target::new(&a.url, a.api_key.clone(), a.allow_remote)?,
        prompts,
        template: RequestTemplate {
            api: a.api,
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            method: a.speculation,
            max_draft: a.max_draft,
            ignore_eos: a.ignore_eos,
        },
        loads: loads(a),
        seed: a.seed,
        requests: a.requests,
        max_duration: Duration::from_secs(a.max_seconds),
        progress: true,
        fresh_prompts: a.fresh_prompts,
    })
}

/// The soak of `seconds` that `a` describes, against the sweep's target with its prompts and
/// template: as many clients as the first concurrency (16 if none).
fn soak_of(a: &LoadtestArgs, s: &Sweep, seconds: u64) -> Soak {
    Soak {
        target: s.target.clone(),
        prompts: s.prompts.clone(),
        template: s.template.clone(),
        clients: a.concurrency.first().copied().unwrap_or(16),
        duration: Duration::from_secs(seconds),
        cancel_share: a.cancel_share,
        disconnect_share: a.disconnect_share,
        slow_share: a.slow_share,
        max_rss_growth: a.max_rss_growth,
        seed: a.seed,
    }
}

/// Runs the soak, prints its report (the memory samples as their count) and writes it whole
/// as JSON where --json asks; an error unless it passed.
fn run_soak(a: &LoadtestArgs, soak: &Soak) -> anyhow::Result<()> {
    let rt = runtime()?;
    let r = rt.block_on(crate::soak(soak))?;
    let mut summary = serde_json::to_value(&r)?;
    summary["rss"] = serde_json::json!(r.rss.len());
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &a.json {
        write_json(path, &r)?;
    }
    anyhow::ensure!(
        r.passed,
        "the soak failed: see violations, kv_blocks_used_after and rss_growth above"
    );
    Ok(())
}

/// Runs the sweep, prints its table and draws its charts and writes its JSON report where
/// --charts and --json ask.
fn run_sweep(a: &LoadtestArgs, s: &Sweep) -> anyhow::Result<()> {
    let rt = runtime()?;
    let runs = rt.block_on(sweep(s))?;
    let slo = Slo {
        ttft_ms: a.slo_ttft_ms,
        tpot_ms: a.slo_tpot_ms,
        e2e_ms: a.slo_e2e_ms,
    };
    let reports: Vec<LevelReport> = runs.iter().map(|r| LevelReport::new(r, &slo)).collect();
    print!("{}", table(&reports));
    if let Some(dir) = &a.charts {
        for path in crate::charts::write_charts(dir, &runs, &reports)? {
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(path) = &a.json {
        let levels: Vec<_> = reports
            .iter()
            .zip(&runs)
            .map(|(r, run)| serde_json::json!({"summary": r, "requests": run.records}))
            .collect();
        let doc = serde_json::json!({"url": s.target.ws_url, "max_tokens": a.max_tokens, "slo": slo, "levels": levels});
        write_json(path, &doc)?;
    }
    Ok(())
}

/// The multi-threaded runtime a run is driven on.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Writes `doc` to `path` as pretty-printed JSON.
fn write_json(path: &Path, doc: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The levels: the concurrencies, then the rates (1, 2, 4, 8 clients when neither is given).
fn loads(a: &LoadtestArgs) -> Vec<Load> {
    let mut loads: Vec<Load> = a.concurrency.iter().map(|&n| Load::Clients(n)).collect();
    loads.extend(a.rate.iter().map(|&per_s| Load::Rate {
        per_s,
        burstiness: a.burstiness,
    }));
    if loads.is_empty() {
        loads = [1, 2, 4, 8].map(Load::Clients).to_vec();
    }
    loads
}
