//! Delivery-log entries on the wire, and the listing's query parameters.

use std::collections::BTreeMap;

use qr3_store::{AttemptRecord, AttemptStatus};

use qr3_domain::Trigger;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::webhook::EventTypeName;

/// A page of deliveries (`Page<Delivery>`), as `#[utoipa::path]` names it.
pub type DeliveryPage = super::page::Page<Delivery>;

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "whd_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "event_id": "evt_abc123xyz", "event_type": "qr.scanned", "status": "success",
    "status_code": 200, "response_time_ms": 145, "attempt": 1, "trigger": "event",
    "error": null, "created_at": "2026-03-15T10:00:00.000Z"}))]
pub struct Delivery {
    /// `whd_` followed by 26 characters; sorts by creation time.
    pub id: String,
    pub event_id: String,
    #[schema(value_type = EventTypeName)]
    pub event_type: String,
    pub status: DeliveryStatus,
    /// The endpoint's HTTP status; `null` when no response arrived.
    #[schema(required = true, minimum = 100, maximum = 999)]
    pub status_code: Option<u16>,
    /// From sending the request to the response (or the failure).
    pub response_time_ms: u32,
    /// 1 for the first attempt, 2 and 3 for the retries; a manual attempt carries the
    /// number after the event's last attempt.
    #[schema(minimum = 1)]
    pub attempt: u16,
    pub trigger: DeliveryTrigger,
    /// What went wrong on the network (connect, TLS, timeout); `null` otherwise.
    #[schema(required = true)]
    pub error: Option<String>,
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub created_at: String,
}

impl From<AttemptRecord> for Delivery {
    fn from(a: AttemptRecord) -> Self {
        Self {
            id: a.id.to_string(),
            event_id: a.event_id.to_string(),
            event_type: a.event_type.as_str().to_owned(),
            status: a.status.into(),
            status_code: a.status_code,
            response_time_ms: a.response_time_ms,
            attempt: a.attempt,
            trigger: a.trigger.into(),
            error: a.error,
            created_at: a.created_at.to_string(),
        }
    }
}

/// One delivery attempt with what was sent and the start of what came back:
/// `GET /v1/webhooks/{id}/deliveries/{delivery_id}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "whd_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "event_id": "evt_abc123xyz", "event_type": "qr.scanned", "status": "failed",
    "status_code": 500, "response_time_ms": 145, "attempt": 1, "trigger": "event",
    "error": null, "created_at": "2026-03-15T10:00:00.000Z",
    "request": {"headers": {"content-type": "application/json",
        "x-qr3-signature": "sha256=5257a869…", "webhook-id": "evt_abc123xyz"},
        "body": "{\"id\":\"evt_abc123xyz\",\"type\":\"qr.scanned\",\"created\":\"2026-03-15T10:00:00.000Z\",\"data\":{}}"},
    "response_body": "{\"error\":\"database unavailable\"}"}))]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    /// The request as sent; `null` for attempts logged before details were kept.
    #[schema(required = true)]
    pub request: Option<SentRequest>,
    /// The first bytes of the response body (`delivery.response_body_bytes`, 1 KiB by
    /// default), decoded as UTF-8; `null` when there was no response or nothing was
    /// kept.
    #[schema(required = true)]
    pub response_body: Option<String>,
}

/// What an attempt sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct SentRequest {
    /// Every header the sender set, by lowercase name.
    pub headers: BTreeMap<String, String>,
    /// The exact body posted: the signed bytes.
    pub body: String,
}

impl From<AttemptRecord> for DeliveryDetail {
    fn from(mut a: AttemptRecord) -> Self {
        let detail = a.detail.take();
        let response_body = detail.as_ref().and_then(|d| d.response_body.clone());
        Self {
            delivery: a.into(),
            request: detail.map(|d| SentRequest {
                headers: d.request_headers.into_iter().collect(),
                body: d.request_body,
            }),
            response_body,
        }
    }
}

/// `success`: the endpoint answered 2xx. `failed`: anything else (3xx, 4xx, 5xx, no
/// response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Success,
    Failed,
}

impl From<AttemptStatus> for DeliveryStatus {
    fn from(s: AttemptStatus) -> Self {
        match s {
            AttemptStatus::Success => Self::Success,
            AttemptStatus::Failed => Self::Failed,
        }
    }
}

/// What caused the attempt: a published `event`, a `ping`, or a `manual` resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryTrigger {
    Event,
    Ping,
    Manual,
}

impl From<Trigger> for DeliveryTrigger {
    fn from(t: Trigger) -> Self {
        match t {
            Trigger::Event => Self::Event,
            Trigger::Ping => Self::Ping,
            // The log records a resend as `manual` (`Trigger::logged`).
            Trigger::Manual | Trigger::Resend => Self::Manual,
        }
    }
}

/// Query parameters of `GET /v1/webhooks/{id}/deliveries`. Every value arrives as text
/// and is validated by the handler.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only attempts with this outcome.
    #[param(value_type = Option<DeliveryStatus>)]
    pub status: Option<String>,
    /// Only attempts of events published under this type (exact name: `scan.created`
    /// and `qr.scanned` are listed apart).
    #[param(value_type = Option<EventTypeName>)]
    pub event_type: Option<String>,
    /// Items per page, 1 to 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page; omit (or leave empty) for the first page.
    pub cursor: Option<String>,
}
