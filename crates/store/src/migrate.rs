//! Schema migrations (plain SQL in `migrations/`, applied by refinery) and retention.

use anyhow::Context;
use chrono::{Days, Utc};
use deadpool_postgres::Pool;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Arbitrary constant: the advisory lock that serialises concurrent migrators.
const MIGRATION_LOCK: i64 = 0x7172_3377_6862_0001;
const RETENTION_LOCK: i64 = 0x7172_3377_6862_0002;

/// Applies pending migrations and creates the delivery-log partitions. Several processes
/// may call it at once: a session-level advisory lock lets one migrate at a time.
pub async fn migrate(pool: &Pool, retention_days: u32) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot connect to the database")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot take the migration lock")?;
    let result = async {
        let client: &mut tokio_postgres::Client = &mut client;
        let report = embedded::migrations::runner()
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
    result?;
    run_retention(pool, retention_days).await
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
