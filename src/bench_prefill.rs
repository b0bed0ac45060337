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
    Engine, EngineConfig, EngineModels, EngineRequest, Event, LoadPolicies, Method,
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
    /// window; its first token is left out).
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
        let h = engine.handle();
        let running: Vec<EngineRequest> = (0..args.running)
            .map(|i| request(encoded[i % encoded.len()].clone(), 1 << 20))
            .collect();
        let long = request(long.clone(), 1);
        let (before, during, after, ttft) = tokio::task::LocalSet::new().block_on(&rt, async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
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
            // Token arrival times per running stream until each has `warmup` tokens.
            let mut times: Vec<Vec<Instant>> = vec![Vec::new(); args.running];
            while times.iter().any(|t| t.len() < args.warmup) {
                let (i, t) = rx.recv().await.context("a running stream ended")?;
                times[i].push(t);
            }
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
            // `warmup` more tokens of each stream after the first token: the "after" window.
            let counts: Vec<usize> = times.iter().map(Vec::len).collect();
            while times
                .iter()
                .zip(&counts)
                .any(|(t, &c)| t.len() < c + args.warmup)
            {
                let (i, t) = rx.recv().await.context("a running stream ended")?;
                times[i].push(t);
            }
            // Gaps between consecutive tokens of each stream, split at the arrival and at the
            // first token (the gap spanning it counts as during).
            let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
            for t in &times {
                for w in t.windows(2) {
                    let gap = 1e3 * (w[1] - w[0]).as_secs_f64();
                    if w[1] <= arrival {
                        before.push(gap);
                    } else if w[1] <= first {
                        during.push(gap);
                    } else if w[0] >= first {
                        after.push(gap);
                    }
                }
                // The gap a stream was in when the first token came: it waited at least until
                // then.
                if let Some(w) = t.windows(2).find(|w| w[0] < first && w[1] > first) {
                    during.push(1e3 * (first - w[0].max(arrival)).as_secs_f64());
                }
            }
            drop(streams);
            anyhow::Ok((before, during, after, first - arrival))
        })?;
        drop(engine);
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (
                quantile(v, 0.5),
                quantile(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN),
            )
        };
        let (mut before, mut during, mut after) = (before, during, after);
        let b = stats(&mut before);
        let d = stats(&mut during);
        let a = stats(&mut after);
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
            ttft.as_secs_f64(),
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
