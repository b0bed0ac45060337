//! `specd-loadtest`: a closed-loop concurrency sweep against a running specd.
//!
//! ```sh
//! specd serve &                         # on 127.0.0.1:8000
//! specd-loadtest --concurrency 1,2,4,8 --requests 40 --max-tokens 64 --json out.json
//! ```

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Drives a running specd over its WebSocket protocol and reports latency, throughput and speculation"
)]
struct Cli {
    #[command(flatten)]
    args: specd_loadtest::cli::LoadtestArgs,
}

fn main() -> std::process::ExitCode {
    match specd_loadtest::cli::run(Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
