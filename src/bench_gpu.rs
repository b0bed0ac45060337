//! `specd bench --device cuda`: the GPU step measured the way the engine runs it (argmax and
//! greedy verdicts decided on the device), against the memory roofline measured in the same
//! process, with CUDA graphs on and off.

use specd_loadtest::median;
use std::time::Instant;

use specd_engine::kv::SequenceCache;
use specd_engine::model::{Logits, Model, SeqInput};

use crate::bench::BenchArgs;

/// Milliseconds of each of `steps` decode steps (argmax on the device), after `warmup` untimed
/// ones. With `grow` the context grows by one position a step, as generation takes it (new KV
/// blocks, wider block tables, a graph for each new padded width); without, every step repeats
/// the same position. The cache is cut back to its length after.
fn decode_times(
    m: &Model,
    cache: &mut SequenceCache,
    warmup: usize,
    steps: usize,
    grow: bool,
) -> anyhow::Result<Vec<f64>> {
    let len = cache.len();
    let mut next = 100u32;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let (pool, table) = cache.parts();
        let t = Instant::now();
        let top = m.forward_top(
            pool,
            &mut [SeqInput {
                table,
                tokens: &[next],
                logits: Logits::Last,
            }],
        )?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        next = top[0][0].token;
        if !grow {
            cache.truncate(len);
        }
    }
    cache.truncate(len);
    Ok(times)
}

/// Milliseconds of one decode step at one position, median over `steps`.
fn decode_ms(m: &Model, cache: &mut SequenceCache, steps: usize) -> anyhow::Result<f64> {
    Ok(median(&decode_times(m, cache, 3, steps, false)?))
}

/// Decode as generation takes it, the context growing: (mean, median, max) milliseconds over
/// `steps`, graphs as set.
fn decode_growing(
    m: &Model,
    cache: &mut SequenceCache,
    steps: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let times = decode_times(m, cache, 0, steps, true)?;
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let max = times.iter().copied().fold(0.0, f64::max);
    Ok((mean, median(&times), max))
}

/// Milliseconds of a verification of `rows` rows with the greedy verdict on the device.
fn verify_ms(
    m: &Model,
    cache: &mut SequenceCache,
    rows: usize,
    repeat: usize,
) -> anyhow::Result<f64> {
    let len = cache.len();
    let tokens: Vec<u32> = (0..rows as u32).map(|i| 100 + i).collect();
    let mut times = Vec::new();
    for i in 0..repeat + 3 {
        let (pool, table) = cache.parts();
        let t = Instant::now();
        m.verify_greedy(
            pool,
            &mut [SeqInput {
                table,
                tokens: &tokens,
                logits: Logits::All,
            }],
        )?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        cache.truncate(len);
    }
    Ok(median(&times))
}

/// Aggregate decode tokens/s of `batch` sequences of `ctx` cached tokens stepping together.
fn batch_tps(m: &Model, prompt: &[u32], batch: usize, steps: usize) -> anyhow::Result<f64> {
    let mut pool = m.new_pool(batch * (prompt.len() + steps + 16).div_ceil(16) + 16);
    let mut tables: Vec<_> = (0..batch)
        .map(|_| specd_engine::kv::BlockTable::new())
        .collect();
    for t in tables.iter_mut() {
        m.forward(
            &mut pool,
            &mut [SeqInput {
                table: t,
                tokens: prompt,
                logits: Logits::None,
            }],
        )?;
    }
    let mut next = vec![100u32; batch];
    let mut elapsed = 0.0;
    for i in 0..steps + 2 {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut inputs: Vec<SeqInput<'_>> = tables
            .iter_mut()
            .zip(&toks)
            .map(|(table, t)| SeqInput {
                table,
                tokens: t,
                logits: Logits::Last,
            })
            .collect();
        let t = Instant::now();
        let top = m.forward_top(&mut pool, &mut inputs)?;
        if i >= 2 {
            elapsed += t.elapsed().as_secs_f64();
        }
        next = top.iter().map(|r| r[0].token).collect();
    }
    Ok((batch * steps) as f64 / elapsed)
}

