//! Turns SIGTERM and ctrl-c into a [`CancellationToken`] that the roles pass down.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or ctrl-c (SIGINT).
///
/// Must be called inside a Tokio runtime. The handlers are installed before this
/// returns, so a signal arriving right after start-up is not missed.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let signal = signal_listener();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = signal.await;
        tracing::info!(signal = name, "shutdown requested");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
fn signal_listener() -> impl std::future::Future<Output = &'static str> + Send {
    use tokio::signal::unix::{signal, SignalKind};

    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        tokio::select! {
            () = wait(terminate, "SIGTERM") => "SIGTERM",
            () = wait(interrupt, "ctrl-c") => "ctrl-c",
        }
    }
}

#[cfg(unix)]
async fn wait(signal: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
    match signal {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(error) => {
            tracing::error!(%error, signal = name, "cannot listen for signal");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
fn signal_listener() -> impl std::future::Future<Output = &'static str> + Send {
    async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(error) => {
                tracing::error!(%error, "cannot listen for ctrl-c");
                std::future::pending().await
            }
        }
    }
}
