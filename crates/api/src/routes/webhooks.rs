//! `/v1/webhooks` and `/v1/webhooks/{id}`: register, list, read, update and delete.

use anyhow::Context;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use qr3_domain::{Subscriptions, TargetPolicy, WebhookId, WebhookSecret, WebhookUrl};
use qr3_store::{NewWebhook, WebhookPatch};
use utoipa::OpenApi;

use crate::{
    auth::{WebhookReader, WebhookWriter},
    error::ApiError,
    extract::{JsonBody, Query, WebhookPath},
    pagination::PageRequest,
    state::ApiState,
    wire::{
        error::ErrorBody,
        page::{Page, PageQuery},
        webhook::{CreateWebhook, UpdateWebhook, Webhook, WebhookPage},
    },
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/webhooks", post(create).get(list))
        .route("/v1/webhooks/{id}", get(read).patch(update).delete(delete))
}

#[derive(OpenApi)]
#[openapi(paths(create, list, read, update, delete))]
pub(crate) struct Doc;

/// Register a webhook.
///
/// Without `secret`, a strong one is generated. The response is the only one that
/// shows the full secret, as `secret` and as `secret_whsec` for the Standard Webhooks
/// libraries (later reads show `secret_hint`).
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The webhook, with its full secret.", body = Webhook,
            headers(
                ("Location" = String, description = "`/v1/webhooks/{id}`"),
                ("Cache-Control" = String, description = "`no-store`: the body holds the secret."),
            )),
        (status = 400, description = "Not JSON, not an object, or not `application/json`.", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 413, description = "Body larger than the configured limit.", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> Result<Response, ApiError> {
    let policy = state.config.target_policy;
    let url = parse_url(&body.url, policy)?;
    let events = parse_events(&body.events)?;
    let secret = match body.secret {
        Some(secret) => parse_secret(secret)?,
        None => WebhookSecret::generate(),
    };
    let new = NewWebhook {
        url,
        events,
        secret: secret.clone(),
        max_per_second: body.max_per_second.map(parse_rate).transpose()?,
    };
    let webhook = state
        .store
        .insert_webhook(&workspace, new)
        .await
        .context("inserting a webhook")?;
    tracing::info!(%workspace, webhook = %webhook.id, "webhook created");
    let location = format!("/v1/webhooks/{}", webhook.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        reveals_secret(Webhook::from_store(webhook, Some(&secret))),
    )
        .into_response())
}

/// List the workspace's webhooks, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of webhooks (never with `secret`).", body = WebhookPage),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 422, description = "Invalid `limit` or `cursor`, or an unknown parameter.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    WebhookReader(workspace): WebhookReader,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<Webhook>>, ApiError> {
    let request = PageRequest::<WebhookId>::parse(query.limit.as_deref(), query.cursor.as_deref())?;
    let (after, limit) = request.store_args();
    let rows = state
        .store
        .list_webhooks(&workspace, after, limit)
        .await
        .context("listing webhooks")?;
    Ok(Json(request.page(
        rows,
        |w| &w.id,
        |w| Webhook::from_store(w, None),
    )))
}

/// Read one webhook.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    responses(
        (status = 200, description = "The webhook (without `secret`).", body = Webhook),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn read(
    State(state): State<ApiState>,
    WebhookReader(workspace): WebhookReader,
    WebhookPath(id): WebhookPath,
) -> Result<Json<Webhook>, ApiError> {
    let webhook = state.webhook(&workspace, &id).await?;
    Ok(Json(Webhook::from_store(webhook, None)))
}

/// Change a webhook's `url`, `events`, `is_active`, `secret` or `max_per_second`.
///
/// `is_active: false` disables the webhook (`disabled_at` and `disabled_reason` are
/// set); `is_active: true` re-enables it, clears them and resets its consecutive
/// failure count. A response to a PATCH that sets `secret` shows the new secret; the
/// old one stops signing at once (also ending the grace period of earlier rotations).
/// To change secrets without downtime, use `rotate-secret` instead.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The updated webhook; with `secret` (and `Cache-Control: no-store`) when the request set it.", body = Webhook),
        (status = 400, description = "Not JSON, not an object, or not `application/json`.", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 413, description = "Body larger than the configured limit.", body = ErrorBody),
        (status = 422, description = "A field is invalid (`invalid_field`), or no field is given (`invalid_request`).", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    WebhookPath(id): WebhookPath,
    JsonBody(body): JsonBody<UpdateWebhook>,
) -> Result<Response, ApiError> {
    if body.is_empty() {
        return Err(ApiError::InvalidRequest(
            "nothing to update: give at least one of `url`, `events`, `is_active`, `secret`, \
             `max_per_second`"
                .into(),
        ));
    }
    let patch = WebhookPatch {
        url: body
            .url
            .map(|url| parse_url(&url, state.config.target_policy))
            .transpose()?,
        events: body.events.map(|e| parse_events(&e)).transpose()?,
        is_active: body.is_active,
        secret: body.secret.map(parse_secret).transpose()?,
        max_per_second: body
            .max_per_second
            .map(|rate| rate.map(parse_rate).transpose())
            .transpose()?,
    };
    let new_secret = patch.secret.clone();
    let webhook = state
        .store
        .update_webhook(&workspace, &id, patch)
        .await
        .context("updating a webhook")?
        .ok_or_else(ApiError::webhook_not_found)?;
    tracing::info!(%workspace, webhook = %id, is_active = webhook.is_active, "webhook updated");
    let body = Webhook::from_store(webhook, new_secret.as_ref());
    Ok(match new_secret {
        Some(_) => reveals_secret(body),
        None => Json(body).into_response(),
    })
}

/// Delete a webhook. Its delivery log is no longer reachable through the API.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    responses(
        (status = 204, description = "Deleted; empty body."),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    WebhookPath(id): WebhookPath,
) -> Result<StatusCode, ApiError> {
    let deleted = state
        .store
        .delete_webhook(&workspace, &id)
        .await
        .context("deleting a webhook")?;
    if !deleted {
        return Err(ApiError::webhook_not_found());
    }
    tracing::info!(%workspace, webhook = %id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A response showing a full secret: no cache along the way may keep it.
pub(crate) fn reveals_secret(body: Webhook) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

fn parse_url(url: &str, policy: TargetPolicy) -> Result<WebhookUrl, ApiError> {
    WebhookUrl::parse(url, policy).map_err(|e| ApiError::invalid_field("url", e))
}

fn parse_events(events: &[String]) -> Result<Subscriptions, ApiError> {
    Subscriptions::parse(events).map_err(|e| ApiError::invalid_field("events", e))
}

fn parse_rate(rate: u32) -> Result<u32, ApiError> {
    if (1..=10_000).contains(&rate) {
        Ok(rate)
    } else {
        Err(ApiError::invalid_field(
            "max_per_second",
            "must be between 1 and 10000 (or null for no cap)",
        ))
    }
}

fn parse_secret(secret: String) -> Result<WebhookSecret, ApiError> {
    WebhookSecret::parse(secret).map_err(|e| ApiError::invalid_field("secret", e))
}
