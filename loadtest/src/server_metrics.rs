//! The server's own count of a level: `/metrics` read before and after it, and the difference
//! of the counters that matter to a load test. It checks the load tester's figures against the
//! server's (when the load tester is the server's only client they agree exactly).

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;

/// Counters summed over their labels, by metric name.
pub type Counters = HashMap<String, f64>;

/// Reads `/metrics` at `base` (`http://host:port`).
pub async fn scrape(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
) -> anyhow::Result<Counters> {
    let mut req = client.get(format!("{base}/metrics"));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("GET {base}/metrics"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading /metrics")?;
    anyhow::ensure!(status.is_success(), "GET {base}/metrics: HTTP {status}");
    Ok(parse(&text))
}

/// Sums each metric's samples over their labels (Prometheus text format; comments skipped).
pub fn parse(text: &str) -> Counters {
    let mut out = Counters::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// What the server counted during a level.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsDelta {
    pub generated_tokens: f64,
    pub requests: f64,
    pub drafted: f64,
    pub accepted: f64,
    /// accepted / drafted, as the server counted them.
    pub acceptance_rate: f64,
    pub preemptions: f64,
}

impl MetricsDelta {
    pub fn between(before: &Counters, after: &Counters) -> Self {
        let d = |name: &str| {
            after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
        };
        let (drafted, accepted) = (
            d("specd_spec_draft_tokens_total"),
            d("specd_spec_accepted_tokens_total"),
        );
        Self {
            generated_tokens: d("specd_generated_tokens_total"),
            requests: d("specd_requests_total"),
            drafted,
            accepted,
            acceptance_rate: if drafted > 0.0 {
                accepted / drafted
            } else {
                0.0
            },
            preemptions: d("specd_preemptions_total"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_labels_and_deltas_subtract() {
        let before = parse(
            "# HELP specd_requests_total x\n# TYPE specd_requests_total counter\n\
             specd_requests_total{finish_reason=\"length\",error_code=\"none\"} 3\n\
             specd_spec_draft_tokens_total{method=\"draft\"} 10\n",
        );
        let after = parse(
            "specd_requests_total{finish_reason=\"length\",error_code=\"none\"} 5\n\
             specd_requests_total{finish_reason=\"error\",error_code=\"overloaded\"} 1\n\
             specd_spec_draft_tokens_total{method=\"draft\"} 30\nspecd_spec_draft_tokens_total{method=\"ngram\"} 10\n\
             specd_spec_accepted_tokens_total{method=\"draft\"} 15\nspecd_generated_tokens_total 42\n",
        );
        let d = MetricsDelta::between(&before, &after);
        assert_eq!(d.requests, 3.0);
        assert_eq!((d.drafted, d.accepted), (30.0, 15.0));
        assert_eq!(d.acceptance_rate, 0.5);
        assert_eq!(d.generated_tokens, 42.0);
        assert_eq!(d.preemptions, 0.0);
    }
}
