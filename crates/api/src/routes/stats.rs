//! `GET /v1/webhooks/{id}/stats`: a webhook's health at a glance, from its delivery log.

use anyhow::Context;
use axum::{extract::State, routing::get, Json, Router};
use utoipa::OpenApi;

use crate::{
    auth::WebhookReader,
    error::ApiError,
    extract::WebhookPath,
    state::ApiState,
    wire::{error::ErrorBody, stats::WebhookStats},
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/v1/webhooks/{id}/stats", get(stats))
}

#[derive(OpenApi)]
#[openapi(paths(stats))]
pub(crate) struct Doc;

/// Read a webhook's delivery stats over the last hour and the last day.
///
/// Attempts, successes, failures, success ratio and latency percentiles (p50, p90, p99
/// of `response_time_ms`). Retries count as attempts; pings do not (they are tests,
/// not traffic). Windows end at `generated_at`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/stats",
    tag = "webhooks",
    operation_id = "get_webhook_stats",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    responses(
        (status = 200, description = "The webhook's stats.", body = WebhookStats),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stats(
    State(state): State<ApiState>,
    WebhookReader(workspace): WebhookReader,
    WebhookPath(webhook): WebhookPath,
) -> Result<Json<WebhookStats>, ApiError> {
    // The stats of a webhook that is not the caller's would read as zeros, not 404.
    state.webhook(&workspace, &webhook).await?;
    let stats = state
        .store
        .webhook_stats(&workspace, &webhook)
        .await
        .context("reading a webhook's stats")?;
    Ok(Json(WebhookStats::new(&webhook, stats)))
}