/// Runs the GPU benchmark and prints one JSON object.
pub fn run(model: &Model, name: &str, prompt: &[u32], args: &BenchArgs) -> anyhow::Result<()> {
    let c = model.config();
    let bandwidth = model.copy_bandwidth()?.unwrap_or(0.0);
    let mut cache = model.new_cache();
    model.forward_cache(&mut cache, prompt, Logits::None)?;
    let mut pp = Vec::new();
    for _ in 0..args.repeat {
        let mut c2 = model.new_cache();
        let t = Instant::now();
        model.forward_cache(&mut c2, prompt, Logits::Last)?;
        pp.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
    }
    let ctx = cache.len() + 1;
    let stats = model.gpu_stats().expect("a GPU model");
    let kv_bytes = 2 * c.num_layers * ctx * c.num_kv_heads * c.head_dim * 2;
    let step_bytes = stats.step_weight_bytes + kv_bytes;
    let roofline_ms = step_bytes as f64 / bandwidth * 1e3;

    // The product's kernels side by side (decode and a 6-row verification); the one with the
    // lowest sum of the two is kept for the rest (decode alone once picked the CUDA-core
    // kernel, whose verification is 2.8 times slower).
    let mut sweep = Vec::new();
    if args.sweep {
        let mut best = (f64::INFINITY, String::new());
        for k in Model::cuda_matmul_kernels() {
            model.set_cuda_matmul(&k)?;
            decode_ms(model, &mut cache, 3)?;
            let d = decode_ms(model, &mut cache, 24)?;
            let v = verify_ms(model, &mut cache, 6, 12)?;
            // The prompt's prefill with this kernel (the best of two), for `auto`'s many-row
            // choice.
            let mut pp = 0f64;
            for _ in 0..2 {
                let mut c2 = model.new_cache();
                let t = Instant::now();
                model.forward_cache(&mut c2, prompt, Logits::Last)?;
                pp = pp.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
            }
            sweep.push(format!(
                "{{\"matmul\":\"{k}\",\"decode_ms\":{d:.3},\"verify6_ms\":{v:.3},\"pp_tokens_per_s\":{pp:.0}}}"
            ));
            if d + v < best.0 {
                best = (d + v, k);
            }
        }
        model.set_cuda_matmul(&best.1)?;
    }
    let stats = model.gpu_stats().expect("a GPU model");

    // Decode with graphs, then without; launches and host time per step of each.
    let mut per_mode = Vec::new();
    // SPECD_CUDA_GRAPHS=0 (a profiler run) measures without graphs only.
    let modes: &[bool] = if std::env::var("SPECD_CUDA_GRAPHS").is_ok_and(|v| v == "0") {
        &[false]
    } else {
        &[true, false]
    };
    for &graphs in modes {
        model.set_cuda_graphs(graphs);
        decode_ms(model, &mut cache, 5)?;
        let before = model.gpu_stats().expect("a GPU model");
        let ms = decode_ms(model, &mut cache, args.gen_tokens)?;
        let after = model.gpu_stats().expect("a GPU model");
        let steps = (after.forwards - before.forwards).max(1) as f64;
        let launches = if graphs {
            1.0
        } else {
            (after.launches - before.launches) as f64 / steps
        };
        let host_us = (after.host_us - before.host_us) as f64 / steps;
        // Unless SPECD_GPU_TIMING=0: the GPU's time from a step's first launch to its end.
        let gpu_us = (after.gpu_us - before.gpu_us) as f64 / steps;
        per_mode.push(format!(
            "{{\"graphs\":{graphs},\"ms_per_step\":{ms:.3},\"tokens_per_s\":{:.1},\"pct_of_roofline\":{:.1},\"launches_per_step\":{launches:.0},\"host_us_per_step\":{host_us:.1},\"gpu_us_per_step\":{gpu_us:.1}}}",
            1e3 / ms,
            100.0 * roofline_ms / ms,
        ));
    }
    model.set_cuda_graphs(modes[0]);
    // The same steps with the context growing, as in generation (bench-spec's target-only).
    let (mean, med, max) = decode_growing(model, &mut cache, args.gen_tokens)?;
    let growing = format!(
        "{{\"steps\":{},\"mean_ms\":{mean:.3},\"median_ms\":{med:.3},\"max_ms\":{max:.3}}}",
        args.gen_tokens
    );

    let mut rows = args.verify_rows.clone();
    if rows.is_empty() {
        rows = (1..=8).collect();
    }
    if !rows.contains(&1) {
        rows.insert(0, 1);
    }
    let mut verify = Vec::new();
    let mut one = 0.0;
    // SPECD_PROFILE_ROWS=r: a profiler run (scripts/gpu/profile-rows) collects only the
    // forwards of r rows.
    let profiled: Option<usize> = std::env::var("SPECD_PROFILE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok());
    for &r in &rows {
        let profile = profiled == Some(r);
        if profile {
            model.cuda_profiler_range(true)?;
        }
        let ms = verify_ms(model, &mut cache, r, args.gen_tokens.max(10))?;
        if profile {
            model.cuda_profiler_range(false)?;
        }
        if r == 1 {
            one = ms;
        }
        verify.push((r, ms));
    }
    let verify: Vec<String> = verify
        .iter()
        .map(|(r, ms)| {
            format!(
                "{{\"rows\":{r},\"ms\":{ms:.3},\"vs_one_row\":{:.3}}}",
                ms / one
            )
        })
        .collect();

    let mut batches = Vec::new();
    for &b in &args.batch {
        let tps = batch_tps(model, prompt, b, args.gen_tokens.clamp(8, 32))?;
        batches.push(format!("{{\"batch\":{b},\"tokens_per_s\":{tps:.0}}}"));
    }
    println!(
        "{{\"model\":\"{name}\",\"gpu\":\"{}\",\"matmul\":\"{}\",\"context\":{ctx},\"copy_bandwidth_TBps\":{:.3},\"weight_bytes\":{},\"bytes_per_step\":{step_bytes},\"roofline_ms\":{roofline_ms:.3},\"prefill_tokens\":{},\"pp_tokens_per_s\":{:.0},\"decode\":[{}],\"decode_growing\":{growing},\"verify\":[{}],\"batch\":[{}],\"sweep\":[{}]}}",
        stats.device,
        stats.matmul,
        bandwidth / 1e12,
        stats.weight_bytes,
        prompt.len(),
        median(&pp),
        per_mode.join(","),
        verify.join(","),
        batches.join(","),
        sweep.join(","),
    );
    Ok(())
}
