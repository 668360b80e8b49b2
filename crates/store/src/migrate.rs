//! Schema migrations (plain SQL in `migrations/`, applied by refinery), the check that a
//! database's schema is recent enough for this build, and retention.

use anyhow::Context;
use chrono::{Days, Utc};
use deadpool_postgres::Pool;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Arbitrary constant: the advisory lock that serialises concurrent migrators.
const MIGRATION_LOCK: i64 = 0x7172_3377_6862_0001;
const RETENTION_LOCK: i64 = 0x7172_3377_6862_0002;

/// refinery's record of the migrations applied to a database.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// A database's schema compared with what this build needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaCheck {
    /// The database does not exist.
    NoDatabase,
    /// The schema is older than this build: migrations up to `applied` are applied
    /// (`None`: none at all) and this build needs `required`.
    Behind { applied: Option<u32>, required: u32 },
    /// At least `required` is applied. It may be newer (a later release migrated it):
    /// migrations keep the previous release working, so that is fine.
    UpToDate { applied: u32, required: u32 },
}

/// The schema version this build needs: its newest embedded migration.
pub fn required_schema_version() -> u32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// Compares the database's schema with [`required_schema_version`], reading only
/// refinery's history table: it needs no privilege beyond reading it, and changes
/// nothing.
pub async fn check_schema(pool: &Pool) -> anyhow::Result<SchemaCheck> {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(deadpool_postgres::PoolError::Backend(error)) if crate::is_missing_database(&error) => {
            return Ok(SchemaCheck::NoDatabase)
        }
        Err(error) => return Err(error).context("cannot connect to the database"),
    };
    let required = required_schema_version();
    let has_history: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY_TABLE])
        .await
        .context("cannot look for the migration history")?
        .get(0);
    let applied: Option<i32> = if has_history {
        client
            .query_one(&format!("SELECT max(version) FROM {HISTORY_TABLE}"), &[])
            .await
            .context("cannot read the migration history")?
            .get(0)
    } else {
        None
    };
    let applied = applied.and_then(|v| u32::try_from(v).ok());
    Ok(match applied {
        Some(applied) if applied >= required => SchemaCheck::UpToDate { applied, required },
        applied => SchemaCheck::Behind { applied, required },
    })
}

/// Applies pending migrations and creates the delivery-log partitions. Several processes
/// may call it at once: a session-level advisory lock lets one migrate at a time.
pub async fn migrate(pool: &Pool, retention_days: u32) -> anyhow::Result<()> {
    apply(pool, refinery::Target::Latest).await?;
    run_retention(pool, retention_days).await
}

/// Applies the migrations up to `version` only, as an older release would have left the
/// database (for tests of a schema older than this build needs; there is no way back
/// down).
pub async fn migrate_to(pool: &Pool, version: u32) -> anyhow::Result<()> {
    apply(pool, refinery::Target::Version(version)).await
}

async fn apply(pool: &Pool, target: refinery::Target) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot connect to the database")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot take the migration lock")?;
    let result = async {
        let client: &mut tokio_postgres::Client = &mut client;
        let report = embedded::migrations::runner()
            .set_target(target)
            .run_async(client)
            .await
            .context("migration failed")?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "applied migration");
        }
        anyhow::Ok(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot release the migration lock")?;
    result
}

/// Keeps the delivery log's partitions in shape: creates the next week's daily
/// partitions and drops those older than `retention_days`, forgets ingest claims older
/// than that, and forgets rotated-out secrets whose grace period is over. Idempotent;
/// the workers call it periodically.
pub async fn run_retention(pool: &Pool, retention_days: u32) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot connect to the database")?;
    let tx = client
        .transaction()
        .await
        .context("cannot start the retention transaction")?;
    // Concurrent workers run this too; one at a time avoids racing on CREATE TABLE.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RETENTION_LOCK])
        .await
        .context("cannot take the retention lock")?;
    let today = Utc::now().date_naive();
    let first = today - Days::new(1);
    let keep_from = today - Days::new(u64::from(retention_days));
    tx.execute("SELECT qr3_ensure_delivery_partitions($1, 9)", &[&first])
        .await
        .context("cannot create delivery-log partitions")?;
    let dropped: i32 = tx
        .query_one(
            "SELECT qr3_drop_delivery_partitions_before($1)",
            &[&keep_from],
        )
        .await
        .context("cannot drop old delivery-log partitions")?
        .get(0);
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days));
    tx.execute(
        "DELETE FROM delivery_attempts_default WHERE created_at < $1",
        &[&cutoff],
    )
    .await
    .context("cannot expire rows of the default delivery-log partition")?;
    tx.execute(
        "DELETE FROM event_payloads_default WHERE created_at < $1",
        &[&cutoff],
    )
    .await
    .context("cannot expire payloads of the default delivery-log partition")?;
    for default in ["delivery_log_default", "delivery_log_payloads_default"] {
        tx.execute(
            &format!("DELETE FROM {default} WHERE created_at < $1"),
            &[&cutoff],
        )
        .await
        .with_context(|| format!("cannot expire rows of {default}"))?;
    }
    tx.execute(
        "DELETE FROM ingested_events WHERE claimed_at < $1",
        &[&cutoff],
    )
    .await
    .context("cannot expire ingest claims")?;
    tx.execute(
        "DELETE FROM webhook_previous_secrets WHERE expires_at <= $1",
        &[&Utc::now()],
    )
    .await
    .context("cannot forget expired rotated-out secrets")?;
    tx.commit().await.context("cannot commit retention")?;
    if dropped > 0 {
        tracing::info!(dropped, "dropped expired delivery-log partitions");
    }
    Ok(())
}
