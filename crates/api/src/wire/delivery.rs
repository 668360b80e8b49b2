//! Delivery-log entries on the wire, and the listing's query parameters.

use qr3_store::{AttemptRecord, AttemptStatus, AttemptTrigger};
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
    /// 1 for the first attempt, 2 and 3 for the retries.
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

impl From<AttemptTrigger> for DeliveryTrigger {
    fn from(t: AttemptTrigger) -> Self {
        match t {
            AttemptTrigger::Event => Self::Event,
            AttemptTrigger::Ping => Self::Ping,
            AttemptTrigger::Manual => Self::Manual,
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
