//! `specd bench-prefill`: a long prompt arriving into running streams. `--running` greedy
//! requests decode; once each has streamed `--warmup` tokens, a request with a prompt of
//! `--prompt-tokens` tokens (code prompts, concatenated) arrives. For each prefill setting
//! (`whole`: the prompt in one step, as before chunked prefill; `auto`: chunks sized from
//! measured costs; a number: fixed chunks) the run reports the running streams' inter-token
//! latency before the arrival and from it to the long prompt's first token (p50, p99, max), the
//! long prompt's time to first token, and the streams' median latency after it (`--warmup` more
//! tokens each): their own step at the depth they reached meanwhile, so that what the prompt's
//! chunks add can be told from what the streams' growing contexts add. Prints one markdown table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use specd_engine::actors::{
    Engine, EngineConfig, EngineHandle, EngineModels, EngineRequest, Event, LoadPolicies, Method,
};
use specd_engine::generate::GenerateRequest;
use specd_engine::sampling::SamplingParams;
use specd_engine::speculative::{DraftPolicyConfig, NgramProposer};
use specd_loadtest::quantile;

use crate::generate::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchPrefillArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt file, as for `bench-spec` (the long prompt is its prompts' text, repeated).
    #[arg(long, default_value = "scripts/bench/code_prompts.json")]
    prompts: PathBuf,
    /// Streams decoding when the long prompt arrives.
    #[arg(long, default_value_t = 8)]
    running: usize,
    /// Tokens of the long prompt.
    #[arg(long, default_value_t = 2048)]
    prompt_tokens: usize,
    /// Tokens each running stream streams before the long prompt arrives (the "before"
    /// window; its first token is left out), and at least as many again after the long
    /// prompt's first token (the "after" window).
    #[arg(long, default_value_t = 24)]
    warmup: usize,
    /// Comma-separated prefill settings: `whole`, `auto`, or a chunk size in tokens.
    #[arg(long, default_value = "whole,auto")]
    chunks: String,
}

/// One prefill setting.
#[derive(Debug, Clone, Copy)]
enum Chunking {
    Whole,
    Auto,
    Fixed(usize),
}

impl Chunking {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "whole" => Self::Whole,
            "auto" => Self::Auto,
            n => Self::Fixed(
                n.parse()
                    .with_context(|| format!("--chunks: `{n}` is not whole, auto or a number"))?,
            ),
        })
    }

    fn label(&self) -> String {
        match self {
            Self::Whole => "whole".into(),
            Self::Auto => "auto".into(),
            Self::Fixed(n) => format!("{n} tokens"),
        }
    }
}

pub fn run(args: BenchPrefillArgs) -> anyhow::Result<()> {
    let chunkings: Vec<Chunking> = args
        .chunks
        .split(',')
        .map(|s| Chunking::parse(s.trim()))
        .collect::<anyhow::Result<_>>()?;
    let prompts = crate::bench_spec::read_prompts(&args.prompts)?;
    let (target, tokenizer, _) = crate::bench_spec::load_chat_target(&args.model)?;
    let encoded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|(_, text)| Ok(tokenizer.encode(text, false)?))
        .collect::<anyhow::Result<_>>()?;
    let ctx = target.model.config().max_position_embeddings;
    anyhow::ensure!(
        args.prompt_tokens + 1 < ctx,
        "--prompt-tokens {} does not fit the target's context of {ctx}",
        args.prompt_tokens
    );
    let long: Vec<u32> = encoded
        .iter()
        .flatten()
        .copied()
        .cycle()
        .take(args.prompt_tokens)
        .collect();
    let models = EngineModels {
        target: Arc::new(target.model),
        tokenizer: Arc::new(tokenizer),
        draft: None,
        ngram: NgramProposer::default(),
        glide: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "| prefill | running streams | ITL before p50 / p99 / max ms | ITL during p50 / p99 / max ms | during p99 / before p50 | long prompt TTFT s | ITL after p50 ms | during p99 / after p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in chunkings {
        let config = EngineConfig {
            prefill_chunk: match c {
                Chunking::Whole => Some(usize::MAX),
                Chunking::Auto => None,
                Chunking::Fixed(n) => Some(n),
            },
            max_batch_tokens: match c {
                Chunking::Whole => args.prompt_tokens + 64 * args.running,
                _ => EngineConfig::default().max_batch_tokens,
            },
            load: LoadPolicies::NEVER,
            ..EngineConfig::default()
        };
        let engine = Engine::start(models.clone(), config)?;
        let running: Vec<EngineRequest> = (0..args.running)
            .map(|i| request(encoded[i % encoded.len()].clone(), 1 << 20))
            .collect();
        let long = request(long.clone(), 1);
        let arrivals = tokio::task::LocalSet::new()
            .block_on(&rt, arrivals(engine.handle(), running, long, args.warmup))?;
        drop(engine);
        let w = Windows::of(&arrivals);
        let (b, d, a) = (stats(w.before), stats(w.during), stats(w.after));
        println!(
            "| {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.2}× | {:.2} | {:.1} | {:.2}× |",
            c.label(),
            args.running,
            b.0,
            b.1,
            b.2,
            d.0,
            d.1,
            d.2,
            d.1 / b.0,
            (arrivals.first - arrivals.arrival).as_secs_f64(),
            a.0,
            d.1 / a.0,
        );
    }
    Ok(())
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        generate: GenerateRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: true,
        },
        method: Method::None,
        policy: DraftPolicyConfig::default(),
    }
}

