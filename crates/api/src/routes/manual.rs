//! Manual resends: `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry` re-sends one
//! event, `POST /v1/webhooks/{id}/recover` every event whose last attempt since a given
//! time failed.
//!
//! Both publish `manual` jobs carrying the logged body on the delivery queue: the sender
//! signs them afresh (new timestamp, current secrets), makes one attempt each (never
//! retried, never counted towards disabling) and logs it with trigger `manual`. Events
//! the webhook already received are not sent again, here and once more in the sender
//! just before the attempt, unless a retry says `{"force": true}`: then a delivered
//! event is sent again (a `resend` job, which the sender does not check). Both count
//! against the webhook's `api.manual_requests_per_minute`, across API replicas.
//!
//! Recover pages: its answer carries `next_cursor`, the place after the last event
//! queued (events are ordered by their first attempt since `since`, which later
//! attempts do not move). Called with it, recover picks up only the events after that
//! place, so events whose manual attempt failed are not queued again and again, and a
//! client reaches the end of the backlog.

use std::collections::HashSet;

use anyhow::Context;
use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use qr3_broker::{DeliveryJob, Trigger};
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId, WorkspaceId};
use qr3_store::{ManualBudget, Webhook};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::jobs;
use crate::{
    auth::WebhookWriter,
    error::ApiError,
    extract::{DeliveryPath, JsonBody, OptionalJsonBody, WebhookPath},
    pagination::{decode_cursor, encode_cursor, CursorId},
    ratelimit::Limit,
    state::ApiState,
    wire::{delivery::Delivery, error::ErrorBody},
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(retry),
        )
        .route("/v1/webhooks/{id}/recover", post(recover))
}

