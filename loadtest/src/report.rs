//! A level's figures, from its requests' records: what the table and the JSON report hold.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::client::RequestRecord;
use crate::closed_loop::{LevelRun, Load};
use crate::stats::{summarize, Summary};

/// One level of a sweep, summarized. Latencies are milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub load: Load,
    pub requests: usize,
    pub succeeded: usize,
    /// Failed requests by error code.
    pub errors: BTreeMap<String, usize>,
    pub wall_s: f64,
    pub output_tokens: usize,
    /// Output tokens per second of the level's wall time, all clients together.
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    /// Requests per second that succeeded within every SLO given (all that succeeded when
    /// none is).
    pub goodput_requests_per_s: f64,
    /// Share of the requests that met every SLO.
    pub slo_attainment: f64,
    pub ttft_ms: Option<Summary>,
    /// Time per output token after the first, per request.
    pub tpot_ms: Option<Summary>,
    /// Gaps between successive chunks, over every request.
    pub itl_ms: Option<Summary>,
    pub e2e_ms: Option<Summary>,
    pub speculation: SpeculationTotals,
    /// The server's own counts during the level (`/metrics` before and after).
    pub server: Option<crate::server_metrics::MetricsDelta>,
}

/// Service-level objectives a request must meet to count towards goodput (DistServe's and
/// vLLM's definition); `None` sets no bound.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// Whether `r` succeeded within every bound.
    pub fn met(&self, r: &RequestRecord) -> bool {
        let within = |bound: Option<f64>, value: Option<f64>| match (bound, value) {
            (None, _) => true,
            (Some(b), Some(v)) => v * 1e3 <= b,
            (Some(_), None) => false,
        };
        r.error.is_none()
            && within(self.ttft_ms, r.ttft_s)
            && within(self.tpot_ms, r.tpot_s().or(r.ttft_s.map(|_| 0.0)))
            && within(self.e2e_ms, Some(r.e2e_s))
    }
}

/// The `done` frames' speculation figures, summed over the level's requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpeculationTotals {
    pub drafted: u64,
    pub accepted: u64,
    pub verifications: u64,
    /// accepted / drafted.
    pub acceptance_rate: f64,
    /// Tokens per verification, the target's own included.
    pub mean_accepted_length: f64,
    /// Requests by method.
    pub methods: BTreeMap<String, usize>,
}

