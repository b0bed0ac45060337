//! Soak mode: many clients for a set time, some cancelling, some dropping their connection
//! mid-stream, some reading slowly, while the server's memory is watched. It checks what a
//! long-running server must keep true: every stream ends with exactly one final frame, the KV
//! cache returns to zero blocks once the clients are gone, and the resident memory stays flat.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use specd_protocol::{CancelFrame, ClientFrame, ServerFrame};

use crate::client::{Connection, OpenError, RequestTemplate, Target};
use crate::prompts::Prompt;
use crate::server_metrics::scrape;

/// A soak run.
#[derive(Debug, Clone)]
pub struct Soak {
    pub target: Target,
    pub prompts: Vec<Prompt>,
    pub template: RequestTemplate,
    pub clients: usize,
    pub duration: Duration,
    /// Shares of requests that are cancelled after their first chunk, whose connection is
    /// dropped after their first chunk, and that are read slowly (20 ms per frame).
    pub cancel_share: f64,
    pub disconnect_share: f64,
    pub slow_share: f64,
    /// Largest growth of the resident memory allowed, from the first third of the run to the
    /// last (0.1: 10 %).
    pub max_rss_growth: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Behaviour {
    Normal,
    Cancel,
    Disconnect,
    Slow,
}

/// What a soak run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    /// Requests sent, by behaviour.
    pub requests: BTreeMap<String, usize>,
    /// Requests that ended with an error frame, by code.
    pub errors: BTreeMap<String, usize>,
    /// Connections the server refused (at its connection limit), by code.
    pub refused_connections: BTreeMap<String, usize>,
    /// Broken invariants: a stream with no final frame or a second one, a frame for a request
    /// that had ended.
    pub violations: Vec<String>,
    /// KV blocks in use once the clients were gone (`specd_kv_cache_blocks_used`).
    pub kv_blocks_used_after: Option<f64>,
    /// (seconds, bytes) of the server's resident memory, read from `/metrics` every second.
    pub rss: Vec<(f64, f64)>,
    /// Mean resident memory of the last third over the first third, minus 1.
    pub rss_growth: Option<f64>,
    pub passed: bool,
}

/// Runs the soak and checks its invariants.
pub async fn soak(s: &Soak) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(
        s.clients >= 1 && !s.prompts.is_empty(),
        "a soak needs clients and prompts"
    );
    drop(Connection::open(&s.target).await?);
    let report = Arc::new(Mutex::new(SoakReport::default()));
    let start = Instant::now();
    let deadline = start + s.duration;
    let http = reqwest::Client::new();
    let base = s.target.http_base();
    let key = s.target.api_key.clone();
    let watcher = {
        let (http, base, key, report) = (http.clone(), base.clone(), key.clone(), report.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(c) = scrape(&http, &base, key.as_deref()).await {
                    if let Some(&rss) = c.get("specd_process_resident_memory_bytes") {
                        report
                            .lock()
                            .unwrap()
                            .rss
                            .push((start.elapsed().as_secs_f64(), rss));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..s.clients {
        let (s, report) = (s.clone(), report.clone());
        tasks.spawn(async move { client(&s, c, deadline, &report).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    watcher.await?;
    // Once the clients are gone the engine frees every block (dropped connections included).
    let mut kv = None;
    for _ in 0..100 {
        let c = scrape(&http, &base, key.as_deref()).await?;
        kv = c.get("specd_kv_cache_blocks_used").copied();
        if kv == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut r = std::mem::take(&mut *report.lock().unwrap());
    r.seconds = start.elapsed().as_secs_f64();
    r.kv_blocks_used_after = kv;
    let third = r.rss.len() / 3;
    if third >= 1 {
        let mean = |v: &[(f64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
        r.rss_growth = Some(mean(&r.rss[r.rss.len() - third..]) / mean(&r.rss[..third]) - 1.0);
    }
    r.passed = r.violations.is_empty()
        && r.kv_blocks_used_after == Some(0.0)
        && r.rss_growth.is_none_or(|g| g <= s.max_rss_growth);
    Ok(r)
}

/// One client: requests one after another until the deadline, each with a drawn behaviour.
async fn client(
    s: &Soak,
    c: usize,
    deadline: Instant,
    report: &Mutex<SoakReport>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(s.seed.wrapping_add(c as u64));
    let mut conn: Option<Connection> = None;
    let mut ended: Vec<String> = Vec::new();
    let mut n = 0usize;
    while Instant::now() < deadline {
        let x: f64 = rng.random();
        let behaviour = if x < s.cancel_share {
            Behaviour::Cancel
        } else if x < s.cancel_share + s.disconnect_share {
            Behaviour::Disconnect
        } else if x < s.cancel_share + s.disconnect_share + s.slow_share {
            Behaviour::Slow
        } else {
            Behaviour::Normal
        };
        let mut c_conn = match conn.take() {
            Some(cn) if !cn.broken => cn,
            _ => {
                ended.clear();
                match Connection::try_open(&s.target).await {
                    Ok(cn) => cn,
                    // At its connection limit the server refuses new ones (a dropped
                    // connection may not be released yet): counted, then tried again.
                    Err(OpenError::Refused(code, _)) => {
                        *report
                            .lock()
                            .unwrap()
                            .refused_connections
                            .entry(code.to_string())
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(OpenError::Failed(e)) => return Err(e),
                }
            }
        };
        let id = format!("c{c}-r{n}");
        n += 1;
        let prompt = &s.prompts[(c + n) % s.prompts.len()];
        c_conn.send(&s.template.frame(&id, prompt)).await?;
        *report
            .lock()
            .unwrap()
            .requests
            .entry(format!("{behaviour:?}").to_lowercase())
            .or_default() += 1;
        let mut chunks = 0usize;
        let mut cancelled = false;
        loop {
            if behaviour == Behaviour::Slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let frame = c_conn.next().await?;
            let (fid, last) = match &frame {
                ServerFrame::Chunk(f) => (Some(f.id.clone()), false),
                ServerFrame::Done(f) => (Some(f.id.clone()), true),
                ServerFrame::Error(f) => (f.id.clone(), true),
                ServerFrame::Hello(_) => (None, false),
            };
            if fid.as_deref() != Some(id.as_str()) {
                let what = match fid {
                    Some(f) if ended.contains(&f) => format!("{f}: a frame after its final frame"),
                    other => format!("{id}: a frame of another request ({other:?}): {frame:?}"),
                };
                report.lock().unwrap().violations.push(what);
                if matches!(frame, ServerFrame::Error(_)) {
                    c_conn.broken = true;
                    break;
                }
                continue;
            }
            if last {
                if let ServerFrame::Error(e) = &frame {
                    *report
                        .lock()
                        .unwrap()
                        .errors
                        .entry(e.code.to_string())
                        .or_default() += 1;
                }
                ended.push(id.clone());
                break;
            }
            chunks += 1;
            if chunks == 1 && behaviour == Behaviour::Cancel && !cancelled {
                c_conn
                    .send(&ClientFrame::Cancel(CancelFrame { id: id.clone() }))
                    .await?;
                cancelled = true;
            }
            if chunks == 1 && behaviour == Behaviour::Disconnect {
                // Abrupt: the socket is dropped without a close frame.
                c_conn.broken = true;
                break;
            }
        }
        if !c_conn.broken {
            conn = Some(c_conn);
        }
    }
    Ok(())
}
