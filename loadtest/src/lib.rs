//! specd-loadtest: drives a running specd over its WebSocket protocol (the shared types of
//! `specd-protocol`) and reports what a client sees: time to first token, time per output
//! token, the gaps between chunks, end-to-end latency, throughput, errors by code and the
//! speculation figures of the `done` frames.
//!
//! What exists: the closed loop (a sweep of fixed concurrencies, bounded in requests and time,
//! loopback unless told otherwise), prompts from a JSONL file or the built-in code set, a
//! Markdown table and a JSON report. Still to come (issue 13): OpenAI SSE, the open loop,
//! SLO goodput, `/metrics` deltas, charts and the soak mode.

pub mod cli;
pub mod client;
pub mod closed_loop;
pub mod prompts;
pub mod report;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub use client::{Connection, RequestRecord, RequestTemplate, Target};
pub use closed_loop::{Level, LevelRun};
pub use prompts::Prompt;
pub use report::{table, LevelReport};
pub use stats::{median, quantile, summarize, Summary};

/// A closed-loop sweep: the same requests at each concurrency in turn.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub target: Target,
    pub prompts: Vec<Prompt>,
    pub template: RequestTemplate,
    pub concurrency: Vec<usize>,
    /// Requests per level.
    pub requests: usize,
    /// Per level: no request starts after this.
    pub max_duration: Duration,
    /// Draw a progress bar on the terminal (hidden when stderr is not one).
    pub progress: bool,
}

/// Runs the sweep; a level's records stay in its [`LevelRun`].
pub async fn sweep(s: &Sweep) -> anyhow::Result<Vec<LevelRun>> {
    anyhow::ensure!(s.requests >= 1, "--requests must be at least 1");
    anyhow::ensure!(!s.concurrency.is_empty(), "give at least one concurrency");
    let prompts = Arc::new(s.prompts.clone());
    let mut runs = Vec::new();
    for &concurrency in &s.concurrency {
        let bar = if s.progress {
            ProgressBar::new(s.requests as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} requests, {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("concurrency {concurrency}"));
        let level = Level {
            concurrency,
            requests: s.requests,
            max_duration: s.max_duration,
        };
        let run =
            closed_loop::run_level(&s.target, prompts.clone(), &s.template, &level, &bar).await?;
        bar.finish_and_clear();
        runs.push(run);
    }
    Ok(runs)
}