impl LevelReport {
    pub fn new(run: &LevelRun, slo: &Slo) -> Self {
        let ok: Vec<_> = run.records.iter().filter(|r| r.error.is_none()).collect();
        let mut errors = BTreeMap::new();
        for r in run.records.iter().filter_map(|r| r.error) {
            *errors.entry(r.as_str().to_string()).or_default() += 1;
        }
        let ms = |v: Vec<f64>| summarize(&v.iter().map(|s| s * 1e3).collect::<Vec<_>>());
        let output_tokens = ok.iter().map(|r| r.output_tokens).sum();
        let mut spec = SpeculationTotals::default();
        for s in ok.iter().filter_map(|r| r.speculation.as_ref()) {
            spec.drafted += s.drafted;
            spec.accepted += s.accepted;
            spec.verifications += s.verifications;
            *spec.methods.entry(s.method.to_string()).or_default() += 1;
        }
        if spec.drafted > 0 {
            spec.acceptance_rate = spec.accepted as f64 / spec.drafted as f64;
        }
        if spec.verifications > 0 {
            spec.mean_accepted_length =
                (spec.accepted + spec.verifications) as f64 / spec.verifications as f64;
        }
        let per_s = |n: f64| {
            if run.wall_s > 0.0 {
                n / run.wall_s
            } else {
                0.0
            }
        };
        let good = run.records.iter().filter(|r| slo.met(r)).count();
        Self {
            load: run.load,
            requests: run.records.len(),
            succeeded: ok.len(),
            errors,
            wall_s: run.wall_s,
            output_tokens,
            output_tokens_per_s: per_s(output_tokens as f64),
            requests_per_s: per_s(ok.len() as f64),
            goodput_requests_per_s: per_s(good as f64),
            slo_attainment: if run.records.is_empty() {
                0.0
            } else {
                good as f64 / run.records.len() as f64
            },
            ttft_ms: ms(ok.iter().filter_map(|r| r.ttft_s).collect()),
            tpot_ms: ms(ok.iter().filter_map(|r| r.tpot_s()).collect()),
            itl_ms: ms(ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2e_ms: ms(ok.iter().map(|r| r.e2e_s).collect()),
            speculation: spec,
            server: run.server.clone(),
        }
    }
}

/// The sweep as a Markdown table.
pub fn table(levels: &[LevelReport]) -> String {
    let mut out = String::from(
        "| load | requests | errors | output tok/s | req/s | goodput req/s | TTFT ms p50 / p95 / p99 | TPOT ms p50 / p95 / p99 | ITL ms p50 / p95 / p99 | e2e ms p50 / p99 | acceptance | mean accepted length |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let three = |s: &Option<Summary>| match s {
        Some(s) => format!("{:.1} / {:.1} / {:.1}", s.p50, s.p95, s.p99),
        None => "-".into(),
    };
    for l in levels {
        let errors = if l.errors.is_empty() {
            "0".to_string()
        } else {
            l.errors
                .iter()
                .map(|(c, n)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let e2e = match &l.e2e_ms {
            Some(s) => format!("{:.0} / {:.0}", s.p50, s.p99),
            None => "-".into(),
        };
        let (acc, len) = if l.speculation.verifications > 0 {
            (
                format!("{:.1}%", l.speculation.acceptance_rate * 100.0),
                format!("{:.2}", l.speculation.mean_accepted_length),
            )
        } else {
            ("-".into(), "-".into())
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |\n",
            l.load,
            l.requests,
            errors,
            l.output_tokens_per_s,
            l.requests_per_s,
            l.goodput_requests_per_s,
            three(&l.ttft_ms),
            three(&l.tpot_ms),
            three(&l.itl_ms),
            e2e,
            acc,
            len
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use specd_protocol::{ErrorCode, FinishReason, LookupReport, Method, SpeculationReport};

    use super::*;

    fn record(
        ttft: f64,
        e2e: f64,
        tokens: usize,
        drafted: u64,
        accepted: u64,
        verifications: u64,
    ) -> RequestRecord {
        RequestRecord {
            start_s: 0.0,
            ttft_s: Some(ttft),
            e2e_s: e2e,
            output_tokens: tokens,
            itl_s: vec![0.01; tokens.saturating_sub(1)],
            finish_reason: Some(FinishReason::Length),
            error: None,
            error_message: None,
            speculation: Some(SpeculationReport {
                method: Method::Draft,
                drafted,
                accepted,
                acceptance_rate: 0.0,
                mean_accepted_length: 0.0,
                verifications,
                acceptance_by_position: vec![],
                lookup: LookupReport {
                    drafts: 0,
                    drafted: 0,
                    accepted: 0,
                },
            }),
        }
    }

    #[test]
    fn a_level_sums_tokens_and_speculation_and_counts_errors_apart() {
        let mut failed = record(0.0, 0.5, 0, 0, 0, 0);
        failed.error = Some(ErrorCode::Overloaded);
        failed.ttft_s = None;
        let run = LevelRun {
            load: Load::Clients(2),
            records: vec![
                record(0.1, 1.1, 11, 8, 6, 4),
                record(0.3, 2.3, 21, 12, 2, 6),
                failed,
            ],
            wall_s: 4.0,
            server: None,
        };
        let r = LevelReport::new(&run, &Slo::default());
        assert_eq!((r.requests, r.succeeded), (3, 2));
        assert_eq!(r.errors.get("overloaded"), Some(&1));
        assert_eq!(r.output_tokens, 32);
        assert_eq!(r.output_tokens_per_s, 8.0);
        assert_eq!(r.requests_per_s, 0.5);
        assert_eq!(r.ttft_ms.as_ref().unwrap().p50, 200.0);
        // TPOT: (1.1 - 0.1) / 10 and (2.3 - 0.3) / 20, both 100 ms.
        assert!((r.tpot_ms.as_ref().unwrap().mean - 100.0).abs() < 1e-9);
        assert_eq!(r.itl_ms.as_ref().unwrap().count, 30);
        assert_eq!((r.speculation.drafted, r.speculation.accepted), (20, 8));
        assert_eq!(r.speculation.acceptance_rate, 0.4);
        assert_eq!(r.speculation.mean_accepted_length, 1.8);
        assert_eq!(r.speculation.methods.get("draft"), Some(&2));
        assert_eq!(r.goodput_requests_per_s, 0.5);
        let t = table(&[r]);
        assert!(
            t.contains("| 2 clients | 3 | 1 overloaded | 8.0 | 0.50 | 0.50 |"),
            "{t}"
        );
        // A TTFT bound of 200 ms keeps the first request only; a TPOT bound of 99 ms none.
        let slo = Slo {
            ttft_ms: Some(200.0),
            ..Default::default()
        };
        let r = LevelReport::new(&run, &slo);
        assert_eq!(
            (r.goodput_requests_per_s, r.slo_attainment),
            (0.25, 1.0 / 3.0)
        );
        let slo = Slo {
            tpot_ms: Some(99.0),
            ..Default::default()
        };
        assert_eq!(LevelReport::new(&run, &slo).goodput_requests_per_s, 0.0);
    }
}
