//! specd-loadtest: drives a running specd over its WebSocket protocol (the shared types of
//! `specd-protocol`) or its OpenAI endpoints streamed as Server-Sent Events and reports what a client sees: time to first token, time per output
//! token, the gaps between chunks, end-to-end latency, throughput, errors by code and the
//! speculation figures of the `done` frames.
//!
//! What exists: the closed loop (a sweep of fixed concurrencies) and the open loop (Poisson or
//! gamma arrivals at a rate), each bounded in requests and time and loopback unless told
//! otherwise; prompts from a JSONL file or the built-in code set; goodput under optional SLOs;
//! the server's own counts from `/metrics` around each level; a Markdown table, a JSON report
//! and SVG charts. A soak mode checks a long run's invariants.

pub mod charts;
pub mod cli;
pub mod client;
pub mod closed_loop;
pub mod open_loop;
pub mod prompts;
pub mod report;
pub mod server_metrics;
pub mod soak;
pub mod sse;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub use client::{Api, Connection, RequestRecord, RequestTemplate, Target};
pub use closed_loop::{Level, LevelRun, Load};
pub use prompts::Prompt;
pub use report::{table, LevelReport, Slo};
pub use soak::{soak, Soak, SoakReport};
pub use stats::{median, quantile, summarize, Summary};

/// A sweep: the same requests at each load in turn.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub target: Target,
    pub prompts: Vec<Prompt>,
    pub template: RequestTemplate,
    pub loads: Vec<Load>,
    /// Seeds the open loop's arrival times.
    pub seed: u64,
    /// Requests per level.
    pub requests: usize,
    /// Per level: no request starts after this.
    pub max_duration: Duration,
    /// Draw a progress bar on the terminal (hidden when stderr is not one).
    pub progress: bool,
    /// Give every request a prompt of its own ([`prompts::made_unique`]), so that the
    /// server's prefix cache does not serve whole repeated prompts.
    pub fresh_prompts: bool,
}

/// Runs the sweep; a level's records stay in its [`LevelRun`].
pub async fn sweep(s: &Sweep) -> anyhow::Result<Vec<LevelRun>> {
    anyhow::ensure!(s.requests >= 1, "--requests must be at least 1");
    anyhow::ensure!(
        !s.loads.is_empty(),
        "give at least one load (--concurrency or --rate)"
    );
    anyhow::ensure!(!s.prompts.is_empty(), "no prompts");
    let http = reqwest::Client::new();
    let mut runs = Vec::new();
    for (l, &load) in s.loads.iter().enumerate() {
        let prompts = Arc::new(prompts::for_level(
            &s.prompts,
            s.requests,
            l,
            s.fresh_prompts,
        ));
        let bar = if s.progress {
            ProgressBar::new(s.requests as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} requests, {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(load.to_string());
        // The server's counters around the level (None where /metrics cannot be read).
        let base = s.target.http_base();
        let before = server_metrics::scrape(&http, &base, s.target.api_key.as_deref())
            .await
            .ok();
        let mut run = match load {
            Load::Clients(concurrency) => {
                let level = Level {
                    concurrency,
                    requests: s.requests,
                    max_duration: s.max_duration,
                };
                closed_loop::run_level(&s.target, prompts.clone(), &s.template, &level, &bar)
                    .await?
            }
            Load::Rate { per_s, burstiness } => {
                open_loop::run_open(
                    &s.target,
                    prompts.clone(),
                    &s.template,
                    per_s,
                    burstiness,
                    s.requests,
                    s.max_duration,
                    s.seed,
                    &bar,
                )
                .await?
            }
        };
        bar.finish_and_clear();
        if let Some(before) = before {
            let after = server_metrics::scrape(&http, &base, s.target.api_key.as_deref()).await;
            run.server = after
                .ok()
                .map(|a| server_metrics::MetricsDelta::between(&before, &a));
        }
        runs.push(run);
    }
    Ok(runs)
}
