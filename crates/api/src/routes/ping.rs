//! `POST /v1/webhooks/{id}/ping`: send a `webhook.ping` through the real pipeline.
//!
//! The job goes onto the delivery queue like any other, so the ping exercises the
//! sender, the signature and the receiver. One attempt, no retries, logged, never
//! counted towards disabling. The API waits up to `api.ping_wait_ms` for the attempt's
//! log row and answers 200 with it, or 202 with the event id if it is not there yet.

use std::collections::HashSet;

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use qr3_broker::{DeliveryJob, Trigger};
use qr3_domain::{EventId, EventType, Payload, Timestamp};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::jobs;
use crate::{
    auth::WebhookWriter,
    error::ApiError,
    extract::WebhookPath,
    state::ApiState,
    wire::{delivery::Delivery, error::ErrorBody},
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/v1/webhooks/{id}/ping", post(ping))
}

#[derive(OpenApi)]
#[openapi(paths(ping), components(schemas(PingResult)))]
pub(crate) struct Doc;

/// The outcome of a ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct PingResult {
    /// The `webhook.ping` event's id (`evt_…`), also in the delivery log.
    pub event_id: String,
    /// The attempt, or `null` when it had not finished within the wait (202).
    #[schema(required = true)]
    pub delivery: Option<Delivery>,
}

/// Send a `webhook.ping` event to the webhook's URL now.
///
/// Answers 200 with the attempt when it finishes within a few seconds, otherwise 202;
/// either way the attempt appears in the delivery log. A ping is sent even to a
/// disabled webhook (to test it before re-enabling) and never counts towards disabling.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/ping",
    tag = "webhooks",
    operation_id = "ping_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    responses(
        (status = 200, description = "The ping was attempted; `delivery` says how it went.", body = PingResult),
        (status = 202, description = "The ping is queued; look for `event_id` in the delivery log.", body = PingResult),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 503, description = "The message broker is unreachable.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn ping(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    WebhookPath(webhook): WebhookPath,
) -> Result<(StatusCode, Json<PingResult>), ApiError> {
    state.webhook(&workspace, &webhook).await?;
    let event_id = EventId::generate();
    let created = Timestamp::now();
    let mut data = serde_json::Map::new();
    data.insert("webhook_id".into(), webhook.as_str().into());
    let body = Payload {
        id: &event_id,
        event_type: EventType::WebhookPing,
        created,
        data: &data,
    }
    .encode();
    let job = DeliveryJob {
        webhook_id: webhook.clone(),
        workspace_id: workspace.clone(),
        event_id: event_id.clone(),
        event_type: EventType::WebhookPing,
        event_created: created,
        attempt: 1,
        trigger: Trigger::Ping,
        body: Vec::new(),
    };
    jobs::publish(&state, [(job, body.into_bytes())]).await?;
    tracing::info!(webhook_id = %webhook, event_id = %event_id, "ping queued");
    let attempt =
        jobs::await_attempt(&state, &webhook, &event_id, Trigger::Ping, &HashSet::new()).await?;
    let status = match attempt {
        Some(_) => StatusCode::OK,
        None => StatusCode::ACCEPTED,
    };
    Ok((
        status,
        Json(PingResult {
            event_id: event_id.to_string(),
            delivery: attempt.map(Delivery::from),
        }),
    ))
}
