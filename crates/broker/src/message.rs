//! The event message the platform publishes (SPEC C "Event ingestion contract"), and
//! why one can be refused.

use qr3_domain::{EventId, EventType, Timestamp, WorkspaceId};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The wire form. Unknown extra fields are ignored so the platform can add fields
/// without breaking ingest; missing or mistyped required fields are refused.
#[derive(Debug, Deserialize)]
pub struct EventMessage {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub workspace_id: String,
    #[serde(default)]
    pub created: Option<String>,
    pub data: Map<String, Value>,
}

/// A parsed, valid event.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub id: EventId,
    pub event_type: EventType,
    pub workspace_id: WorkspaceId,
    pub created: Timestamp,
    pub data: Map<String, Value>,
}

/// Why an event message was dead-lettered. `reason()` is the metric label and the
/// `x-qr3-reason` header; the message explains it to a human.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("message is {size} bytes, larger than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("message is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("message does not match the event schema: {0}")]
    Schema(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("invalid field `{field}`: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::Schema(_) => "invalid_schema",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::InvalidField { .. } => "invalid_field",
        }
    }
}

impl IncomingEvent {
    /// Parses and validates one message body. An event without `id` gets a fresh one
    /// (it then cannot be de-duplicated); one without `created` is stamped now.
    pub fn parse(body: &[u8], max_bytes: usize) -> Result<Self, Rejection> {
        if body.len() > max_bytes {
            return Err(Rejection::TooLarge {
                size: body.len(),
                max: max_bytes,
            });
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
        let message: EventMessage =
            serde_json::from_value(value).map_err(|e| Rejection::Schema(e.to_string()))?;
        let event_type: EventType = message
            .event_type
            .parse()
            .map_err(|_| Rejection::UnknownType(message.event_type.chars().take(100).collect()))?;
        if !event_type.is_publishable() {
            return Err(Rejection::UnknownType(format!(
                "{event_type} (sent only by the ping endpoint)"
            )));
        }
        let workspace_id =
            WorkspaceId::parse(&message.workspace_id).map_err(|e| Rejection::InvalidField {
                field: "workspace_id",
                message: e.to_string(),
            })?;
        let id = match message.id {
            Some(id) => EventId::parse(&id).map_err(|e| Rejection::InvalidField {
                field: "id",
                message: e.to_string(),
            })?,
            None => EventId::generate(),
        };
        let created = match message.created {
            Some(created) => Timestamp::parse(&created).map_err(|e| Rejection::InvalidField {
                field: "created",
                message: e.to_string(),
            })?,
            None => Timestamp::now(),
        };
        Ok(Self {
            id,
            event_type,
            workspace_id,
            created,
            data: message.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str = "ws_01jd0000000000000000000000";

    fn parse(s: &str) -> Result<IncomingEvent, Rejection> {
        IncomingEvent::parse(s.as_bytes(), 1024)
    }

    #[test]
    fn accepts_the_contract() {
        let e = parse(&format!(r#"{{"id":"evt_1","type":"qr.scanned","workspace_id":"{WS}","created":"2026-03-15T10:00:00Z","data":{{"a":1}},"extra":true}}"#)).unwrap();
        assert_eq!(e.id.as_str(), "evt_1");
        assert_eq!(e.created.to_string(), "2026-03-15T10:00:00.000Z");
        let e = parse(&format!(
            r#"{{"type":"scan.created","workspace_id":"{WS}","data":{{}}}}"#
        ))
        .unwrap();
        assert!(e.id.as_str().starts_with("evt_"));
    }

    #[test]
    fn refuses_each_kind_of_bad_message() {
        let reason = |s: &str| parse(s).unwrap_err().reason();
        assert_eq!(reason("not json"), "invalid_json");
        assert_eq!(
            reason(r#"{"type":"qr.scanned","data":{}}"#),
            "invalid_schema"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"type":"qr.nope","workspace_id":"{WS}","data":{{}}}}"#
            )),
            "unknown_type"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"type":"webhook.ping","workspace_id":"{WS}","data":{{}}}}"#
            )),
            "unknown_type"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"type":"qr.created","workspace_id":"{WS}","data":[]}}"#
            )),
            "invalid_schema"
        );
        assert_eq!(
            reason(r#"{"type":"qr.created","workspace_id":"nope","data":{}}"#),
            "invalid_field"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"id":"x","type":"qr.created","workspace_id":"{WS}","data":{{}}}}"#
            )),
            "invalid_field"
        );
        assert_eq!(
            IncomingEvent::parse(&[b' '; 2000], 1024)
                .unwrap_err()
                .reason(),
            "too_large"
        );
    }
}
