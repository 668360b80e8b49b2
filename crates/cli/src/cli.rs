//! The operator interface of SPEC "Stable operator interface": subcommands and options.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qr3_config::Settings;

use crate::app::{self, Roles};

#[derive(Debug, Parser)]
#[command(
    name = "qr3-webhooks",
    version,
    about = "qr3 webhooks: signed, retried, logged webhook delivery"
)]
pub struct Cli {
    /// TOML configuration file; QR3__SECTION__KEY environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations and declare the broker topology, then exit.
    Migrate,
    /// Run the HTTP API.
    Api,
    /// Run the ingest worker (events → delivery jobs).
    Ingest,
    /// Run the sender worker (delivery jobs → signed HTTP POSTs).
    Sender,
    /// Run api, ingest and sender in one process (local use).
    All,
    /// Manage workspaces.
    Workspace {
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// Publish one event to the events exchange exactly as the platform does.
    Publish(PublishArgs),
    /// List the dead-letter queues' messages, or move them back where they came from.
    DeadLetters(crate::dead_letters::DeadLettersArgs),
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace and its first API key; prints {"workspace_id", "api_key"}.
    Create {
        /// A name for people; not unique.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Workspace the event belongs to (ws_…).
    #[arg(long)]
    pub workspace: String,
    /// Event type, e.g. qr.scanned (also the routing key).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// Event id (evt_…); generated when omitted.
    #[arg(long)]
    pub id: Option<String>,
    /// The event's `data`, a JSON object.
    #[arg(long)]
    pub data: String,
}

/// Runs one parsed command line to completion.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref()).context("cannot load configuration")?;
    qr3_telemetry::init_tracing(&settings.log)?;
    if settings.uses_insecure_dev_key() {
        tracing::warn!("secrets.encryption_key is not set: webhook secrets are protected by the well-known development key");
    }
    match cli.command {
        Command::Migrate => app::migrate(&settings).await,
        Command::Api => app::serve_until_signal(settings, Roles::API).await,
        Command::Ingest => app::serve_until_signal(settings, Roles::INGEST).await,
        Command::Sender => app::serve_until_signal(settings, Roles::SENDER).await,
        Command::All => app::serve_until_signal(settings, Roles::ALL).await,
        Command::Workspace {
            command: WorkspaceCommand::Create { name },
        } => {
            let store = app::open_store(&settings).await?;
            let created = store
                .create_workspace(&name)
                .await
                .context("cannot create the workspace")?;
            println!(
                "{}",
                serde_json::json!({ "workspace_id": created.id, "api_key": created.api_key.token() })
            );
            Ok(())
        }
        Command::Publish(args) => {
            let event_id = crate::publish::publish(&settings, &args).await?;
            println!("{}", serde_json::json!({ "event_id": event_id }));
            Ok(())
        }
        Command::DeadLetters(args) => crate::dead_letters::run(&settings, args).await,
    }
}
