//! Connecting to RabbitMQ, with backoff while it is unreachable.

use std::time::Duration;

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::tls::BrokerTls;

/// One connection attempt, trusting the default roots for `amqps://` (tools and tests;
/// the roles use [`crate::tls::connect`] with `amqp.tls_ca_file`).
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    crate::tls::connect(url, name, &BrokerTls::default()).await
}

/// Connects, retrying with exponential backoff (100 ms doubling to 5 s) until it works
/// or `shutdown` fires (`None`).
pub async fn connect_with_retry(
    url: &str,
    name: &str,
    tls: &BrokerTls,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match crate::tls::connect(url, name, tls).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot connect to RabbitMQ");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One consuming session on a connection (boxed so the loop stays `Send`).
pub type SessionFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// What happened to a consuming role's broker link, for its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected; the session starts.
    Up,
    /// The session ended with an error (connection or channel lost); reconnecting.
    Lost,
    /// The connection is closed (after `Lost`, or at shutdown).
    Down,
}

/// A session error that reconnecting cannot mend: a task the consumer relies on (the
/// sender's log writer, say) has stopped. [`consume_reconnecting`] returns it, so the
/// role ends and the process exits for its supervisor to restart it, instead of
/// holding its prefetch window with nobody to settle it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Runs `session` on a fresh connection, again and again, until `shutdown`: connects
/// with back-off, lets the session consume until it returns, closes the connection and
/// starts over after an error. The session must return once `shutdown` fires, after
/// finishing its in-flight work. A session error that is (or wraps) [`Fatal`] ends the
/// loop with that error.
pub async fn consume_reconnecting(
    url: &str,
    name: &str,
    tls: &BrokerTls,
    shutdown: &CancellationToken,
    on_link: impl Fn(Link),
    mut session: impl FnMut(std::sync::Arc<Connection>) -> SessionFuture,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        let Some(connection) = connect_with_retry(url, name, tls, shutdown).await else {
            break;
        };
        on_link(Link::Up);
        // Shared with the session, which may open channels of its own on it later
        // (a publisher whose channel the broker keeps refusing).
        let connection = std::sync::Arc::new(connection);
        if let Err(error) = session(connection.clone()).await {
            if error.downcast_ref::<Fatal>().is_some() {
                on_link(Link::Down);
                let _ = connection.close(200, "closing".into()).await;
                return Err(error);
            }
            tracing::warn!(
                connection = name,
                error = format!("{error:#}"),
                "broker connection lost; reconnecting"
            );
            on_link(Link::Lost);
        }
        on_link(Link::Down);
        let _ = connection.close(200, "closing".into()).await;
        if !shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
