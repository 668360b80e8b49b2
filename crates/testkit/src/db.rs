//! A fresh, migrated database per test, dropped when the test ends.

use qr3_config::Settings;
use qr3_store::{SecretCipher, Store};

use crate::{database_server_url, unique_name};

/// A database created for one test. Dropping it drops the database.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub store: Store,
    admin_url: String,
}

impl TestDb {
    /// Creates `qr3_db_<ulid>` on the test server and applies the migrations.
    pub async fn new() -> anyhow::Result<Self> {
        let db = Self::empty().await?;
        qr3_store::migrate(
            db.store.pool(),
            Settings::defaults().retention.delivery_log_days,
        )
        .await?;
        Ok(db)
    }

    /// Creates `qr3_db_<ulid>` on the test server without migrating it: no tables.
    pub async fn empty() -> anyhow::Result<Self> {
        let db = Self::missing()?;
        qr3_store::create_database_if_missing(&db.url).await?;
        Ok(db)
    }

    /// Names `qr3_db_<ulid>` on the test server without creating it; dropped at the end
    /// if something created it meanwhile.
    pub fn missing() -> anyhow::Result<Self> {
        Self::missing_on(&database_server_url(), unique_name("db"))
    }

    /// Names the database `name` on the server `admin_url` reaches (through its
    /// maintenance database) without creating it; dropped at the end if it exists.
    pub fn missing_on(admin_url: &str, name: String) -> anyhow::Result<Self> {
        let admin_url = admin_url.to_owned();
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        let url = format!("{base}/{name}");
        let settings = {
            let mut s = Settings::defaults();
            s.secrets.allow_insecure_dev_key = true;
            s
        };
        let pool = qr3_store::connect(&url, 8)?;
        let store = Store::new(pool, SecretCipher::new(&settings.encryption_key()?));
        Ok(Self {
            name,
            url,
            store,
            admin_url,
        })
    }

    /// The server's maintenance database, for statements about this one.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Whether the database exists on the server (asked through the maintenance
    /// database).
    pub async fn exists(&self) -> anyhow::Result<bool> {
        let client = qr3_store::connect_once(&self.admin_url).await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.name],
            )
            .await?
            .is_some())
    }

    /// Runs one SQL statement and returns its rows (for assertions on raw rows).
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        let client = self.store.pool().get().await?;
        Ok(client.query(sql, &[]).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.store.pool().close();
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop cannot await: a short-lived thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = qr3_store::connect_once(&admin_url).await.ok()?;
                // A test (or a chaos scenario) may have closed it to connections.
                let _ = client
                    .batch_execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
                    .await;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}
