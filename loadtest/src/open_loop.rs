//! Open loop: requests arrive at a set rate whatever the server's speed (a Poisson process,
//! or burstier or smoother with gamma-distributed gaps, as vLLM's benchmark draws them), each on
//! its own connection, until a number of requests or a time is reached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

use crate::client::{Api, Connection, OpenError, RequestRecord, RequestTemplate, Target};
use crate::closed_loop::{LevelRun, Load};
use crate::prompts::Prompt;
use crate::sse::run_sse;

/// The gaps between arrivals, in seconds: gamma-distributed with mean 1 / `rate` and shape
/// `burstiness` (1: exponential, a Poisson process; below 1 burstier, above 1 more regular).
pub fn arrival_gaps(rate: f64, burstiness: f64, n: usize, seed: u64) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "--rate must be a positive number of requests per second, got {rate}"
    );
    anyhow::ensure!(
        burstiness.is_finite() && burstiness > 0.0,
        "--burstiness must be positive, got {burstiness}"
    );
    let gamma = Gamma::new(burstiness, 1.0 / (rate * burstiness))?;
    let mut rng = StdRng::seed_from_u64(seed);
    Ok((0..n).map(|_| gamma.sample(&mut rng)).collect())
}

/// Sends `requests` requests at `rate` per second (no new one after `max_duration`), prompt i
/// mod their number to request i, and waits for them all. A request's times start at its
/// arrival, so they include opening its connection; a connection the server refuses is a
/// request that failed with the refusal's code.
#[allow(clippy::too_many_arguments)]
pub async fn run_open(
    target: &Target,
    prompts: Arc<Vec<Prompt>>,
    template: &RequestTemplate,
    rate: f64,
    burstiness: f64,
    requests: usize,
    max_duration: Duration,
    seed: u64,
    progress: &ProgressBar,
) -> anyhow::Result<LevelRun> {
    anyhow::ensure!(!prompts.is_empty(), "no prompts");
    let gaps = arrival_gaps(rate, burstiness, requests, seed)?;
    // One connection first: a server that is down fails before the clock starts.
    drop(Connection::open(target).await?);
    let http = reqwest::Client::new();
    let records = Arc::new(Mutex::new(Vec::with_capacity(requests)));
    let start = Instant::now();
    let arrivals = Arrivals {
        target: target.clone(),
        prompts,
        template: template.clone(),
        http,
        records: records.clone(),
        progress: progress.clone(),
        start,
    };
    let mut due = Duration::ZERO;
    // Dropping the set (a failed request ends the level) aborts the requests in flight.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, gap) in gaps.into_iter().enumerate() {
        if i > 0 {
            due += Duration::from_secs_f64(gap);
        }
        if due >= max_duration {
            break;
        }
        let arrival = start + due;
        tokio::time::sleep_until(arrival.into()).await;
        tasks.spawn(arrivals.clone().request(i, arrival));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a request task panicked")??;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let mut records = std::mem::take(&mut *records.lock().unwrap());
    records.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    Ok(LevelRun {
        load: Load::Rate {
            per_s: rate,
            burstiness,
        },
        records,
        wall_s,
        server: None,
    })
}

/// What every request of an open-loop level needs, cloned into each request's task.
#[derive(Clone)]
struct Arrivals {
    target: Target,
    prompts: Arc<Vec<Prompt>>,
    template: RequestTemplate,
    http: reqwest::Client,
    /// The records of the requests that have ended.
    records: Arc<Mutex<Vec<RequestRecord>>>,
    progress: ProgressBar,
    /// The level's start.
    start: Instant,
}

impl Arrivals {
    /// Runs request `i`, which arrived at `arrival`, over the template's API and keeps its
    /// record.
    async fn request(self, i: usize, arrival: Instant) -> anyhow::Result<()> {
        let prompt = &self.prompts[i % self.prompts.len()];
        let rec = match self.template.api {
            Api::Openai => run_sse(
                &self.http,
                &self.target,
                prompt,
                &self.template,
                self.start,
                Some(arrival),
            )
            .await
            .with_context(|| format!("request r{i}"))?,
            Api::Ws => self.ws_request(i, prompt, arrival).await?,
        };
        self.records.lock().unwrap().push(rec);
        self.progress.inc(1);
        Ok(())
    }

    /// Request `i` over a connection of its own, opened at its arrival; a connection the
    /// server refuses is a refused request.
    async fn ws_request(
        &self,
        i: usize,
        prompt: &Prompt,
        arrival: Instant,
    ) -> anyhow::Result<RequestRecord> {
        match Connection::try_open(&self.target).await {
            // Times count from the arrival: connecting under load is part of the wait.
            Ok(mut conn) => conn
                .run(
                    &format!("r{i}"),
                    prompt,
                    &self.template,
                    self.start,
                    Some(arrival),
                )
                .await
                .with_context(|| format!("request r{i}")),
            // At its connection limit the server refuses the upgrade: a refused request.
            Err(OpenError::Refused(code, message)) => Ok(RequestRecord::refused(
                (arrival - self.start).as_secs_f64(),
                arrival.elapsed().as_secs_f64(),
                code,
                message,
            )),
            Err(OpenError::Failed(e)) => Err(e.context(format!("request r{i}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_have_the_rate_and_burstiness_asked_for() {
        let n = 20_000;
        for (rate, burst) in [(4.0, 1.0), (10.0, 0.5), (2.0, 4.0)] {
            let g = arrival_gaps(rate, burst, n, 7).unwrap();
            let mean = g.iter().sum::<f64>() / n as f64;
            let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            // Gamma(k, θ): mean kθ = 1/rate, squared coefficient of variation 1/k.
            assert!(
                (mean * rate - 1.0).abs() < 0.05,
                "rate {rate}: mean gap {mean}"
            );
            let cv2 = var / (mean * mean);
            assert!(
                (cv2 * burst - 1.0).abs() < 0.1,
                "burstiness {burst}: cv² {cv2}"
            );
        }
        assert_eq!(
            arrival_gaps(3.0, 1.0, 5, 1).unwrap(),
            arrival_gaps(3.0, 1.0, 5, 1).unwrap()
        );
        assert!(arrival_gaps(0.0, 1.0, 1, 1)
            .unwrap_err()
            .to_string()
            .contains("--rate"));
        assert!(arrival_gaps(1.0, -1.0, 1, 1)
            .unwrap_err()
            .to_string()
            .contains("--burstiness"));
    }
}
