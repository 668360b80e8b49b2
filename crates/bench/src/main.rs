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

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;

use procs::Env;

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

/// A run's own database and broker namespace, and the environment pointing at them.
pub struct Run {
    pub id: String,
    pub prefix: String,
    pub db_url: String,
    pub db_server_base: String,
    pub api_port: u16,
    pub env: Env,
}

impl Run {
    pub fn new(kind: &str, common: &Common) -> anyhow::Result<Self> {
        if !common.bin.exists() {
            bail!("{} does not exist: build it first", common.bin.display());
        }
        std::fs::create_dir_all(&common.out)?;
        let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let prefix = format!("{kind}_{id}");
        let base = common
            .database
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or_else(|| common.database.clone());
        let db_url = format!("{base}/qr3_{kind}_{id}");
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let api_port = free_port()?;
        let env = Env {
            bin: common.bin.clone(),
            logs: common.out.join("logs"),
            vars: vec![
                ("QR3__DATABASE__URL".into(), db_url.clone()),
                ("QR3__AMQP__URL".into(), common.amqp.clone()),
                ("QR3__AMQP__PREFIX".into(), prefix.clone()),
                (
                    "QR3__AMQP__EVENTS_EXCHANGE".into(),
                    format!("{prefix}.events"),
                ),
                (
                    "QR3__SECRETS__ENCRYPTION_KEY".into(),
                    base64::engine::general_purpose::STANDARD.encode(key),
                ),
                // Only so the receivers may live on 127.0.0.1; everything else is production.
                ("QR3__DELIVERY__ALLOW_PRIVATE_TARGETS".into(), "true".into()),
                ("QR3__API__REQUIRE_HTTPS".into(), "false".into()),
                ("QR3__API__LISTEN".into(), format!("127.0.0.1:{api_port}")),
                ("QR3__METRICS__LISTEN".into(), "127.0.0.1:0".into()),
                ("QR3__LOG__LEVEL".into(), "warn".into()),
            ],
        };
        Ok(Self {
            id,
            prefix,
            db_url,
            db_server_base: base,
            api_port,
            env,
        })
    }

    /// Deletes the run's queues, exchange and database.
    pub async fn cleanup(&self, amqp: &str) {
        if let Ok(connection) = qr3_broker::connect(amqp, "qr3-bench-cleanup").await {
            if let Ok(channel) = connection.create_channel().await {
                let prefix = &self.prefix;
                let mut names = vec![
                    format!("{prefix}.ingest"),
                    format!("{prefix}.ingest.dead"),
                    format!("{prefix}.deliveries"),
                    format!("{prefix}.deliveries.dead"),
                    format!("{prefix}.ceiling"),
                    format!("{prefix}.ceiling.hops.a"),
                    format!("{prefix}.ceiling.hops.b"),
                ];
                for (key, value) in &self.env.vars {
                    if key == "QR3__DELIVERY__RETRY_DELAYS_MS" {
                        names.extend(
                            value
                                .split(',')
                                .map(|d| format!("{prefix}.retry.{}ms", d.trim())),
                        );
                    }
                }
                names.extend([60_000, 300_000].map(|d| format!("{prefix}.retry.{d}ms")));
                names.extend([1000, 2000, 4000, 8000].map(|d| format!("{prefix}.defer.{d}ms")));
                for name in names {
                    let _ = channel.queue_delete(name.into(), Default::default()).await;
                }
                let _ = channel
                    .exchange_delete(format!("{prefix}.operator").into(), Default::default())
                    .await;
                let _ = channel
                    .exchange_delete(format!("{prefix}.events").into(), Default::default())
                    .await;
            }
        }
        if let Ok(client) =
            qr3_store::connect_once(&format!("{}/postgres", self.db_server_base)).await
        {
            let name = self
                .db_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let _ = client
                .batch_execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
                .await;
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
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
    let mut run = Run::new("bench", &args.common)?;
    run.env.vars.extend(args.settings.iter().cloned());
    println!(
        "qr3-bench: run {} ({}), {} sender(s), {} ingest(s){}",
        run.id,
        if args.quick { "quick" } else { "full" },
        args.senders,
        args.ingests,
        args.settings
            .iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    run.env.run(&["migrate"]).context("migrate")?;
    let result = workloads::run_all(&args, sizes, &run.env, &run.db_url, run.api_port).await;
    run.cleanup(&args.common.amqp).await;
    let report = result?;
    report::write(&args.common.out, &report)?;
    report::print(&report);
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
