//! Connecting to RabbitMQ: to the first reachable node of `amqp.url` (one node or a
//! cluster's), with backoff while none is reachable, and reconnecting consumers.

use std::time::Duration;

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::nodes::Nodes;
use crate::tls::BrokerTls;

/// How long one node may take to accept a connection before the next is tried: a
/// node that is down refuses at once, one behind a partition would otherwise hold
/// the attempt for the operating system's TCP timeout.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to one node (`url` is a single node's URL), with `tls` for
/// `amqps://`.
pub async fn connect_node(url: &str, name: &str, tls: &BrokerTls) -> lapin::Result<Connection> {
    crate::tls::connect(url, name, tls).await
}

/// Connects to a node of `urls` (one URL, or a comma-separated list of a cluster's
/// nodes): tries each node once, starting at a rotating node, and returns the first
/// connection made. Logs and errors name nodes by `host:port` only. An invalid list
/// is an `InvalidInput` I/O error. With one node its error is returned as it is; with
/// several, an error naming each node and why it failed. `amqps://` trusts the default
/// roots (tools and tests; the roles use [`connect_with_tls`] with `amqp.tls_ca_file`).
pub async fn connect(urls: &str, name: &str) -> lapin::Result<Connection> {
    connect_with_tls(urls, name, &BrokerTls::default()).await
}

/// [`connect`] with the TLS settings given (`BrokerTls::from_settings`).
pub async fn connect_with_tls(
    urls: &str,
    name: &str,
    tls: &BrokerTls,
) -> lapin::Result<Connection> {
    let nodes = Nodes::parse(urls).map_err(|error| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            error.to_string(),
        ))
    })?;
    connect_nodes(&nodes, name, tls).await
}

/// [`connect`] with the list already parsed and the TLS settings given.
pub async fn connect_nodes(
    nodes: &Nodes,
    name: &str,
    tls: &BrokerTls,
) -> lapin::Result<Connection> {
    let mut failed: Vec<(usize, lapin::Error)> = Vec::new();
    for i in nodes.order() {
        let attempt =
            tokio::time::timeout(NODE_CONNECT_TIMEOUT, connect_node(nodes.url(i), name, tls));
        match attempt.await {
            Ok(Ok(connection)) => {
                let node = nodes.address(i);
                if failed.is_empty() {
                    tracing::debug!(connection = name, node, "connected to RabbitMQ");
                } else {
                    tracing::warn!(connection = name, node, skipped = %summary(nodes, &failed), "connected to RabbitMQ past nodes that failed");
                }
                return Ok(connection);
            }
            Ok(Err(error)) => failed.push((i, error)),
            Err(_) => failed.push((
                i,
                lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", NODE_CONNECT_TIMEOUT.as_secs()),
                )),
            )),
        }
    }
    if failed.len() == 1 {
        let (_, error) = failed.pop().expect("one failure");
        return Err(error);
    }
    Err(lapin::Error::from(std::io::Error::other(format!(
        "no RabbitMQ node accepted a connection: {}",
        summary(nodes, &failed)
    ))))
}

/// `host:port (why)` of every node that failed, for logs and errors.
fn summary(nodes: &Nodes, failed: &[(usize, lapin::Error)]) -> String {
    failed
        .iter()
        .map(|(i, error)| format!("{} ({error})", nodes.address(*i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects, retrying with [`Backoff::dependency`] (100 ms doubling to 5 s, with
/// jitter, so that the processes a lost node dropped do not retry in step) until a
/// node of `urls` accepts or `shutdown` fires (`None`).
pub async fn connect_with_retry(
    urls: &str,
    name: &str,
    tls: &BrokerTls,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    let nodes = match Nodes::parse(urls) {
        Ok(nodes) => nodes,
        Err(error) => {
            // Settings validation makes this unreachable from the roles.
            tracing::error!(%error, "cannot connect to RabbitMQ");
            shutdown.cancelled().await;
            return None;
        }
    };
    let mut backoff = Backoff::dependency();
    loop {
        match connect_nodes(&nodes, name, tls).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                let why = error.to_string();
                if backoff.worth_logging(&why) {
                    tracing::warn!(error = why, nodes = %nodes.addresses(), "cannot connect to RabbitMQ; retrying");
                }
            }
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// One consuming session on a connection (boxed so the loop stays `Send`).
pub(crate) type SessionFuture =
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
/// with back-off (to another node of a cluster first, see [`Nodes::order`]), lets the session consume until it returns, closes the connection and
/// starts over after an error. The session must return once `shutdown` fires, after
/// finishing its in-flight work. A session error that is (or wraps) [`Fatal`] ends the
/// loop with that error.
pub(crate) async fn consume_reconnecting(
    urls: &str,
    name: &str,
    tls: &BrokerTls,
    shutdown: &CancellationToken,
    on_link: impl Fn(Link),
    mut session: impl FnMut(std::sync::Arc<Connection>) -> SessionFuture,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        let Some(connection) = connect_with_retry(urls, name, tls, shutdown).await else {
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
