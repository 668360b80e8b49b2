//! Connection pool, and creating the database on first start.
//!
//! Only creating a missing database goes through the `postgres` maintenance database:
//! connecting to, checking and migrating an existing one needs nothing but the
//! database itself, which is all many managed Postgres roles may connect to.

use std::str::FromStr;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// A pool of `size` connections to `url`. Connections are made lazily.
pub fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config = tokio_postgres::Config::from_str(url)
        .context("database.url is not a valid Postgres URL")?;
    let manager = Manager::from_config(
        config,
        NoTls,
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

/// The database a URL names (Postgres defaults it to the user name).
pub fn database_name(url: &str) -> anyhow::Result<String> {
    let config = tokio_postgres::Config::from_str(url)
        .context("database.url is not a valid Postgres URL")?;
    Ok(config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_owned())
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
    let config = tokio_postgres::Config::from_str(url)
        .context("database.url is not a valid Postgres URL")?;
    match config.connect(NoTls).await {
        Ok((client, connection)) => {
            let driver = tokio::spawn(connection);
            drop(client);
            let _ = driver.await;
            return Ok(());
        }
        Err(error) if is_missing_database(&error) => {}
        Err(error) => return Err(error).context("cannot connect to the database"),
    }
    let name = database_name(url)?;
    let mut admin = config;
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await.with_context(|| {
        format!(
            "database {name:?} does not exist, and creating it needs the postgres maintenance database, which cannot be reached"
        )
    })?;
    let driver = tokio::spawn(connection);
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
    drop(client);
    let _ = driver.await;
    Ok(())
}
