//! `GET /v1/webhooks/{id}/secret`: reveal a webhook's signing secret, for the portal's
//! "reveal" button and for customers who lost it.

use anyhow::Context;
use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use qr3_domain::WebhookSecret;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::{
    auth::WebhookWriter, error::ApiError, extract::WebhookPath, state::ApiState,
    wire::error::ErrorBody,
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/v1/webhooks/{id}/secret", get(reveal))
}

#[derive(OpenApi)]
#[openapi(paths(reveal), components(schemas(WebhookSecretView)))]
pub(crate) struct Doc;

/// A webhook's current signing secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"secret": "my-secret-key-min-16-chars",
    "secret_whsec": "whsec_bXktc2VjcmV0LWtleS1taW4tMTYtY2hhcnM=",
    "previous_secret_expires_at": null}))]
pub struct WebhookSecretView {
    /// The secret that keys `X-QR3-Signature`.
    pub secret: String,
    /// The same secret as the Standard Webhooks libraries take it (`whsec_` + base64).
    pub secret_whsec: String,
    /// After a rotation: until when the previous secret keeps signing
    /// `webhook-signature` beside this one; `null` when no grace period is running.
    #[schema(required = true, format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
}

/// Reveal a webhook's signing secret.
///
/// Answers the current secret in both forms and the end of the grace period of the
/// last rotation, if one is running. Not for read-only portal sessions (403).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/secret",
    tag = "webhooks",
    operation_id = "get_webhook_secret",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    responses(
        (status = 200, description = "The secret (with `Cache-Control: no-store`).", body = WebhookSecretView),
        (status = 401, description = "Missing, malformed or invalid API key or portal session.", body = ErrorBody),
        (status = 403, description = "A read-only portal session.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reveal(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    WebhookPath(id): WebhookPath,
) -> Result<Response, ApiError> {
    let revealed = state
        .store
        .reveal_webhook_secret(&workspace, &id)
        .await
        .context("revealing a webhook secret")?
        .ok_or_else(ApiError::webhook_not_found)?;
    tracing::info!(%workspace, webhook = %id, "webhook secret revealed");
    let body = WebhookSecretView {
        secret: revealed.secret.expose().to_owned(),
        secret_whsec: WebhookSecret::whsec(&revealed.secret),
        previous_secret_expires_at: revealed.previous_expires_at.map(|t| t.to_string()),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}
