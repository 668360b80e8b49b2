//! `qr3-webhooks dead-letters list|redrive`: what is on the `.dead` queues and why, and
//! moving it back to the queue it came from (`qr3_broker::dead_letters` does the work).
//!
//! `list` prints one JSON object per dead letter; `redrive` prints one JSON summary.
//! Both rotate what they read (see the broker module); neither asks for confirmation,
//! since scripts run them: `redrive --dry-run` says what a redrive would move.

use std::io::Write;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use qr3_broker::dead_letters::{self, DeadQueue, RedriveMode, Scope};
use qr3_broker::Topology;
use qr3_config::Settings;

#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Print each dead letter as one JSON object per line: queue, reason, error, origin
    /// queue, ids, routing key, body size and excerpt. Listed messages move to the tail
    /// of their queue (the order changes); none is lost or counted as redelivered.
    List(Selection),
    /// Move dead letters back to the queue they came from, confirmed, then remove them
    /// from the dead-letter queue; prints {"redriven": n, ...}.
    Redrive {
        #[command(flatten)]
        selection: Selection,
        /// Say what would be moved, and move nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct Selection {
    /// Which dead-letter queue: `<prefix>.ingest.dead` or `<prefix>.deliveries.dead`
    /// (default: both, ingest first).
    #[arg(long, value_enum)]
    pub queue: Option<QueueArg>,
    /// At most this many messages in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum QueueArg {
    Ingest,
    Deliveries,
}

impl Selection {
    fn scope(&self) -> Scope {
        let queues = match self.queue {
            None => DeadQueue::ALL.to_vec(),
            Some(QueueArg::Ingest) => vec![DeadQueue::Ingest],
            Some(QueueArg::Deliveries) => vec![DeadQueue::Deliveries],
        };
        Scope {
            queues,
            limit: self.limit as usize,
        }
    }
}

/// Runs one `dead-letters` command, printing to stdout.
pub async fn run(settings: &Settings, args: DeadLettersArgs) -> anyhow::Result<()> {
    let topology = Topology::from_settings(settings);
    let tls = qr3_broker::BrokerTls::from_settings(&settings.amqp);
    let connection =
        qr3_broker::connect_with_tls(settings.amqp.url.expose(), "qr3-dead-letters", &tls)
            .await
            .context("cannot connect to RabbitMQ")?;
    let outcome = execute(&connection, &topology, args).await;
    let _ = connection.close(200, "done".into()).await;
    outcome
}

async fn execute(
    connection: &lapin::Connection,
    topology: &Topology,
    args: DeadLettersArgs,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match args.command {
        DeadLettersCommand::List(selection) => {
            // A closed stdout (`| head`) must not stop the listing half-way through a
            // message, so a failed write only ends the printing.
            let mut printing = true;
            dead_letters::list(connection, topology, &selection.scope(), |letter| {
                if printing {
                    let line = serde_json::to_string(&letter).expect("a DeadLetter serialises");
                    printing = writeln!(out, "{line}").is_ok();
                }
            })
            .await
            .context("cannot list dead letters")?;
        }
        DeadLettersCommand::Redrive { selection, dry_run } => {
            let mode = if dry_run {
                RedriveMode::DryRun
            } else {
                RedriveMode::Move
            };
            let summary = dead_letters::redrive(connection, topology, &selection.scope(), mode)
                .await
                .context("cannot redrive dead letters")?;
            writeln!(out, "{}", serde_json::to_string(&summary)?)?;
        }
    }
    out.flush()?;
    Ok(())
}
