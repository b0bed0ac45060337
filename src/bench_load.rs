//! `specd bench-load`: the actor engine under concurrent load. For each concurrency level and
//! mode, the same `--requests` requests (code prompts through the chat template, greedy) are
//! served by that many clients, each submitting its next request as its last ends (`--requests
//! 0`: one wave, as many requests as clients, all submitted at once); every level does the same
//! work, so their throughputs compare. The run reports aggregate tokens/s, per-request latency,
//! and the share of step time spent passing actor messages. Prints one markdown table.

use specd_loadtest::quantile;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use specd_engine::actors::{
    Engine, EngineConfig, EngineModels, EngineRequest, EngineStats, Event, LoadPolicy, Method,
    RequestStream,
};
use specd_engine::generate::GenerateRequest;
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{DraftPolicyConfig, NgramProposer};

use crate::generate::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchLoadArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The draft model (default: the fetched Qwen2.5-Coder-0.5B).
    #[arg(long)]
    draft: Option<PathBuf>,
    /// The GLIDE drafter [default with the default target: the trained one, where found].
    #[arg(long)]
    glide: Option<PathBuf>,
    /// Prompt file, as for `bench-spec`.
    #[arg(long, default_value = "scripts/bench/code_prompts.json")]
    prompts: PathBuf,
    /// Comma-separated numbers of concurrent requests.
    #[arg(long, default_value = "1,4,16,32")]
    concurrency: String,
    /// Comma-separated modes: `none`, `draft:K` (always speculate), `draft:K:policy`
    /// (speculate under the load policy), `ngram:K`, `ngram:K:policy`, `glide:K`,
    /// `glide:K:policy`, `glide+ngram:K`, `glide+ngram:K:policy`.
    #[arg(long, default_value = "none,draft:4,draft:4:policy")]
    modes: String,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Requests per level and mode (request `i` asks prompt `i` of the file, cycling), served
    /// by as many clients as the level names; 0: one wave of as many requests as clients.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Runs of every cell; rounds alternate the modes and each cell reports its median run.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Prefill every prompt whole, taking nothing from the target's prefix cache.
    #[arg(long)]
    no_prefix_cache: bool,
    /// KV memory for all pools (target and drafters), in MiB.
    #[arg(long, default_value_t = 2048)]
    kv_mib: usize,
    /// Load policy: running sequences from which drafts are shortened.
    #[arg(long, default_value_t = LoadPolicy::default().shorten_at)]
    shorten_at: usize,
    /// Load policy: the shortened draft length.
    #[arg(long, default_value_t = LoadPolicy::default().shorten_to)]
    shorten_to: usize,
    /// Load policy: running sequences from which speculation is off.
    #[arg(long, default_value_t = LoadPolicy::default().off_at)]
    off_at: usize,
}

#[derive(Debug, Clone)]
struct Mode {
    label: String,
    method: Method,
    k: usize,
    policy: bool,
}

fn parse_modes(spec: &str) -> anyhow::Result<Vec<Mode>> {
    let mut out = Vec::new();
    for m in spec.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let parts: Vec<&str> = m.split(':').collect();
        let k = |s: &str| -> anyhow::Result<usize> {
            s.parse()
                .with_context(|| format!("mode `{m}`: `{s}` is not a number"))
        };
        let usage = || {
            anyhow::anyhow!(
                "unknown mode `{m}`: use none, draft:K[:policy], ngram:K[:policy], glide:K[:policy], \
                 glide+ngram:K[:policy]"
            )
        };
        let method: Method = parts[0].parse().map_err(|_| usage())?;
        let (k, policy) = match (method, &parts[1..]) {
            (Method::None, []) => (0, false),
            (Method::None, _) => return Err(usage()),
            (_, [n]) => (k(n)?, false),
            (_, [n, "policy"]) => (k(n)?, true),
            _ => return Err(usage()),
        };
        out.push(Mode {
            label: m.to_string(),
            method,
            k,
            policy,
        });
    }
    anyhow::ensure!(!out.is_empty(), "no modes given");
    Ok(out)
}

/// One request's measurements.
struct Sample {
    tokens: usize,
    total: Duration,
    ttft: Duration,
    drafted: u64,
    accepted: u64,
}

/// The `--concurrency` levels.
fn parse_levels(spec: &str) -> anyhow::Result<Vec<usize>> {
    spec.split(',')
        .map(|s| s.trim().parse().context("--concurrency takes numbers"))
        .collect()
}

