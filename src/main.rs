//! The `specd` command line: `serve` runs the server, `generate` streams a completion, `bench` measures prefill and
//! decode speed, `bench-spec` compares speculative decoding methods, `bench-load` measures the engine under
//! concurrent requests, `bench-prefill` a long prompt arriving into running streams, `quantize-glide` stores a
//! GLIDE drafter's matrices in Q8_0.

mod bench;
mod bench_gpu;
mod bench_load;
mod bench_prefill;
mod bench_spec;
mod generate;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "specd",
    version,
    about = "Speculative-decoding LLM inference server"
)]
struct Cli {
    /// Worker threads for the model's arithmetic (default: all cores).
    #[arg(long, global = true, env = "SPECD_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models over WebSocket and OpenAI-compatible HTTP, with a demo page.
    Serve(serve::ServeArgs),
    /// Generate text from a prompt and stream it to stdout.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode tokens/s of a model.
    Bench(bench::BenchArgs),
    /// Compare speculative decoding methods with target-only decoding on a prompt set.
    BenchSpec(bench_spec::BenchSpecArgs),
    /// Measure the engine under concurrent requests, speculation on and off.
    BenchLoad(bench_load::BenchLoadArgs),
    /// Measure running streams' inter-token latency while a long prompt is prefilled, whole
    /// and in chunks.
    BenchPrefill(bench_prefill::BenchPrefillArgs),
    /// Drive a running specd over its WebSocket protocol: a closed-loop concurrency sweep
    /// (what `specd-loadtest` does).
    Loadtest(specd_loadtest::cli::LoadtestArgs),
    /// Rewrite a GLIDE drafter file with its matrices in Q8_0 blocks (about half the bytes of
    /// bf16; for a quantized target it drafts exactly as before).
    QuantizeGlide(QuantizeGlideArgs),
}

#[derive(clap::Args)]
struct QuantizeGlideArgs {
    /// The GLIDE file to read (the training script's output).
    input: std::path::PathBuf,
    /// Where to write the rewritten file (not the input itself).
    output: std::path::PathBuf,
}

fn quantize_glide(args: QuantizeGlideArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.input != args.output,
        "quantize-glide writes a new file: give an output path other than the input"
    );
    let n = specd_engine::model::glide::quantize_glide(&args.input, &args.output)?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {n} matrices in Q8_0, {} bytes (from {})",
        args.output.display(),
        size(&args.output),
        size(&args.input)
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes on one line; no backtrace for user errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        // candle and rayon size their pools from this variable at first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchSpec(args) => bench_spec::run(args),
        Command::BenchLoad(args) => bench_load::run(args),
        Command::BenchPrefill(args) => bench_prefill::run(args),
        Command::Loadtest(args) => specd_loadtest::cli::run(args),
        Command::QuantizeGlide(args) => quantize_glide(args),
    }
}
