//! `specd bench`: prefill and decode speed of one model, measured the way llama.cpp's
//! llama-bench does (a prompt of N tokens in one batch; then single-token decode steps).

use specd_loadtest::median;
use std::time::Instant;

use clap::Args;
use specd_engine::model::Logits;
use specd_engine::sampling::argmax;

use crate::generate::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Instead of pp/tg: time a verification forward of each of these row counts (comma
    /// separated, e.g. 1,2,4,6,8) after a prompt of --prompt-tokens, with logits for every row,
    /// and report each against one row. On a GPU the report always includes them (1..8 by
    /// default), with the greedy verdict decided on the device as the engine does.
    #[arg(long, value_delimiter = ',')]
    pub verify_rows: Vec<usize>,
    /// On a GPU: also the aggregate decode tokens/s of this many sequences stepping together
    /// (comma separated, e.g. 1,4,16,64).
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// On a GPU: first time every row-product kernel (tile shapes, CUDA cores) and keep the
    /// fastest for the rest.
    #[arg(long)]
    pub sweep: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.prompt_tokens >= 1 && args.gen_tokens >= 1 && args.repeat >= 1,
        "all counts must be at least 1"
    );
    let t = Instant::now();
    let loaded = args.model.load()?;
    let load_s = t.elapsed().as_secs_f64();
    let model = &loaded.model;
    let vocab = model.config().vocab_size as u32;
    // A fixed pseudo-random prompt, as llama-bench uses random tokens.
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) % vocab.min(32000))
        .collect();
    if model.device().is_cuda() {
        let name = args
            .model
            .model
            .as_deref()
            .map_or("default".into(), |p| p.display().to_string());
        return crate::bench_gpu::run(model, &name, &prompt, &args);
    }
    if !args.verify_rows.is_empty() {
        return verify_rows(model, &prompt, &args);
    }
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat {
        let mut cache = model.new_cache();
        let t = Instant::now();
        let logits = model.forward_cache(&mut cache, &prompt, Logits::Last)?;
        pp.push(args.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        let mut next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        let t = Instant::now();
        for _ in 0..args.gen_tokens {
            let logits = model.forward_cache(&mut cache, &[next], Logits::Last)?;
            next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        }
        tg.push(args.gen_tokens as f64 / t.elapsed().as_secs_f64());
    }
    let rss = peak_rss_mib();
    let spread = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.1}..{hi:.1}")
    };
    println!(
        "{{\"model\":\"{}\",\"load_s\":{load_s:.2},\"pp{}\":{:.2},\"pp_range\":\"{}\",\"tg{}\":{:.2},\"tg_range\":\"{}\",\"peak_rss_mib\":{}}}",
        loaded.path.display(),
        args.prompt_tokens,
        median(&pp),
        spread(&pp),
        args.gen_tokens,
        median(&tg),
        spread(&tg),
        rss.map_or("null".to_string(), |r| format!("{r:.0}")),
    );
    Ok(())
}

/// The cost of verifying k drafts: one forward of k + 1 rows with all logits, on top of a
/// cached prompt, rolled back after each run; medians of `--repeat` runs (at least 5).
fn verify_rows(
    model: &specd_engine::model::Model,
    prompt: &[u32],
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let mut cache = model.new_cache();
    model.forward_cache(&mut cache, prompt, Logits::None)?;
    let len = cache.len();
    let repeat = args.repeat.max(5);
    let mut rows = args.verify_rows.clone();
    if !rows.contains(&1) {
        rows.insert(0, 1);
    }
    let mut results = Vec::new();
    for &m in &rows {
        anyhow::ensure!(m >= 1, "--verify-rows: row counts start at 1");
        let tokens: Vec<u32> = (0..m as u32).map(|i| 100 + i).collect();
        let mut times = Vec::new();
        // One unmeasured run: caches warm, candle's repacking done.
        for run in 0..=repeat {
            let t = Instant::now();
            model.forward_cache(&mut cache, &tokens, Logits::All)?;
            if run > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            cache.truncate(len);
        }
        results.push((m, median(&times)));
    }
    let one = results
        .iter()
        .find(|(m, _)| *m == 1)
        .map(|r| r.1)
        .unwrap_or(1.0);
    let parts: Vec<String> = results
        .iter()
        .map(|(m, ms)| {
            format!(
                "{{\"rows\":{m},\"ms\":{ms:.2},\"vs_one_row\":{:.2}}}",
                ms / one
            )
        })
        .collect();
    println!(
        "{{\"model\":\"{}\",\"context\":{len},\"verify\":[{}]}}",
        args.model
            .model
            .as_deref()
            .map_or("default".into(), |p| p.display().to_string()),
        parts.join(",")
    );
    Ok(())
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
