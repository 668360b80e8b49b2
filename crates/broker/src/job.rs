//! A delivery job: one (event, webhook) pair, one attempt.
//!
//! The message body is the exact payload to POST (encoded and made JavaScript-stable
//! once, at ingest); everything else travels in headers. No secret is ever in a job.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};

const WEBHOOK: &str = "x-qr3-webhook-id";
const WORKSPACE: &str = "x-qr3-workspace-id";
const EVENT: &str = "x-qr3-event-id";
const TYPE: &str = "x-qr3-event-type";
const CREATED: &str = "x-qr3-event-created-ms";
const ATTEMPT: &str = "x-qr3-attempt";
const TRIGGER: &str = "x-qr3-trigger";
const DEFERRALS: &str = "x-qr3-deferrals";

/// Why a job was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Fan-out of a published event, and its automatic retries.
    Event,
    /// `POST /v1/webhooks/:id/ping`.
    Ping,
    /// A manual retry or recovery through the API: one attempt, never retried.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Event => "event",
            Trigger::Ping => "ping",
            Trigger::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub webhook_id: WebhookId,
    pub workspace_id: WorkspaceId,
    pub event_id: EventId,
    pub event_type: EventType,
    pub event_created: Timestamp,
    pub attempt: u16,
    pub trigger: Trigger,
    pub body: Vec<u8>,
}

/// The message is not a job this version understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid delivery job: {0}")]
pub struct InvalidJob(pub String);

fn header<'a>(headers: &'a FieldTable, name: &str) -> Result<&'a AMQPValue, InvalidJob> {
    headers
        .inner()
        .get(name)
        .ok_or_else(|| InvalidJob(format!("missing header {name}")))
}

fn text_header(headers: &FieldTable, name: &str) -> Result<String, InvalidJob> {
    match header(headers, name)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec())
            .map_err(|_| InvalidJob(format!("header {name} is not UTF-8"))),
        AMQPValue::ShortString(s) => Ok(s.as_str().to_owned()),
        _ => Err(InvalidJob(format!("header {name} is not a string"))),
    }
}

fn int_header(headers: &FieldTable, name: &str) -> Result<i64, InvalidJob> {
    match header(headers, name)? {
        AMQPValue::LongLongInt(n) => Ok(*n),
        AMQPValue::LongInt(n) => Ok(i64::from(*n)),
        AMQPValue::LongUInt(n) => Ok(i64::from(*n)),
        AMQPValue::ShortInt(n) => Ok(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Ok(i64::from(*n)),
        _ => Err(InvalidJob(format!("header {name} is not an integer"))),
    }
}

fn invalid(e: impl std::fmt::Display) -> InvalidJob {
    InvalidJob(e.to_string())
}

impl DeliveryJob {
    /// Properties for publishing: persistent, JSON, ids in headers.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert(WEBHOOK.into(), text(self.webhook_id.as_str()));
        headers.insert(WORKSPACE.into(), text(self.workspace_id.as_str()));
        headers.insert(EVENT.into(), text(self.event_id.as_str()));
        headers.insert(TYPE.into(), text(self.event_type.as_str()));
        headers.insert(
            CREATED.into(),
            AMQPValue::LongLongInt(self.event_created.unix_millis()),
        );
        headers.insert(
            ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        headers.insert(TRIGGER.into(), text(self.trigger.as_str()));
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers)
    }

    /// Reads a job back from a consumed message.
    pub fn from_message(properties: &BasicProperties, body: Vec<u8>) -> Result<Self, InvalidJob> {
        let headers = properties
            .headers()
            .as_ref()
            .ok_or_else(|| InvalidJob("no headers".into()))?;
        let created_ms = int_header(headers, CREATED)?;
        let created = chrono::DateTime::from_timestamp_millis(created_ms)
            .ok_or_else(|| invalid("event created out of range"))?;
        let trigger = match text_header(headers, TRIGGER)?.as_str() {
            "event" => Trigger::Event,
            "ping" => Trigger::Ping,
            "manual" => Trigger::Manual,
            other => return Err(InvalidJob(format!("unknown trigger {other}"))),
        };
        let attempt = u16::try_from(int_header(headers, ATTEMPT)?).map_err(invalid)?;
        if attempt == 0 {
            return Err(invalid("attempt must start at 1"));
        }
        Ok(Self {
            webhook_id: WebhookId::parse(&text_header(headers, WEBHOOK)?).map_err(invalid)?,
            workspace_id: WorkspaceId::parse(&text_header(headers, WORKSPACE)?).map_err(invalid)?,
            event_id: EventId::parse(&text_header(headers, EVENT)?).map_err(invalid)?,
            event_type: text_header(headers, TYPE)?.parse().map_err(invalid)?,
            event_created: Timestamp::from(created),
            attempt,
            trigger,
            body,
        })
    }

    /// The same job, one attempt later.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }
}

/// How many times a job message was parked in a defer queue (0 when never).
pub fn deferrals(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| int_header(headers, DEFERRALS).ok())
        .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// `properties` with the job's deferral count set to `deferrals`.
pub fn with_deferrals(properties: &BasicProperties, deferrals: u32) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        DEFERRALS.into(),
        AMQPValue::LongLongInt(i64::from(deferrals)),
    );
    properties.clone().with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_properties() {
        let job = DeliveryJob {
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::parse("evt_abc").unwrap(),
            event_type: EventType::ScanCreated,
            event_created: Timestamp::parse("2026-03-15T10:00:00.123Z").unwrap(),
            attempt: 2,
            trigger: Trigger::Event,
            body: b"{}".to_vec(),
        };
        let back = DeliveryJob::from_message(&job.properties(), job.body.clone()).unwrap();
        assert_eq!(back.webhook_id, job.webhook_id);
        assert_eq!(back.event_type, EventType::ScanCreated);
        assert_eq!(back.event_created, job.event_created);
        assert_eq!(back.attempt, 2);
        assert!(DeliveryJob::from_message(&BasicProperties::default(), vec![]).is_err());
    }
}
