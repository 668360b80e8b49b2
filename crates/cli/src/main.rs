//! `qr3-webhooks`: the one binary. Parses the command line, loads configuration, sets up
//! logging, and hands over to the library; reports how it ended.

use std::process::ExitCode;

use clap::Parser;
use qr3_webhooks::cli::Cli;

/// jemalloc rather than the system's malloc: per-thread caches and size classes instead of
/// the chunk consolidation glibc's malloc does on free, which cost the workers about a
/// quarter of their CPU (docs/benchmarks.md, "Cost per delivery").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Fault injection for the chaos suite, from FAILPOINTS (built with `failpoints` only).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match qr3_webhooks::cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "qr3-webhooks failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
