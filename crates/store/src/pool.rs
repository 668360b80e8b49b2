//! Connection pool, and creating the database on first start.
//!
//! Only creating a missing database goes through the `postgres` maintenance database:
//! connecting to, checking and migrating an existing one needs nothing but the
//! database itself, which is all many managed Postgres roles may connect to.

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use crate::tls::DatabaseTarget;

/// A pool of `size` connections to `url` (TLS as its `sslmode` says). Connections are
/// made lazily.
pub fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let target = DatabaseTarget::parse(url)?;
    let manager = Manager::from_config(
        target.config().clone(),
        target.tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .build()
        .context("cannot build the database pool")
}

/// One connection to `url` outside any pool (TLS as its `sslmode` says), its driver on
/// a task of its own until the client is dropped: for tools and maintenance statements.
pub async fn connect_once(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let target = DatabaseTarget::parse(url)?;
    target
        .connect()
        .await
        .map_err(|error| target.explain(error))
}

/// The database a URL names (Postgres defaults it to the user name).
pub fn database_name(url: &str) -> anyhow::Result<String> {
    Ok(DatabaseTarget::parse(url)?.database_name())
}

/// Whether `error` is the server saying the database does not exist (SQLSTATE 3D000).
pub fn is_missing_database(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::INVALID_CATALOG_NAME)
}

/// Creates the database `url` names when it does not exist yet. Safe when several
/// processes do it at once.
///
/// It first connects to the database itself: when that works, nothing else is touched.
/// Only when the server answers that the database does not exist does it connect to
/// the `postgres` maintenance database to create it.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let target = DatabaseTarget::parse(url)?;
    match target.connect().await {
        Ok(_client) => return Ok(()),
        Err(error) if is_missing_database(&error) => {}
        Err(error) => return Err(target.explain(error)),
    }
    let name = target.database_name();
    let admin = target.with_dbname("postgres");
    let client = admin.connect().await.map_err(|error| {
        admin.explain(error).context(format!(
            "database {name:?} does not exist, and creating it needs the postgres maintenance database, which cannot be reached"
        ))
    })?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => tracing::info!(database = %name, "created database"),
        // Another process created it between our two connections.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
        Err(e) => return Err(e).context("cannot create the database"),
    }
    Ok(())
}