/// When each running stream's tokens arrived, and when the long prompt arrived and got its
/// first token.
struct Arrivals {
    times: Vec<Vec<Instant>>,
    arrival: Instant,
    first: Instant,
}

/// Runs the streams until each has `warmup` tokens, submits the long prompt, and follows the
/// streams until its first token and `warmup` gaps between tokens wholly after it.
async fn arrivals(
    h: EngineHandle,
    running: Vec<EngineRequest>,
    long: EngineRequest,
    warmup: usize,
) -> anyhow::Result<Arrivals> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut times: Vec<Vec<Instant>> = vec![Vec::new(); running.len()];
    let mut streams = Vec::new();
    for (i, r) in running.into_iter().enumerate() {
        let mut s = h.submit(r).await?;
        let tx = tx.clone();
        streams.push(tokio::task::spawn_local(async move {
            while let Some(e) = s.next_event().await {
                if let Event::Chunk(c) = e {
                    for _ in 0..c.tokens.len() {
                        if tx.send((i, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    until(&mut rx, &mut times, |t| t.len() >= warmup).await?;
    let arrival = Instant::now();
    let mut ls = h.submit(long).await?;
    let first = loop {
        tokio::select! {
            Some((i, t)) = rx.recv() => times[i].push(t),
            e = ls.next_event() => match e {
                Some(Event::Chunk(c)) if !c.tokens.is_empty() => break Instant::now(),
                Some(Event::Error(e)) => anyhow::bail!("long prompt failed: {}", e.message),
                Some(_) => {}
                None => anyhow::bail!("long prompt ended without a token"),
            },
        }
    };
    // Tokens stamped before the first token may still be queued: count from it, so that each
    // stream has `warmup` gaps wholly after it.
    until(&mut rx, &mut times, |t| {
        t.iter().filter(|&&x| x >= first).count() > warmup
    })
    .await?;
    drop(streams);
    Ok(Arrivals {
        times,
        arrival,
        first,
    })
}

/// Takes in arrivals until every stream's arrival times satisfy `done`.
async fn until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
    times: &mut [Vec<Instant>],
    done: impl Fn(&[Instant]) -> bool,
) -> anyhow::Result<()> {
    while !times.iter().all(|t| done(t)) {
        let (i, t) = rx.recv().await.context("a running stream ended")?;
        times[i].push(t);
    }
    Ok(())
}

/// The running streams' inter-token gaps in ms, split at the long prompt's arrival and first
/// token.
#[derive(Debug, Default, PartialEq)]
struct Windows {
    before: Vec<f64>,
    /// Gaps ending after the arrival, up to the first token; and for the gap a stream was in
    /// when the first token came, the time from its last token (or the arrival) to it: it
    /// waited at least that long.
    during: Vec<f64>,
    after: Vec<f64>,
}

impl Windows {
    fn of(a: &Arrivals) -> Self {
        let ms = |d: std::time::Duration| 1e3 * d.as_secs_f64();
        let mut w = Windows::default();
        for t in &a.times {
            for g in t.windows(2) {
                if g[1] <= a.arrival {
                    w.before.push(ms(g[1] - g[0]));
                } else if g[1] <= a.first {
                    w.during.push(ms(g[1] - g[0]));
                } else if g[0] >= a.first {
                    w.after.push(ms(g[1] - g[0]));
                } else {
                    w.during.push(ms(a.first - g[0].max(a.arrival)));
                }
            }
        }
        w
    }
}

/// p50, p99 and max of `v`.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        quantile(&v, 0.5),
        quantile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gaps_split_at_the_arrival_and_the_first_token() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // One stream steps at 0, 10, 20 | arrival 25 | 40, 70 | first token 80 | 95, 105.
        let a = Arrivals {
            times: vec![vec![at(0), at(10), at(20), at(40), at(70), at(95), at(105)]],
            arrival: at(25),
            first: at(80),
        };
        let w = Windows::of(&a);
        assert_eq!(w.before, vec![10.0, 10.0]);
        // 20 → 40 ends after the arrival; 70 → 95 spans the first token: 10 ms until it.
        assert_eq!(w.during, vec![20.0, 30.0, 10.0]);
        assert_eq!(w.after, vec![10.0]);
        // A stream silent from before the arrival until after the first token waited the
        // whole admission.
        let a = Arrivals {
            times: vec![vec![at(0), at(20), at(90)]],
            arrival: at(25),
            first: at(80),
        };
        assert_eq!(Windows::of(&a).during, vec![55.0]);
    }
}
