//! `qr3-bench` (run through `cargo xtask bench`): starts ingest, sender and api as
//! separate release processes with production settings on a fresh database and broker
//! prefix, drives the workloads W1–W5 through the real broker to a local receiver, and
//! reports each figure next to the ceiling measured in the same run.

#![forbid(unsafe_code)]

mod ceilings;
mod cpu;
mod procs;
mod receiver;
mod report;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::Parser;
use rand::RngCore;

use procs::Env;

#[derive(Parser, Clone)]
#[command(name = "qr3-bench", about = "qr3 webhooks end-to-end benchmark")]
pub struct Args {
    /// About a minute: smaller workloads.
    #[arg(long)]
    pub quick: bool,
    /// Sender processes.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Ingest processes.
    #[arg(long, default_value_t = 1)]
    pub ingests: usize,
    /// The qr3-webhooks binary to run (release build).
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

/// Sizes of one run.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub w1_events: usize,
    pub w2_events: usize,
    pub w3_seconds: u64,
    pub w3_rate: usize,
    pub ceiling_messages: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes {
            w1_events: 5_000,
            w2_events: 1_000,
            w3_seconds: 5,
            w3_rate: 500,
            ceiling_messages: 10_000,
        }
    } else {
        Sizes {
            w1_events: 20_000,
            w2_events: 5_000,
            w3_seconds: 20,
            w3_rate: 500,
            ceiling_messages: 40_000,
        }
    };
    if !args.bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p qr3-webhooks`",
            args.bin.display()
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let run = ulid::Ulid::new().to_string().to_ascii_lowercase();
    let prefix = format!("bench_{run}");
    let base = args
        .database
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| args.database.clone());
    let db_url = format!("{base}/qr3_bench_{run}");
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let api_port = free_port()?;
    let env = Env {
        bin: args.bin.clone(),
        logs: args.out.join("logs"),
        vars: vec![
            ("QR3__DATABASE__URL".into(), db_url.clone()),
            ("QR3__AMQP__URL".into(), args.amqp.clone()),
            ("QR3__AMQP__PREFIX".into(), prefix.clone()),
            (
                "QR3__AMQP__EVENTS_EXCHANGE".into(),
                format!("{prefix}.events"),
            ),
            (
                "QR3__SECRETS__ENCRYPTION_KEY".into(),
                base64::engine::general_purpose::STANDARD.encode(key),
            ),
            // Only so the receiver may live on 127.0.0.1; everything else is production.
            ("QR3__DELIVERY__ALLOW_PRIVATE_TARGETS".into(), "true".into()),
            ("QR3__API__REQUIRE_HTTPS".into(), "false".into()),
            ("QR3__API__LISTEN".into(), format!("127.0.0.1:{api_port}")),
            ("QR3__METRICS__LISTEN".into(), "127.0.0.1:0".into()),
            ("QR3__LOG__LEVEL".into(), "warn".into()),
        ],
    };
    println!(
        "qr3-bench: run {run} ({}), {} sender(s), {} ingest(s)",
        if args.quick { "quick" } else { "full" },
        args.senders,
        args.ingests
    );
    env.run(&["migrate"]).context("migrate")?;
    let result = workloads::run_all(&args, sizes, &env, &db_url, api_port).await;
    cleanup(&args, &prefix, &base, &run).await;
    let report = result?;
    report::write(&args.out, &report)?;
    report::print(&report);
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn cleanup(args: &Args, prefix: &str, base: &str, run: &str) {
    if let Ok(connection) = qr3_broker::connect(&args.amqp, "qr3-bench-cleanup").await {
        if let Ok(channel) = connection.create_channel().await {
            let mut names = vec![
                format!("{prefix}.ingest"),
                format!("{prefix}.ingest.dead"),
                format!("{prefix}.deliveries"),
                format!("{prefix}.deliveries.dead"),
                format!("{prefix}.ceiling"),
            ];
            names.extend([60_000, 300_000].map(|d| format!("{prefix}.retry.{d}ms")));
            names.push(format!("{prefix}.defer.1000ms"));
            for name in names {
                let _ = channel.queue_delete(name.into(), Default::default()).await;
            }
            let _ = channel
                .exchange_delete(format!("{prefix}.events").into(), Default::default())
                .await;
        }
    }
    if let Ok((client, conn)) = tokio_postgres_connect(&format!("{base}/postgres")).await {
        let task = tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS qr3_bench_{run} WITH (FORCE)"
            ))
            .await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

async fn tokio_postgres_connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    tokio_postgres::Error,
> {
    tokio_postgres::connect(url, tokio_postgres::NoTls).await
}
