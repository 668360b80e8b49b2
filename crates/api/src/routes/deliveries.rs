//! `/v1/webhooks/{id}/deliveries`: a webhook's delivery log, newest first.

use anyhow::Context;
use axum::{extract::State, routing::get, Json, Router};
use qr3_domain::{DeliveryId, EventType};
use qr3_store::{AttemptFilter, AttemptStatus};
use utoipa::OpenApi;

use crate::{
    auth::Authenticated,
    error::ApiError,
    extract::{Query, WebhookPath},
    pagination::PageRequest,
    state::ApiState,
    wire::{
        delivery::{Delivery, DeliveryPage, DeliveryQuery},
        error::ErrorBody,
        page::Page,
    },
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/v1/webhooks/{id}/deliveries", get(list))
}

#[derive(OpenApi)]
#[openapi(paths(list))]
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
    Authenticated(workspace): Authenticated,
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
    state
        .store
        .get_webhook(&workspace, &webhook)
        .await
        .context("reading a webhook")?
        .ok_or_else(ApiError::webhook_not_found)?;
    let (after, limit) = request.store_args();
    let rows = state
        .store
        .list_attempts(&workspace, &webhook, &filter, after, limit)
        .await
        .context("listing delivery attempts")?;
    Ok(Json(request.page(rows, |a| &a.id, Delivery::from)))
}

fn parse_status(status: &str) -> Result<AttemptStatus, ApiError> {
    AttemptStatus::parse(status)
        .ok_or_else(|| ApiError::invalid_field("status", "status must be `success` or `failed`"))
}

fn parse_event_type(name: &str) -> Result<EventType, ApiError> {
    name.parse()
        .map_err(|e| ApiError::invalid_field("event_type", e))
}