#[derive(OpenApi)]
#[openapi(
    paths(retry, recover),
    components(schemas(RetryRequest, RetryResult, RecoverRequest, RecoverResult))
)]
pub(crate) struct Doc;

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`: the body is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"force": true}))]
pub struct RetryRequest {
    /// `true` sends the event again even though the webhook already received it (a
    /// receiver that lost it after answering 2xx). Without it such a retry answers 409.
    #[serde(default)]
    pub force: bool,
}

/// The outcome of a manual retry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryResult {
    /// The event re-sent (`evt_…`).
    pub event_id: String,
    /// The manual attempt, or `null` when it had not finished within the wait (202).
    #[schema(required = true)]
    pub delivery: Option<Delivery>,
}

/// `POST /v1/webhooks/{id}/recover`: `since`, `cursor`, or both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"since": "2026-03-15T10:00:00Z"}))]
pub struct RecoverRequest {
    /// Re-send the events whose last attempt at or after this time (RFC 3339) failed.
    /// May be left out when `cursor` is given (the cursor remembers it); given with a
    /// cursor, it must be the same time.
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// The `next_cursor` of an earlier answer: continue after the events it queued.
    pub cursor: Option<String>,
}

/// The outcome of a recovery.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"queued": 2, "event_ids": ["evt_abc123xyz", "evt_def456uvw"], "has_more": false}))]
pub struct RecoverResult {
    /// How many events were queued for one manual attempt each.
    pub queued: usize,
    /// The events queued, oldest first.
    pub event_ids: Vec<String>,
    /// `true` when more events qualified than one request queues
    /// (`api.recover_max_events`): call again with `next_cursor` to queue the next ones.
    pub has_more: bool,
    /// Pass as `cursor` to continue after the events queued so far: those events
    /// (their manual attempts failed or not) are not queued again under it. Given
    /// whenever events were queued or a cursor was sent, so a client can also come back
    /// later for events that failed since; absent when a request with `since` alone
    /// queued nothing (call again with `since`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a recovery resumes: its `since` and the first attempt (since then) of the last
/// event it queued, written `<since unix ms>:<whd_…>` (or `<since unix ms>:` before any).
#[derive(Debug, Clone)]
pub(crate) struct RecoverCursor {
    since: Timestamp,
    after: Option<DeliveryId>,
    text: String,
}

impl RecoverCursor {
    fn new(since: Timestamp, after: Option<DeliveryId>) -> Self {
        let text = format!(
            "{}:{}",
            since.unix_millis(),
            after.as_ref().map(DeliveryId::as_str).unwrap_or_default()
        );
        Self { since, after, text }
    }
}

impl CursorId for RecoverCursor {
    const TAG: &'static str = "recover.v1";

    fn parse_id(s: &str) -> Option<Self> {
        let (ms, after) = s.split_once(':')?;
        let since = Timestamp::from(chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)?);
        let after = match after {
            "" => None,
            id => Some(DeliveryId::parse(id).ok()?),
        };
        Some(Self::new(since, after))
    }

    fn id_str(&self) -> &str {
        &self.text
    }
}

/// Re-send one delivery's event to the webhook now.
///
/// One attempt, signed afresh, logged with trigger `manual`; it is not retried and does
/// not count towards disabling. Answers 200 with the attempt when it finishes within a
/// few seconds, otherwise 202. Refused (409) when the webhook is disabled, for pings,
/// for attempts logged without their body, and when the event was already delivered to
/// the webhook, unless the body is `{"force": true}`: a forced retry sends a delivered
/// event again (same event id and payload, new attempt, signed like any attempt). No
/// body at all is the same as `{}`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
    tag = "deliveries",
    operation_id = "retry_delivery",
    params(
        ("id" = String, Path, description = "The webhook's id (`wh_…`)."),
        ("delivery_id" = String, Path, description = "Any attempt of the event to re-send (`whd_…`)."),
    ),
    request_body(content = RetryRequest, description = "Optional: `{\"force\": true}` re-sends a delivered event.", content_type = "application/json"),
    responses(
        (status = 200, description = "The event was re-sent; `delivery` says how it went.", body = RetryResult),
        (status = 202, description = "The retry is queued; look for `event_id` in the delivery log.", body = RetryResult),
        (status = 400, description = "A body that is not JSON, not an object, or not `application/json`.", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace, or no such attempt of it.", body = ErrorBody),
        (status = 409, description = "Already delivered (without `force`), webhook disabled, a ping, or no body kept.", body = ErrorBody),
        (status = 422, description = "`force` is not a boolean, or an unknown field.", body = ErrorBody),
        (status = 429, description = "Too many manual requests for this webhook; see `Retry-After`.", body = ErrorBody),
        (status = 503, description = "The message broker is unreachable.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    DeliveryPath(webhook_id, delivery_id): DeliveryPath,
    OptionalJsonBody(body): OptionalJsonBody<RetryRequest>,
) -> Result<(StatusCode, Json<RetryResult>), ApiError> {
    let webhook = active_webhook(&state, &workspace, &webhook_id).await?;
    let attempt = state
        .store
        .get_attempt(&workspace, &webhook.id, &delivery_id)
        .await
        .context("reading a delivery attempt")?
        .ok_or_else(ApiError::delivery_not_found)?;
    if attempt.trigger == Trigger::Ping {
        return Err(ApiError::Conflict(
            "pings are not retried; send a new one with POST /v1/webhooks/{id}/ping".into(),
        ));
    }
    let Some(detail) = attempt.detail else {
        return Err(ApiError::Conflict(
            "this attempt was logged without its body, so it cannot be re-sent".into(),
        ));
    };
    let earlier = state
        .store
        .attempts_for_event(&webhook.id, &attempt.event_id)
        .await
        .context("reading an event's attempts")?;
    let delivered = earlier
        .iter()
        .any(|a| a.status == qr3_store::AttemptStatus::Success && a.trigger != Trigger::Ping);
    if delivered && !body.force {
        return Err(ApiError::Conflict(format!(
            "event {} was already delivered to this webhook; send {{\"force\": true}} to \
             send it again",
            attempt.event_id
        )));
    }
    take_budget(&state, &workspace, &webhook.id).await?;
    let mut job = manual_job(
        &webhook,
        attempt.event_id.clone(),
        attempt.event_type,
        next_attempt(earlier.len()),
    );
    if delivered {
        // The sender would skip a `manual` job of a delivered event.
        job.trigger = Trigger::Resend;
    }
    jobs::publish(&state, [(job, detail.request_body.into_bytes())]).await?;
    tracing::info!(webhook_id = %webhook.id, event_id = %attempt.event_id, forced = delivered,
        "manual retry queued");
    let seen: HashSet<_> = earlier.into_iter().map(|a| a.id).collect();
    let made = jobs::await_attempt(
        &state,
        &webhook.id,
        &attempt.event_id,
        Trigger::Manual,
        &seen,
    )
    .await?;
    let status = match made {
        Some(_) => StatusCode::OK,
        None => StatusCode::ACCEPTED,
    };
    Ok((
        status,
        Json(RetryResult {
            event_id: attempt.event_id.to_string(),
            delivery: made.map(Delivery::from),
        }),
    ))
}

/// Re-send every event whose last attempt since `since` failed.
///
/// Typically after re-enabling a webhook that was down: each event whose last attempt
/// at or after `since` failed, and that was never delivered, is queued for one manual
/// attempt (oldest first, at most `api.recover_max_events` per request). Answers 202 at
/// once; the attempts appear in the delivery log with trigger `manual`. The answer's
/// `next_cursor`, sent back as `cursor`, continues after the events queued: while
/// `has_more` is `true`, call again with it to reach the end. Events already queued are
/// not queued again under that cursor, even when their manual attempt failed.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/recover",
    tag = "deliveries",
    operation_id = "recover_deliveries",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`).")),
    request_body = RecoverRequest,
    responses(
        (status = 202, description = "The events found are queued.", body = RecoverResult),
        (status = 400, description = "Not JSON, not an object, or not `application/json`.", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 404, description = "No such webhook in this workspace.", body = ErrorBody),
        (status = 409, description = "The webhook is disabled; re-enable it first.", body = ErrorBody),
        (status = 413, description = "Body larger than the configured limit.", body = ErrorBody),
        (status = 422, description = "Neither `since` nor `cursor`; `since` not RFC 3339, in the future, or not the cursor's; or an invalid `cursor`.", body = ErrorBody),
        (status = 429, description = "Too many manual requests for this webhook; see `Retry-After`.", body = ErrorBody),
        (status = 503, description = "The message broker is unreachable.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn recover(
    State(state): State<ApiState>,
    WebhookWriter(workspace): WebhookWriter,
    WebhookPath(webhook_id): WebhookPath,
    JsonBody(body): JsonBody<RecoverRequest>,
) -> Result<(StatusCode, Json<RecoverResult>), ApiError> {
    let start = recover_start(&body)?;
    let webhook = active_webhook(&state, &workspace, &webhook_id).await?;
    take_budget(&state, &workspace, &webhook.id).await?;
    let max = state.config.recover_max_events as usize;
    let mut found = state
        .store
        .recoverable_events(
            &workspace,
            &webhook.id,
            start.since,
            start.after.as_ref(),
            max as i64 + 1,
        )
        .await
        .context("finding events to recover")?;
    let has_more = found.len() > max;
    found.truncate(max);
    let next = match found.last() {
        Some(last) => Some(RecoverCursor::new(
            start.since,
            Some(last.first_attempt.clone()),
        )),
        None => body
            .cursor
            .as_deref()
            .is_some_and(|c| !c.is_empty())
            .then_some(start),
    };
    let event_ids: Vec<String> = found.iter().map(|r| r.event_id.to_string()).collect();
    jobs::publish(
        &state,
        found.into_iter().map(|r| {
            let job = manual_job(&webhook, r.event_id, r.event_type, r.next_attempt);
            (job, r.body.into_bytes())
        }),
    )
    .await?;
    tracing::info!(webhook_id = %webhook.id, queued = event_ids.len(), has_more, "recovery queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(RecoverResult {
            queued: event_ids.len(),
            event_ids,
            has_more,
            next_cursor: next.as_ref().map(encode_cursor),
        }),
    ))
}

/// Where a recover request starts: its `since`, or its cursor's.
fn recover_start(body: &RecoverRequest) -> Result<RecoverCursor, ApiError> {
    let since = body
        .since
        .as_deref()
        .map(|raw| {
            let since = Timestamp::parse(raw).map_err(|e| {
                ApiError::invalid_field("since", format!("not an RFC 3339 time: {e}"))
            })?;
            if since > Timestamp::now() {
                return Err(ApiError::invalid_field(
                    "since",
                    "must not be in the future",
                ));
            }
            Ok(since)
        })
        .transpose()?;
    let cursor = match body.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(decode_cursor::<RecoverCursor>(raw).ok_or_else(|| {
            ApiError::invalid_field(
                "cursor",
                "cursor is not valid here: pass a `next_cursor` from recover",
            )
        })?),
    };
    match (since, cursor) {
        (None, None) => Err(ApiError::invalid_field(
            "since",
            "missing field `since`: give `since` (RFC 3339) or a `cursor`",
        )),
        (Some(since), None) => Ok(RecoverCursor::new(since, None)),
        (None, Some(cursor)) => Ok(cursor),
        (Some(since), Some(cursor)) if since == cursor.since => Ok(cursor),
        (Some(_), Some(_)) => Err(ApiError::invalid_field(
            "since",
            "`since` differs from the cursor's; leave it out or send the same time",
        )),
    }
}

/// The webhook, if it exists in the workspace (404) and is active (409).
async fn active_webhook(
    state: &ApiState,
    workspace: &WorkspaceId,
    id: &WebhookId,
) -> Result<Webhook, ApiError> {
    let webhook = state.webhook(workspace, id).await?;
    if !webhook.is_active {
        return Err(ApiError::Conflict(
            "the webhook is disabled; re-enable it with PATCH {\"is_active\": true} first".into(),
        ));
    }
    Ok(webhook)
}

/// Counts the request against the webhook's manual budget; 429 when it is spent.
async fn take_budget(
    state: &ApiState,
    workspace: &WorkspaceId,
    webhook: &WebhookId,
) -> Result<(), ApiError> {
    let budget = state
        .store
        .take_manual_budget(workspace, webhook, state.config.manual_requests_per_minute)
        .await
        .context("counting a manual request")?
        .ok_or_else(ApiError::webhook_not_found)?;
    match budget {
        ManualBudget::Granted => Ok(()),
        ManualBudget::Exhausted(wait) => Err(ApiError::RateLimited {
            limit: Limit::ManualRequests,
            message: "too many manual retries and recoveries for this webhook; try again later",
            // Rounded up: a client retrying on time must find the window renewed.
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }),
    }
}

/// The attempt number a manual attempt carries: the one after the event's last.
fn next_attempt(attempts_so_far: usize) -> u16 {
    u16::try_from(attempts_so_far + 1).unwrap_or(u16::MAX)
}

fn manual_job(
    webhook: &Webhook,
    event_id: EventId,
    event_type: EventType,
    attempt: u16,
) -> DeliveryJob {
    DeliveryJob {
        webhook_id: webhook.id.clone(),
        workspace_id: webhook.workspace_id.clone(),
        event_id,
        event_type,
        // Only the lag metric reads it, and manual attempts are not observed there.
        event_created: Timestamp::now(),
        attempt,
        trigger: Trigger::Manual,
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_cursors_round_trip_and_belong_to_recover() {
        let since = Timestamp::parse("2026-03-15T10:00:00.123Z").unwrap();
        let after = DeliveryId::generate();
        for cursor in [
            RecoverCursor::new(since, Some(after.clone())),
            RecoverCursor::new(since, None),
        ] {
            let text = encode_cursor(&cursor);
            let back = decode_cursor::<RecoverCursor>(&text).expect("round trip");
            assert_eq!(back.since, since);
            assert_eq!(back.after, cursor.after);
        }
        let listing = encode_cursor(&after);
        assert!(decode_cursor::<RecoverCursor>(&listing).is_none());
        let start = |since: Option<&str>, cursor: Option<String>| {
            recover_start(&RecoverRequest {
                since: since.map(str::to_owned),
                cursor,
            })
        };
        let cursor = encode_cursor(&RecoverCursor::new(since, Some(after.clone())));
        assert_eq!(
            start(None, Some(cursor.clone())).unwrap().after,
            Some(after.clone())
        );
        assert!(start(Some("2026-03-15T10:00:00.123Z"), Some(cursor.clone())).is_ok());
        assert!(start(Some("2026-03-15T10:00:00Z"), Some(cursor)).is_err());
        assert!(start(None, None).is_err());
        assert!(start(None, Some("bm9wZQ".into())).is_err());
    }
}