pub fn run(args: BenchLoadArgs) -> anyhow::Result<()> {
    let modes = parse_modes(&args.modes)?;
    let levels = parse_levels(&args.concurrency)?;
    let bench = Bench::load(&args, &modes)?;
    println!(
        "| concurrency | mode | aggregate tok/s | vs none | request s (mean / p50 / p95) | TTFT s (mean) | per-token ms (mean) | acceptance | steps | messaging % of step |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &c in &levels {
        let medians = bench.run_level(c, &modes, args.rounds)?;
        print_level(c, &modes, &medians);
    }
    Ok(())
}

/// Prints the table's rows of concurrency `c`: each mode's median run.
fn print_level(c: usize, modes: &[Mode], medians: &[Row]) {
    let none_tps = modes
        .iter()
        .position(|m| m.method == Method::None)
        .map(|i| medians[i].tps);
    for (mode, row) in modes.iter().zip(medians) {
        println!(
            "| {c} | {} | {:.1} | {} | {:.2} / {:.2} / {:.2} | {:.2} | {:.1} | {} | {} | {:.3}% |",
            mode.label,
            row.tps,
            none_tps.map_or("-".into(), |n| format!("{:.2}×", row.tps / n)),
            row.mean_total,
            quantile(&row.totals, 0.5),
            quantile(&row.totals, 0.95),
            row.mean_ttft,
            row.per_token_ms,
            if row.drafted > 0 {
                format!("{:.1}%", 100.0 * row.accepted as f64 / row.drafted as f64)
            } else {
                "-".into()
            },
            row.stats.steps,
            100.0 * row.stats.messaging_fraction(),
        );
    }
}

/// The run of median throughput among `runs` (at least one).
fn median_run(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    runs.swap_remove(runs.len() / 2)
}

/// What every run shares.
struct Bench {
    models: EngineModels,
    encoded: Vec<Vec<u32>>,
    max_tokens: usize,
    requests: usize,
    prefix_cache: bool,
    kv_bytes: usize,
    policy: LoadPolicy,
    rt: tokio::runtime::Runtime,
}

