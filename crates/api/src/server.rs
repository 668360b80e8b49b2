//! The API's listener: HTTP/1.1 connections served by hyper with the limits that keep
//! slow or numerous clients from holding the process (`api.header_read_timeout_ms`,
//! `api.max_connections`), and a graceful shutdown.
//!
//! - **Header read timeout.** A connection that has not sent a request's complete
//!   headers within the timeout is closed. The clock starts when the server waits for
//!   a request, so it also closes a connection that opens and sends nothing, or stays
//!   idle that long between keep-alive requests. (The request body is covered by the
//!   whole-request timeout of `crate::timeout`.)
//! - **Connection cap.** At most `max_connections` connections are open at once. At
//!   the cap the server stops accepting, so further connections wait in the kernel's
//!   listen backlog until one closes, and a warning says so (at most every
//!   [`CAP_WARNING_EVERY`]).
//!
//! The listener speaks HTTP/1.1 only: HTTP/2 and TLS, where wanted, end at the ingress.
//! (hyper's automatic HTTP/1-or-2 detection reads the first bytes with no timeout, so a
//! client that sends nothing would escape the header timeout.)

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use qr3_config::Settings;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection-level limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// How long a client may take to send a request's headers
    /// (`api.header_read_timeout_ms`).
    pub header_read_timeout: Duration,
    /// Connections open at once (`api.max_connections`).
    pub max_connections: usize,
}

impl ServeLimits {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            header_read_timeout: settings.api.header_read_timeout(),
            max_connections: settings.api.max_connections,
        }
    }
}

/// The least time between two "connection limit reached" warnings.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// After an accept error that is not about one connection (out of file descriptors,
/// say), how long to wait before accepting again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then stops
/// accepting, closes idle connections and lets in-flight requests finish before
/// returning.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("cannot read the API listener's address")?;
    tracing::info!(
        %addr,
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        "API listening"
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    let mut cap = CapWarning::default();
    let mut shutdown = pin!(shutdown);

    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                cap.reached(limits.max_connections);
                tokio::select! {
                    slot = slots.clone().acquire_owned() => {
                        slot.context("the connection semaphore is never closed")?
                    }
                    () = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(serve_connection(
            http.clone(),
            stream,
            router.clone(),
            draining.clone(),
            slot,
        ));
    }

    drop(listener);
    draining.cancel();
    connections.close();
    connections.wait().await;
    tracing::info!(%addr, "API stopped");
    Ok(())
}

/// One connection until the client closes it, a timeout closes it or, once `draining`
/// is cancelled, its request in flight is answered. Holds its `slot` until then.
async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    router: Router,
    draining: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = draining.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Timeouts, resets and malformed requests: the client's doing, not ours.
        tracing::debug!(%error, "API connection ended with an error");
    }
}

/// Logs an accept error, and pauses unless it concerned only the one connection.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        tracing::debug!(%error, "a connection failed before it was accepted");
        return;
    }
    tracing::error!(
        %error,
        pause_ms = ACCEPT_ERROR_PAUSE.as_millis() as u64,
        "cannot accept API connections (file-descriptor limit? see api.max_connections)"
    );
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// The "connection limit reached" warning, at most once per [`CAP_WARNING_EVERY`].
#[derive(Default)]
struct CapWarning {
    last: Option<Instant>,
    /// Times the cap was reached since the last warning.
    unreported: u64,
}

impl CapWarning {
    fn reached(&mut self, max_connections: usize) {
        self.unreported += 1;
        if self
            .last
            .is_some_and(|last| last.elapsed() < CAP_WARNING_EVERY)
        {
            return;
        }
        tracing::warn!(
            max_connections,
            times_reached = self.unreported,
            "API connection limit reached: new connections wait until one closes \
             (raise api.max_connections, or find who holds them)"
        );
        self.last = Some(Instant::now());
        self.unreported = 0;
    }
}
