//! The operator interface of SPEC "Stable operator interface": subcommands and options.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qr3_config::Settings;

use crate::app::{self, Roles};
use crate::operator;

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
    /// Run api, ingest and sender in one process (local use), with database maintenance.
    All,
    /// Database maintenance (partitions, retention) once, then exit: run it hourly.
    Maintain {
        /// Run it every retention.maintain_every_ms until stopped, where nothing
        /// schedules it.
        #[arg(long)]
        repeat: bool,
    },
    /// Manage workspaces (as `/admin/v1/workspaces` does).
    Workspace {
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// Manage a workspace's API keys (as `/admin/v1/workspaces/{id}/api-keys` does).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
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
        /// A name for people (1 to 200 characters); not unique.
        name: String,
        /// The platform's own id for it (1 to 64 of A-Z a-z 0-9 _ -); a `ws_…` id is
        /// generated when omitted. Fails if the id exists.
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete a workspace and erase its webhooks, API keys, delivery log and ingest
    /// claims; prints what was erased. Repeat it if it was interrupted.
    Delete {
        /// The workspace's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Mint another API key; prints {"id", "api_key", "created_at"} (the key only now).
    Create {
        /// The workspace's id.
        #[arg(long)]
        workspace: String,
    },
    /// List a workspace's API keys, revoked ones included, without secrets.
    List {
        /// The workspace's id.
        #[arg(long)]
        workspace: String,
    },
    /// Revoke an API key: every request with it answers 401 from now on.
    Revoke {
        /// The workspace's id.
        #[arg(long)]
        workspace: String,
        /// The key's id (`key_…`, as `api-key list` shows it).
        key_id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Workspace the event belongs to (its id: the platform's own, or a `ws_…` one).
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
    // Every node URL must parse, or no role could ever connect (the error names the
    // entry's position, not the URL).
    qr3_broker::Nodes::parse(settings.amqp.url.expose()).context("invalid configuration")?;
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
        Command::Maintain { repeat: false } => crate::maintain::maintain(&settings).await,
        Command::Maintain { repeat: true } => crate::maintain::repeat(&settings).await,
        Command::Workspace { command } => {
            let printed = match command {
                WorkspaceCommand::Create { name, id } => {
                    operator::create_workspace(&settings, &name, id.as_deref()).await?
                }
                WorkspaceCommand::Delete { id } => {
                    operator::delete_workspace(&settings, &id).await?
                }
            };
            operator::print(&printed);
            Ok(())
        }
        Command::ApiKey { command } => {
            let printed = match command {
                ApiKeyCommand::Create { workspace } => {
                    operator::create_api_key(&settings, &workspace).await?
                }
                ApiKeyCommand::List { workspace } => {
                    operator::list_api_keys(&settings, &workspace).await?
                }
                ApiKeyCommand::Revoke { workspace, key_id } => {
                    operator::revoke_api_key(&settings, &workspace, &key_id).await?
                }
            };
            operator::print(&printed);
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
