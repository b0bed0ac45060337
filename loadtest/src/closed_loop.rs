//! Closed loop: a fixed number of clients, each sending its next request as soon as the last
//! one ended, for a bounded number of requests and time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;

use crate::client::{Api, Connection, RequestRecord, RequestTemplate, Target};
use crate::prompts::Prompt;
use crate::sse::run_sse;

/// One concurrency level of a sweep.
#[derive(Debug, Clone)]
pub struct Level {
    /// Clients, each on its own connection with one request in flight.
    pub concurrency: usize,
    /// Requests in all (the level ends when they have all ended).
    pub requests: usize,
    /// No request starts after this much time (those in flight finish).
    pub max_duration: Duration,
}

/// How a level loads the server.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// Closed loop: this many clients, one request in flight each.
    Clients(usize),
    /// Open loop: arrivals at `per_s` requests per second (gaps of shape `burstiness`).
    Rate { per_s: f64, burstiness: f64 },
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Clients(n) => write!(f, "{n} clients"),
            Load::Rate { per_s, burstiness } if *burstiness == 1.0 => write!(f, "{per_s} req/s"),
            Load::Rate { per_s, burstiness } => write!(f, "{per_s} req/s, burstiness {burstiness}"),
        }
    }
}

/// What a level measured.
#[derive(Debug, Clone)]
pub struct LevelRun {
    pub load: Load,
    pub records: Vec<RequestRecord>,
    /// From the first request's start to the last one's end.
    pub wall_s: f64,
    /// What the server's `/metrics` counted during the level, when it could be read.
    pub server: Option<crate::server_metrics::MetricsDelta>,
}

/// Runs one level against `target`. Prompts are taken in turn (request i gets prompt
/// i mod their number), so that every level sends the same ones.
pub async fn run_level(
    target: &Target,
    prompts: Arc<Vec<Prompt>>,
    template: &RequestTemplate,
    level: &Level,
    progress: &ProgressBar,
) -> anyhow::Result<LevelRun> {
    anyhow::ensure!(level.concurrency >= 1, "concurrency must be at least 1");
    anyhow::ensure!(!prompts.is_empty(), "no prompts");
    // WebSocket connections first, so that connecting is not timed and a server that is down
    // fails before anything is sent.
    let mut connections = Vec::with_capacity(level.concurrency);
    for _ in 0..level.concurrency {
        connections.push(match template.api {
            Api::Ws => Some(Connection::open(target).await?),
            Api::Openai => None,
        });
    }
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let records = Arc::new(Mutex::new(Vec::with_capacity(level.requests)));
    let start = Instant::now();
    // Dropping the set (a failed request ends the level) aborts the other clients.
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in connections {
        let http = http.clone();
        let (next, records, prompts) = (next.clone(), records.clone(), prompts.clone());
        let (template, level, progress) = (template.clone(), level.clone(), progress.clone());
        let target = target.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= level.requests || start.elapsed() >= level.max_duration {
                    return anyhow::Ok(());
                }
                let prompt = &prompts[i % prompts.len()];
                let rec = match conn.as_mut() {
                    Some(c) => {
                        if c.broken {
                            *c = Connection::open(&target).await?;
                        }
                        c.run(&format!("r{i}"), prompt, &template, start, None)
                            .await
                    }
                    None => run_sse(&http, &target, prompt, &template, start, None).await,
                }
                .with_context(|| format!("request r{i}"))?;
                records.lock().unwrap().push(rec);
                progress.inc(1);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a client task panicked")??;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let mut records = std::mem::take(&mut *records.lock().unwrap());
    records.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    Ok(LevelRun {
        load: Load::Clients(level.concurrency),
        records,
        wall_s,
        server: None,
    })
}
