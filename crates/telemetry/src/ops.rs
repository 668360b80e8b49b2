//! The ops HTTP endpoints every process serves (`/healthz`, `/readyz`, `/metrics`) and
//! the server loop that stops on a cancellation token.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Metrics, Startup};

/// Answers whether the process can do its work (database and broker reachable).
/// `Err` carries a short reason shown in the `/readyz` body.
///
/// Build one from an async closure with [`ready_check`].
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A check that takes longer than this counts as failed, so a hung dependency cannot
/// pile up probe requests.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Wraps an async closure as a [`ReadyCheck`]:
/// `ready_check(move || { let pool = pool.clone(); async move { … } })`.
pub fn ready_check<F, Fut>(check: F) -> ReadyCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    startup: Startup,
    ready: ReadyCheck,
    draining: CancellationToken,
}

/// `GET /healthz` (alive), `GET /readyz` (started, ready and not draining) and
/// `GET /metrics`.
///
/// `/healthz` answers 200 from the moment the router serves, also while the process
/// waits for its dependencies. `/readyz` answers 503 with reason `draining` once
/// `draining` (the process's shutdown token) is cancelled, and `qr3_process_draining`
/// then reads 1; before that, while `startup` is not finished, 503 with what the process
/// waits for (`waiting_for`); after it, whatever `ready` says.
pub fn ops_router(
    metrics: Metrics,
    startup: Startup,
    ready: ReadyCheck,
    draining: CancellationToken,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            metrics,
            startup,
            ready,
            draining,
        })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    if state.draining.is_cancelled() {
        return not_ready("draining");
    }
    if let Some(waiting) = state.startup.waiting_for() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "reason": waiting.reason,
                "waiting_for": waiting.dependencies,
            })),
        )
            .into_response();
    }
    match tokio::time::timeout(READY_CHECK_TIMEOUT, (state.ready)()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(reason)) => {
            tracing::warn!(%reason, "not ready");
            not_ready(&reason)
        }
        Err(_elapsed) => {
            tracing::warn!(timeout = ?READY_CHECK_TIMEOUT, "readiness check timed out");
            not_ready("readiness check timed out")
        }
    }
}

fn not_ready(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "not_ready", "reason": reason })),
    )
        .into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> impl IntoResponse {
    state
        .metrics
        .process_draining
        .set(i64::from(state.draining.is_cancelled()));
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish before returning.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("cannot read the listener's address")?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .with_context(|| format!("HTTP server on {addr} failed"))?;
    tracing::info!(%addr, "stopped listening");
    Ok(())
}
