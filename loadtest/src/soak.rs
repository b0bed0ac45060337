//! Soak mode: many clients for a set time, some cancelling, some dropping their connection
//! mid-stream, some reading slowly, while the server's memory is watched. It checks what a
//! long-running server must keep true: every stream ends with exactly one final frame, the KV
//! cache returns to zero blocks once the clients are gone, and the resident memory stays flat.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
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
        tasks.spawn(async move { Client::new(&s, c, &report).run(deadline).await });
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

impl Behaviour {
    /// The behaviour that `x`, drawn uniformly from [0, 1), picks under the soak's shares.
    fn draw(x: f64, s: &Soak) -> Self {
        if x < s.cancel_share {
            Behaviour::Cancel
        } else if x < s.cancel_share + s.disconnect_share {
            Behaviour::Disconnect
        } else if x < s.cancel_share + s.disconnect_share + s.slow_share {
            Behaviour::Slow
        } else {
            Behaviour::Normal
        }
    }

    /// At request `id`'s first chunk: a cancelling request sends its cancel, a disconnecting
    /// one gives its connection up (`Break`).
    async fn at_first_chunk(
        self,
        conn: &mut Connection,
        id: &str,
    ) -> anyhow::Result<ControlFlow<()>> {
        match self {
            Behaviour::Cancel => {
                conn.send(&ClientFrame::Cancel(CancelFrame { id: id.to_string() }))
                    .await?;
                Ok(ControlFlow::Continue(()))
            }
            Behaviour::Disconnect => {
                // Abrupt: the socket is dropped without a close frame.
                conn.broken = true;
                Ok(ControlFlow::Break(()))
            }
            Behaviour::Normal | Behaviour::Slow => Ok(ControlFlow::Continue(())),
        }
    }
}

/// One soak client, and what it keeps from one request to the next.
struct Client<'a> {
    s: &'a Soak,
    /// The client's number: it seeds its draws and names its requests.
    c: usize,
    report: &'a Mutex<SoakReport>,
    rng: StdRng,
    /// The connection kept for the next request (none before the first, or after one broke).
    conn: Option<Connection>,
    /// The requests of the current connection that have had their final frame.
    ended: Vec<String>,
    /// Requests sent so far.
    sent: usize,
}

impl<'a> Client<'a> {
    /// Client number `c` of the soak `s`, before its first request.
    fn new(s: &'a Soak, c: usize, report: &'a Mutex<SoakReport>) -> Self {
        Self {
            s,
            c,
            report,
            rng: StdRng::seed_from_u64(s.seed.wrapping_add(c as u64)),
            conn: None,
            ended: Vec::new(),
            sent: 0,
        }
    }

    /// Requests one after another until the deadline, each with a drawn behaviour.
    async fn run(mut self, deadline: Instant) -> anyhow::Result<()> {
        while Instant::now() < deadline {
            let behaviour = Behaviour::draw(self.rng.random(), self.s);
            let Some(mut conn) = self.connection().await? else {
                continue;
            };
            self.request(&mut conn, behaviour).await?;
            if !conn.broken {
                self.conn = Some(conn);
            }
        }
        Ok(())
    }

    /// The connection for the next request: the kept one, else a new one. A refusal (the
    /// server at its connection limit, where a dropped connection may not be released yet) is
    /// counted and waited out for 100 ms, and gives `None`: try again.
    async fn connection(&mut self) -> anyhow::Result<Option<Connection>> {
        if let Some(conn) = self.conn.take().filter(|conn| !conn.broken) {
            return Ok(Some(conn));
        }
        self.ended.clear();
        match Connection::try_open(&self.s.target).await {
            Ok(conn) => Ok(Some(conn)),
            Err(OpenError::Refused(code, _)) => {
                self.tally(|r| &mut r.refused_connections, code.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(None)
            }
            Err(OpenError::Failed(e)) => Err(e),
        }
    }

    /// Sends the next request on `conn`, counted under its behaviour, and reads its stream.
    async fn request(&mut self, conn: &mut Connection, behaviour: Behaviour) -> anyhow::Result<()> {
        let id = format!("c{}-r{}", self.c, self.sent);
        self.sent += 1;
        let prompt = &self.s.prompts[(self.c + self.sent) % self.s.prompts.len()];
        conn.send(&self.s.template.frame(&id, prompt)).await?;
        self.tally(|r| &mut r.requests, format!("{behaviour:?}").to_lowercase());
        self.read_stream(conn, &id, behaviour).await
    }

    /// Reads the frames of request `id` up to its final one (or until the connection is given
    /// up), checking that each is the request's own, and acts `behaviour` out.
    async fn read_stream(
        &mut self,
        conn: &mut Connection,
        id: &str,
        behaviour: Behaviour,
    ) -> anyhow::Result<()> {
        let mut chunks = 0usize;
        loop {
            if behaviour == Behaviour::Slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let frame = conn.next().await?;
            let (fid, last) = addressee(&frame);
            if fid != Some(id) {
                self.stray_frame(id, fid, &frame);
                if matches!(frame, ServerFrame::Error(_)) {
                    conn.broken = true;
                    return Ok(());
                }
                continue;
            }
            if last {
                self.final_frame(id, &frame);
                return Ok(());
            }
            chunks += 1;
            if chunks == 1 && behaviour.at_first_chunk(conn, id).await?.is_break() {
                return Ok(());
            }
        }
    }

    /// Records the violation of a frame that is not request `id`'s: one of a request that had
    /// ended, or of another one (`fid`).
    fn stray_frame(&self, id: &str, fid: Option<&str>, frame: &ServerFrame) {
        let what = match fid {
            Some(f) if self.ended.iter().any(|e| e == f) => {
                format!("{f}: a frame after its final frame")
            }
            other => format!("{id}: a frame of another request ({other:?}): {frame:?}"),
        };
        self.report.lock().unwrap().violations.push(what);
    }

    /// Request `id`'s final frame: an error is counted by its code, and the request has ended.
    fn final_frame(&mut self, id: &str, frame: &ServerFrame) {
        if let ServerFrame::Error(e) = frame {
            self.tally(|r| &mut r.errors, e.code.to_string());
        }
        self.ended.push(id.to_string());
    }

    /// Adds one to `key` in the report's count that `count` picks.
    fn tally(&self, count: fn(&mut SoakReport) -> &mut BTreeMap<String, usize>, key: String) {
        *count(&mut self.report.lock().unwrap())
            .entry(key)
            .or_default() += 1;
    }
}

/// The request a frame belongs to (none for `hello` and an error of no request), and whether
/// it is that request's last.
fn addressee(frame: &ServerFrame) -> (Option<&str>, bool) {
    match frame {
        ServerFrame::Chunk(f) => (Some(&f.id), false),
        ServerFrame::Done(f) => (Some(&f.id), true),
        ServerFrame::Error(f) => (f.id.as_deref(), true),
        ServerFrame::Hello(_) => (None, false),
    }
}
