//! `POST /v1/webhooks/{id}/rotate-secret`: a new secret, with the previous one still
//! signing `webhook-signature` for `secrets.rotation_grace_ms`, so receivers switch
//! without downtime. (A PATCH of `secret` replaces it at once instead.)

use anyhow::Context;
use axum::{extract::State, response::Response, routing::post, Router};
use qr3_domain::WebhookSecret;
use utoipa::OpenApi;

use crate::{
    auth::WebhookWriter,
    error::ApiError,
    extract::WebhookPath,
    routes::webhooks::reveals_secret,
    state::ApiState,
    wire::{error::ErrorBody, webhook::Webhook},
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/v1/webhooks/{id}/rotate-secret", post(rotate_secret))
}

#[derive(OpenApi)]
#[openapi(paths(rotate_secret))]
pub(crate) struct Doc;

/// Rotate the webhook's signing secret, with an overlap.
///
/// Generates a new secret and answers with it (as `secret` and `secret_whsec`), once.
/// From now on `X-QR3-Signature` uses the new secret. `webhook-signature` carries a
/// signature with the new secret and one with each previous secret until its grace
/// period (24 hours by default) ends at `previous_secret_expires_at`, so a receiver
/// using the Standard Webhooks headers can switch secrets without rejecting a delivery.
/// No request body.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    responses(
        (status = 200, description = "The webhook with its new secret and `previous_secret_expires_at` (and `Cache-Control: no-store`).", body = Webhook),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rotate_secret(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    WebhookPath(id): WebhookPath,
) -> Result<Response, ApiError> {
    let secret = WebhookSecret::generate();
    let rotated = state
        .store
        .rotate_webhook_secret(&workspace, &id, &secret, state.config.secret_rotation_grace)
        .await
        .context("rotating a webhook secret")?
        .ok_or_else(ApiError::webhook_not_found)?;
    tracing::info!(%workspace, webhook = %id, previous_expires_at = %rotated.previous_expires_at,
        "webhook secret rotated");
    let mut body = Webhook::from_store(rotated.webhook, Some(&secret));
    body.previous_secret_expires_at = Some(rotated.previous_expires_at.to_string());
    Ok(reveals_secret(body))
}
