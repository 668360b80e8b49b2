//! Connection pool, and creating the database on first start.

use std::str::FromStr;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
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

/// Creates the database `url` names, through the `postgres` maintenance database, when
/// it does not exist yet. Safe when several processes do it at once.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let name = database_name(url)?;
    let mut admin = tokio_postgres::Config::from_str(url)?;
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .context("cannot connect to the postgres maintenance database")?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("cannot look up the database")?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e).context("cannot create the database"),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}
