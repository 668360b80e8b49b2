//! Database maintenance, apart from the roles: `qr3-webhooks maintain` runs it once and
//! exits (a Kubernetes CronJob), and the `all` process runs it every
//! `retention.maintain_every_ms`. It creates the coming days' delivery-log partitions,
//! drops those older than `retention.delivery_log_days`, and forgets old ingest claims
//! and rotated-out secrets past their grace (`qr3_store::run_retention`). No role
//! depends on it running often: partitions are created days ahead, so senders can
//! scale to zero.

use std::time::Duration;

use anyhow::Context;
use qr3_config::Settings;
use qr3_store::Pool;
use tokio_util::sync::CancellationToken;

/// The `maintain` subcommand: one pass, then exit. Fails (non-zero exit, so the
/// CronJob retries) when the database cannot be reached or refuses.
pub async fn maintain(settings: &Settings) -> anyhow::Result<()> {
    let pool = qr3_store::connect(settings.database.url.expose(), 2)?;
    let result = match qr3_store::check_schema(&pool).await {
        Ok(qr3_store::SchemaCheck::UpToDate { .. }) => {
            qr3_store::run_retention(&pool, settings.retention.delivery_log_days).await
        }
        Ok(other) => Err(anyhow::anyhow!(
            "the database is not migrated for this build ({other:?}); run `qr3-webhooks migrate` first"
        )),
        Err(error) => Err(error).context("cannot read the database schema"),
    };
    pool.close();
    result?;
    tracing::info!("database maintenance done");
    Ok(())
}

/// `maintain --repeat`: a pass every `retention.maintain_every_ms` until SIGTERM or
/// ctrl-c (where no scheduler runs it, e.g. Docker Compose).
pub async fn repeat(settings: &Settings) -> anyhow::Result<()> {
    let pool = qr3_store::connect(settings.database.url.expose(), 2)?;
    let result = every(
        pool.clone(),
        settings.clone(),
        qr3_telemetry::shutdown_token(),
    )
    .await;
    pool.close();
    result
}

/// Maintenance every `retention.maintain_every_ms` until `shutdown`, in a process that
/// runs it itself (`all`, `maintain --repeat`). A failed pass (the database away, or not
/// migrated yet) is logged and tried again at the next one.
pub async fn every(
    pool: Pool,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = Duration::from_millis(settings.retention.maintain_every_ms);
    loop {
        if let Err(error) =
            qr3_store::run_retention(&pool, settings.retention.delivery_log_days).await
        {
            tracing::warn!(
                error = format!("{error:#}"),
                "database maintenance failed; will retry"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
