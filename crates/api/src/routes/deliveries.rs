//! `/v1/webhooks/{id}/deliveries`: a webhook's delivery log, newest first, and one
//! attempt in detail.

use anyhow::Context;
use axum::{extract::State, routing::get, Json, Router};
use qr3_domain::{DeliveryId, EventType};
use qr3_store::{AttemptFilter, AttemptStatus};
use utoipa::OpenApi;

use crate::{
    auth::WebhookReader,
    error::ApiError,
    extract::{DeliveryPath, Query, WebhookPath},
    pagination::PageRequest,
    state::ApiState,
    wire::{
        delivery::{Delivery, DeliveryDetail, DeliveryPage, DeliveryQuery, SentRequest},
        error::ErrorBody,
        page::Page,
    },
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/webhooks/{id}/deliveries", get(list))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}", get(read))
}

#[derive(OpenApi)]
#[openapi(paths(list, read), components(schemas(DeliveryDetail, SentRequest)))]
pub(crate) struct Doc;

/// List a webhook's delivery attempts, newest first.
///
/// One entry per attempt: a delivery retried twice shows three entries.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "deliveries",
    operation_id = "list_deliveries",
    params(
        ("id" = String, Path, description = "The webhook's id (`wh_…`)."),
        DeliveryQuery,
    ),
    responses(
        (status = 200, description = "A page of delivery attempts.", body = DeliveryPage),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 422, description = "Invalid `status`, `event_type`, `limit` or `cursor`, or an unknown parameter.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    WebhookReader(workspace): WebhookReader,
    WebhookPath(webhook): WebhookPath,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<Page<Delivery>>, ApiError> {
    let request =
        PageRequest::<DeliveryId>::parse(query.limit.as_deref(), query.cursor.as_deref())?;
    let filter = AttemptFilter {
        status: query.status.as_deref().map(parse_status).transpose()?,
        event_type: query
            .event_type
            .as_deref()
            .map(parse_event_type)
            .transpose()?,
    };
    state.webhook(&workspace, &webhook).await?;
    let (after, limit) = request.store_args();
    let rows = state
        .store
        .list_attempts(&workspace, &webhook, &filter, after, limit)
        .await
        .context("listing delivery attempts")?;
    Ok(Json(request.page(rows, |a| &a.id, Delivery::from)))
}

/// Read one delivery attempt with the request it sent and the start of the response.
///
/// The request headers and body are what the sender put on the wire, signatures
/// included; the secret itself is never stored here. Details are kept as long as the
/// delivery log (`retention.delivery_log_days`).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}",
    tag = "deliveries",
    operation_id = "get_delivery",
    params(
        ("id" = String, Path, description = "The webhook's id (`wh_…`)."),
        ("delivery_id" = String, Path, description = "The attempt's id (`whd_…`)."),
    ),
    responses(
        (status = 200, description = "The attempt in detail.", body = DeliveryDetail),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace, or no such attempt of it.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn read(
    State(state): State<ApiState>,
    WebhookReader(workspace): WebhookReader,
    DeliveryPath(webhook, delivery): DeliveryPath,
) -> Result<Json<DeliveryDetail>, ApiError> {
    state.webhook(&workspace, &webhook).await?;
    let attempt = state
        .store
        .get_attempt(&workspace, &webhook, &delivery)
        .await
        .context("reading a delivery attempt")?
        .ok_or_else(ApiError::delivery_not_found)?;
    Ok(Json(attempt.into()))
}

fn parse_status(status: &str) -> Result<AttemptStatus, ApiError> {
    AttemptStatus::parse(status)
        .ok_or_else(|| ApiError::invalid_field("status", "status must be `success` or `failed`"))
}

fn parse_event_type(name: &str) -> Result<EventType, ApiError> {
    name.parse()
        .map_err(|e| ApiError::invalid_field("event_type", e))
}
