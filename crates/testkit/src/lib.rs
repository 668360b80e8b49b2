//! Test harness shared by the integration tests, the benchmark and `cargo xtask`: every
//! test or run gets its own Postgres database and its own broker namespace
//! (`amqp.prefix`), so they run in parallel against the real services, with
//! `qr3-webhooks` processes started on them ([`Deployment`]); a reader of a process's
//! memory and CPU time ([`procfs`]); a recording HTTP receiver on 127.0.0.1, and a TCP
//! proxy that takes a service away from one process and brings it back.

#![forbid(unsafe_code)]

pub mod ca;
pub mod db;
pub mod deployment;
pub mod procfs;
pub mod proxy;
pub mod receiver;
pub mod service;
pub mod tls_postgres;
pub mod tls_rabbitmq;

pub use db::TestDb;
pub use deployment::{Deployment, Logs, Process};
pub use proxy::TcpProxy;
pub use receiver::{Behaviour, Received, Receiver};
pub use tls_postgres::TlsPostgres;
pub use tls_rabbitmq::TlsRabbitMq;

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

/// `url` (`scheme://[user[:password]@]host[:port]/…`) with its host and port replaced by
/// `addr`: the same service, reached through a [`TcpProxy`].
pub fn url_via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let userinfo = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// The `host:port` of `url`, for [`TcpProxy::closed`].
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redirected_to_a_proxy() {
        let addr: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            url_via("postgres://postgres@127.0.0.1:5432/qr3_db_x", addr),
            "postgres://postgres@127.0.0.1:4000/qr3_db_x"
        );
        assert_eq!(
            url_via("amqp://guest:guest@localhost:5672/%2f", addr),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(
            host_port("amqp://guest:guest@localhost:5672/%2f", 5672),
            "localhost:5672"
        );
        assert_eq!(host_port("postgres://postgres@db/x", 5432), "db:5432");
    }
}
