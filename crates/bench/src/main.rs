//! `qr3-bench` (run through `cargo xtask bench` and `cargo xtask chaos`): starts the
//! roles as separate processes on a fresh database and broker prefix, then either
//! drives the benchmark workloads W1–W5 against ceilings measured in the same run, or
//! injects faults under a steady event stream and checks that nothing was lost.

#![forbid(unsafe_code)]

mod behaviour;
mod ceilings;
mod chaos;
mod chaos_receiver;
mod cluster;
mod cluster_nodes;
mod cost;
mod cpu;
mod mixed;
mod procs;
mod receiver;
mod report;
mod workloads;

use std::path::PathBuf;

use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;

use qr3_testkit::{Deployment, Logs};

#[derive(Parser)]
#[command(
    name = "qr3-bench",
    about = "qr3 webhooks benchmark and fault-injection harness"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Throughput, latency, isolation and memory against measured ceilings.
    Bench(Args),
    /// Fault injection under a steady stream: kills, connection drops, bad receivers.
    Chaos(chaos::ChaosArgs),
    /// A three-node RabbitMQ cluster on this machine loses the workers' node.
    Cluster(cluster::ClusterArgs),
}

/// What every run needs to find the system and its services.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// The qr3-webhooks binary to run.
    #[arg(long)]
    pub bin: PathBuf,
    /// Where the report, plots and logs go.
    #[arg(long)]
    pub out: PathBuf,
    /// Postgres server (a database is created on it for the run).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
}

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// About a minute: smaller workloads.
    #[arg(long)]
    pub quick: bool,
    /// Sender processes.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Ingest processes.
    #[arg(long, default_value_t = 1)]
    pub ingests: usize,
    /// A setting for every process, as `section.key=value` (repeatable), e.g.
    /// `--set ingest.jobs_per_message=1` to compare with one message per job.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
}

/// `section.key=value` as the environment variable that sets it.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let (section, name) = key
        .split_once('.')
        .ok_or_else(|| format!("{key:?} is not section.key"))?;
    Ok((
        format!(
            "QR3__{}__{}",
            section.to_ascii_uppercase(),
            name.to_ascii_uppercase()
        ),
        value.to_owned(),
    ))
}

/// Sizes of one benchmark run.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub w1_events: usize,
    pub w2_events: usize,
    /// W7: events to one webhook answering in `W7_LATENCY_MS`.
    pub w7_events: usize,
    /// W6: events per second fanned out to its 1,000 webhooks, and for how long.
    pub w6_rate: usize,
    pub w6_seconds: u64,
    pub w3_seconds: u64,
    pub w3_rate: usize,
    pub ceiling_messages: usize,
}

/// A run's own deployment: a fresh database and broker prefix named after `kind`, the
/// binary's processes with their logs under `<out>/logs`, a key of its own, and
/// production settings but for receivers on 127.0.0.1.
pub fn deployment(kind: &str, common: &Common) -> anyhow::Result<Deployment> {
    std::fs::create_dir_all(&common.out)?;
    let mut deployment = Deployment::on(kind, &common.database, &common.amqp)?
        .with_binary(&common.bin, Logs::In(common.out.join("logs")))?;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    deployment
        .unset("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY")
        .set(
            "QR3__SECRETS__ENCRYPTION_KEY",
            &base64::engine::general_purpose::STANDARD.encode(key),
        )
        .set("QR3__LOG__LEVEL", "warn");
    Ok(deployment)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Bench(args) => bench(args).await,
        Mode::Chaos(args) => chaos::run(args).await,
        Mode::Cluster(args) => cluster::run(args).await,
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let sizes = if args.quick {
        Sizes {
            w1_events: 5_000,
            w2_events: 1_000,
            w7_events: 2_000,
            w6_rate: 1,
            w6_seconds: 30,
            w3_seconds: 5,
            w3_rate: 500,
            ceiling_messages: 10_000,
        }
    } else {
        Sizes {
            w1_events: 20_000,
            w2_events: 5_000,
            w7_events: 6_000,
            w6_rate: 1,
            w6_seconds: 120,
            w3_seconds: 20,
            w3_rate: 500,
            ceiling_messages: 40_000,
        }
    };
    let mut run = deployment("bench", &args.common)?;
    for (key, value) in &args.settings {
        run.set(key, value);
    }
    for queue in ["ceiling", "ceiling.hops.a", "ceiling.hops.b"] {
        run.owns_queue(format!("{}.{queue}", run.name));
    }
    println!(
        "qr3-bench: run {} ({}), {} sender(s), {} ingest(s){}",
        run.name,
        if args.quick { "quick" } else { "full" },
        args.senders,
        args.ingests,
        args.settings
            .iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    run.migrate()?;
    let result = workloads::run_all(&args, sizes, &run).await;
    // Removes the run's queues, exchanges and database.
    drop(run);
    let report = result?;
    report::write(&args.common.out, &report)?;
    report::print(&report);
    Ok(())
}
