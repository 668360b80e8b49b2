//! Test harness shared by the integration tests: every test gets its own Postgres
//! database and its own broker namespace (`amqp.prefix`), so tests run in parallel
//! against the real services, and a recording HTTP receiver on 127.0.0.1.

#![forbid(unsafe_code)]

pub mod db;
pub mod receiver;

pub use db::TestDb;
pub use receiver::{Behaviour, Received, Receiver};

use qr3_config::Settings;

/// Postgres server the tests use (override with `QR3_TEST_DATABASE_URL`).
pub fn database_server_url() -> String {
    std::env::var("QR3_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ the tests use (override with `QR3_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("QR3_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique, short name for this test's resources.
pub fn unique_name(kind: &str) -> String {
    format!(
        "qr3_{kind}_{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// Settings for a test: its own database and broker prefix, ports chosen by the OS,
/// millisecond retry delays, local receivers allowed, the development key.
pub fn test_settings(database_url: &str) -> Settings {
    let mut s = Settings::defaults();
    s.database.url = qr3_config::Redacted::new(database_url.to_owned());
    s.database.pool_size = 8;
    s.amqp.url = qr3_config::Redacted::new(amqp_url());
    let prefix = unique_name("t");
    s.amqp.events_exchange = format!("{prefix}.events");
    s.amqp.prefix = prefix;
    s.api.listen = "127.0.0.1:0".parse().expect("literal address");
    s.api.require_https = false;
    s.api.ping_wait_ms = 3000;
    s.metrics.listen = "127.0.0.1:0".parse().expect("literal address");
    s.delivery.retry_delays_ms = vec![100, 200];
    s.delivery.timeout_ms = 1000;
    s.delivery.allow_private_targets = true;
    s.delivery.concurrency = 64;
    s.delivery.webhook_cache_ms = 50;
    s.delivery.log_flush_ms = 5;
    s.ingest.subscription_cache_ms = 50;
    s.secrets.allow_insecure_dev_key = true;
    s.shutdown.grace_period_ms = 5000;
    s
}