/// One run of one mode at one concurrency.
#[derive(Clone)]
struct Row {
    tps: f64,
    /// Request times, sorted.
    totals: Vec<f64>,
    mean_total: f64,
    mean_ttft: f64,
    per_token_ms: f64,
    drafted: u64,
    accepted: u64,
    stats: EngineStats,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

impl Bench {
    /// Loads and warms up the target, encodes the prompts through its chat template, loads
    /// the drafters that `modes` draft with, and starts the runtime that the clients run on.
    fn load(args: &BenchLoadArgs, modes: &[Mode]) -> anyhow::Result<Self> {
        let prompts = crate::bench_spec::read_prompts(&args.prompts)?;
        let (target, tokenizer, template) = crate::bench_spec::load_chat_target(&args.model)?;
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|(_, text)| crate::bench_spec::encode_user_prompt(&template, &tokenizer, text))
            .collect::<anyhow::Result<_>>()?;
        let kinds: Vec<Method> = modes.iter().map(|m| m.method).collect();
        let files = crate::bench_spec::DrafterFiles {
            draft: args.draft.as_ref(),
            draft_head: 0,
            glide: args.glide.as_ref(),
            default_target: args.model.model.is_none(),
        };
        let (draft, glide) = crate::bench_spec::load_drafters(&kinds, &files, &target, &tokenizer)?;
        let models = EngineModels {
            target: Arc::new(target.model),
            tokenizer: Arc::new(tokenizer),
            draft: draft.map(Arc::new),
            ngram: NgramProposer::default(),
            glide: glide.map(Arc::new),
        };
        let policy = LoadPolicy {
            shorten_at: args.shorten_at,
            shorten_to: args.shorten_to,
            off_at: args.off_at,
        };
        Ok(Self {
            models,
            encoded,
            max_tokens: args.max_tokens,
            requests: args.requests,
            prefix_cache: !args.no_prefix_cache,
            kv_bytes: args.kv_mib << 20,
            policy,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Runs every mode at concurrency `c`, `rounds` times (at least once), reporting each run
    /// on stderr; rounds alternate the modes, rotating their order. Returns each mode's
    /// median run.
    fn run_level(&self, c: usize, modes: &[Mode], rounds: usize) -> anyhow::Result<Vec<Row>> {
        let mut rows: Vec<Vec<Row>> = vec![Vec::new(); modes.len()];
        for round in 0..rounds.max(1) {
            for j in 0..modes.len() {
                let mi = (j + round) % modes.len();
                let row = self.run(c, &modes[mi])?;
                eprintln!(
                    "c={c} {} round {round}: {:.1} tok/s; prompt tokens taken from the prefix cache {}; step time {:.1}s of which messaging {:.4}s, phases (schedule, kv, draft, verify, accept) {:?}",
                    modes[mi].label,
                    row.tps,
                    row.stats.prefix_cache_hit_tokens,
                    row.stats.step_time.as_secs_f64(),
                    row.stats.messaging_time.as_secs_f64(),
                    row.stats.phase_time,
                );
                rows[mi].push(row);
            }
        }
        Ok(rows.into_iter().map(median_run).collect())
    }

    fn run(&self, c: usize, mode: &Mode) -> anyhow::Result<Row> {
        let config = EngineConfig {
            max_running: c.max(1),
            prefix_cache: self.prefix_cache,
            load: if mode.policy {
                self.policy.into()
            } else {
                LoadPolicy::NEVER.into()
            },
            ..EngineConfig::default()
        }
        .with_kv_memory(self.kv_bytes, &self.models);
        let engine = Engine::start(self.models.clone(), config)?;
        let h = engine.handle();
        let total = if self.requests == 0 { c } else { self.requests };
        let reqs: Vec<EngineRequest> = (0..total)
            .map(|i| EngineRequest {
                generate: GenerateRequest {
                    prompt: self.encoded[i % self.encoded.len()].clone(),
                    max_tokens: self.max_tokens,
                    sampling: SamplingParams::default(),
                    stop: Vec::new(),
                    ignore_eos: false,
                },
                method: mode.method,
                policy: DraftPolicyConfig {
                    max_draft: mode.k,
                    ..Default::default()
                },
            })
            .collect();
        let queue = Rc::new(RefCell::new(reqs.into_iter()));
        let start = Instant::now();
        let samples: Vec<Sample> = tokio::task::LocalSet::new().block_on(&self.rt, async {
            // `c` clients, each submitting its next request as soon as its last one ends (all
            // start at once, as independent clients would).
            let clients: Vec<_> = (0..c.min(total))
                .map(|_| {
                    let (h, queue) = (h.clone(), queue.clone());
                    tokio::task::spawn_local(async move {
                        let mut out = Vec::new();
                        loop {
                            let Some(r) = queue.borrow_mut().next() else {
                                break;
                            };
                            let submitted = Instant::now();
                            out.push(read_stream(h.submit(r).await?, submitted).await?);
                        }
                        anyhow::Ok(out)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in clients {
                out.extend(t.await??);
            }
            anyhow::Ok(out)
        })?;
        let wall = start.elapsed();
        let stats = self.rt.block_on(h.stats())?;
        drop(engine);
        let tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let mut totals: Vec<f64> = samples.iter().map(|s| s.total.as_secs_f64()).collect();
        totals.sort_by(f64::total_cmp);
        let (drafted, accepted) = samples
            .iter()
            .fold((0, 0), |(d, a), s| (d + s.drafted, a + s.accepted));
        Ok(Row {
            tps: tokens as f64 / wall.as_secs_f64(),
            mean_total: mean(totals.iter().copied()),
            totals,
            mean_ttft: mean(samples.iter().map(|s| s.ttft.as_secs_f64())),
            per_token_ms: mean(samples.iter().map(|s| {
                1e3 * (s.total - s.ttft).as_secs_f64() / s.tokens.saturating_sub(1).max(1) as f64
            })),
            drafted,
            accepted,
            stats,
        })
    }
}

/// Reads one request's stream to the end.
async fn read_stream(mut s: RequestStream, submitted: Instant) -> anyhow::Result<Sample> {
    let mut sample = Sample {
        tokens: 0,
        total: Duration::ZERO,
        ttft: Duration::ZERO,
        drafted: 0,
        accepted: 0,
    };
    while let Some(e) = s.next_event().await {
        match e {
            Event::Chunk(ch) => {
                if sample.tokens == 0 && !ch.tokens.is_empty() {
                    sample.ttft = submitted.elapsed();
                }
                sample.tokens += ch.tokens.len();
            }
            Event::Done(d) => {
                sample.total = submitted.elapsed();
                sample.drafted = d.speculation.drafted_tokens;
                sample.accepted = d.speculation.accepted_tokens;
            }
            Event::Error(e) => bail!("request failed: {}: {}", e.code, e.message),
        }
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_into_the_engine_method() {
        let m = parse_modes("none,draft:4:policy,ngram:3,glide:5:policy,glide+ngram:4").unwrap();
        let got: Vec<(Method, usize, bool)> = m.iter().map(|m| (m.method, m.k, m.policy)).collect();
        assert_eq!(
            got,
            [
                (Method::None, 0, false),
                (Method::Draft, 4, true),
                (Method::Ngram, 3, false),
                (Method::Glide, 5, true),
                (Method::GlideNgram, 4, false)
            ]
        );
        for bad in ["none:2", "warp:4", "draft", "draft:4:always", "glide"] {
            assert!(parse_modes(bad).is_err(), "`{bad}` was accepted");
        }
    }
}
