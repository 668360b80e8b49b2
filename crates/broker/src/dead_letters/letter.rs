//! One dead letter: the headers it is parked with (`Verdict`, the only writer of our
//! dead-letter headers), what its headers say (reason, error, ids, where it came from)
//! and the headers it is put back or redriven with.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde::Serialize;

use super::DeadQueue;
// The job headers that say whom a dead job was for.
use crate::job::{EVENT as EVENT_ID, JOBS, WEBHOOK as WEBHOOK_ID, WORKSPACE as WORKSPACE_ID};
use crate::{Outgoing, Topology};

/// Why the message was dead-lettered (ours: `invalid_json`, `invalid_job`, `job_failed`, …).
pub const REASON: &str = "x-qr3-reason";
/// The error behind the reason, for people.
pub const ERROR: &str = "x-qr3-error";
/// The queue a dead letter goes back to, when whoever parked it says so.
pub const ORIGIN: &str = "x-qr3-queue";
/// The routing key an event was published with (ingest's dead letters).
pub const ROUTING_KEY: &str = "x-qr3-routing-key";
/// RabbitMQ's record of dead-lettering, most recent first.
const X_DEATH: &str = "x-death";
/// How often a quorum queue has handed the message out before, added to each delivery.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers a redriven message no longer carries: our verdict and the broker's history.
/// A redriven message starts afresh; its job headers (ids, attempt, trigger) stay.
const STRIPPED_ON_REDRIVE: &[&str] = &[
    REASON,
    ERROR,
    ORIGIN,
    X_DEATH,
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    DELIVERY_COUNT,
];

/// How much of a body a listing shows.
const EXCERPT_CHARS: usize = 200;

/// Why a message is parked on a dead-letter queue, as its headers will say it: the
/// reason (a short label: `invalid_json`, `invalid_job`, `job_failed`, …), the error
/// behind it, and optionally where it goes back to and the routing key it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: String,
    pub error: String,
    /// `x-qr3-queue`: the queue a redrive sends it to, when that is not where the
    /// dead-letter queue is fed from.
    pub origin: Option<String>,
    /// `x-qr3-routing-key`: the routing key it was published with, which a message
    /// taken from its queue and published again to a dead-letter queue loses.
    pub routing_key: Option<String>,
}

impl Verdict {
    pub fn new(reason: &str, error: impl std::fmt::Display) -> Self {
        Self {
            reason: reason.to_owned(),
            error: error.to_string(),
            origin: None,
            routing_key: None,
        }
    }

    /// The same verdict, naming the queue the message goes back to.
    pub fn origin(mut self, queue: impl Into<String>) -> Self {
        self.origin = Some(queue.into());
        self
    }

    /// The same verdict, keeping the routing key the message came with.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// The dead letter: `body` for `queue` (through the default exchange), with the
    /// properties `kept` (those that still describe the message; default ones when
    /// none do), made persistent, and this verdict's headers added to its headers.
    pub fn letter(&self, queue: String, kept: BasicProperties, body: Vec<u8>) -> Outgoing {
        let mut headers = kept.headers().clone().unwrap_or_default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert(REASON.into(), text(&self.reason));
        headers.insert(ERROR.into(), text(&self.error));
        if let Some(origin) = &self.origin {
            headers.insert(ORIGIN.into(), text(origin));
        }
        if let Some(key) = &self.routing_key {
            headers.insert(ROUTING_KEY.into(), text(key));
        }
        Outgoing {
            exchange: String::new(),
            routing_key: queue,
            properties: kept.with_delivery_mode(2).with_headers(headers),
            body,
        }
    }
}

/// What a dead letter says about itself, as its headers say it: ids and names are not
/// validated, since a message may be dead precisely because they are wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The dead-letter queue it is on.
    pub queue: String,
    /// `x-qr3-reason`, else the broker's reason (`rejected`, `delivery_limit`, …).
    pub reason: Option<String>,
    /// `x-qr3-error`.
    pub error: Option<String>,
    /// Where a redrive sends it: `x-qr3-queue`, else the queue the broker dead-lettered
    /// it from, else the main queue that feeds this dead-letter queue.
    pub origin: String,
    /// How many times the broker dead-lettered it from `origin` (`x-death` count).
    pub deaths: Option<i64>,
    /// The event's routing key (the event type), when known.
    pub routing_key: Option<String>,
    pub event_id: Option<String>,
    pub webhook_id: Option<String>,
    pub workspace_id: Option<String>,
    /// For a bundle, how many jobs it carries.
    pub jobs: Option<usize>,
    pub body_bytes: usize,
    /// The first characters of the body (invalid UTF-8 replaced).
    pub body_excerpt: String,
}

impl DeadLetter {
    /// Reads a message taken from `dead`.
    pub fn read(
        topology: &Topology,
        dead: DeadQueue,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Self {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let death = last_death(headers);
        let death_text = |key: &str| death.and_then(|d| text(d.inner().get(key)?));
        Self {
            queue: dead.name(topology),
            reason: header_text(headers, REASON).or_else(|| death_text("reason")),
            error: header_text(headers, ERROR),
            origin: origin(topology, dead, headers),
            deaths: death.and_then(|d| integer(d.inner().get("count")?)),
            routing_key: header_text(headers, ROUTING_KEY).or_else(|| {
                match death?.inner().get("routing-keys")? {
                    AMQPValue::FieldArray(keys) => keys.as_slice().iter().find_map(text),
                    _ => None,
                }
            }),
            event_id: header_text(headers, EVENT_ID),
            webhook_id: header_text(headers, WEBHOOK_ID),
            workspace_id: header_text(headers, WORKSPACE_ID),
            jobs: match headers.inner().get(JOBS) {
                Some(AMQPValue::FieldArray(jobs)) => Some(jobs.as_slice().len()),
                _ => None,
            },
            body_bytes: body.len(),
            body_excerpt: String::from_utf8_lossy(body)
                .chars()
                .take(EXCERPT_CHARS)
                .collect(),
        }
    }
}

/// Where a dead letter goes back to: `x-qr3-queue`, else `x-death[0].queue`, else the
/// main queue of the dead-letter queue it is on.
pub fn origin(topology: &Topology, dead: DeadQueue, headers: &FieldTable) -> String {
    header_text(headers, ORIGIN)
        .or_else(|| text(last_death(headers)?.inner().get("queue")?))
        .unwrap_or_else(|| dead.feeds_from(topology))
}

/// The properties a redriven message is published with: the same, without the headers
/// of `STRIPPED_ON_REDRIVE`, and persistent.
pub fn redrive_properties(properties: &BasicProperties) -> BasicProperties {
    without_headers(properties, STRIPPED_ON_REDRIVE).with_delivery_mode(2)
}

/// The properties a listed message is put back with: the same, without the delivery
/// count the broker added when it handed the message out (it describes that delivery,
/// not the message).
pub(super) fn rotate_properties(properties: &BasicProperties) -> BasicProperties {
    without_headers(properties, &[DELIVERY_COUNT])
}

fn without_headers(properties: &BasicProperties, names: &[&str]) -> BasicProperties {
    let Some(headers) = properties.headers().as_ref() else {
        return properties.clone();
    };
    let kept: BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(name, _)| !names.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    properties.clone().with_headers(FieldTable::from(kept))
}

fn last_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get(X_DEATH)? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    text(headers.inner().get(name)?)
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}
#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString, ShortString};
    use qr3_config::Settings;
    use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};

    use super::*;
    use crate::{DeliveryJob, Packer, Trigger};

    fn topology() -> Topology {
        let mut settings = Settings::defaults();
        settings.amqp.prefix = "p".into();
        Topology::from_settings(&settings)
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    /// `x-death` as RabbitMQ writes it when it dead-letters from `queue`.
    fn x_death(queue: &str, reason: &str, routing_key: &str) -> (&'static str, AMQPValue) {
        let death = table(&[
            ("count", AMQPValue::LongLongInt(1)),
            ("reason", long(reason)),
            ("queue", long(queue)),
            ("exchange", long("")),
            (
                "routing-keys",
                AMQPValue::FieldArray(FieldArray::from(vec![long(routing_key)])),
            ),
        ]);
        (
            X_DEATH,
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        )
    }

    fn properties(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table(headers))
    }

    fn job() -> DeliveryJob {
        DeliveryJob {
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::parse("evt_dead").unwrap(),
            event_type: EventType::QrCreated,
            event_created: Timestamp::parse("2026-03-15T10:00:00.123Z").unwrap(),
            attempt: 3,
            trigger: Trigger::Event,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_verdict_adds_its_headers_to_the_kept_ones_and_reads_back() {
        let t = topology();
        let job = job();
        let letter = Verdict::new("job_failed", "the job failed 5 times")
            .origin(t.deliveries_queue())
            .letter(t.deliveries_dead_queue(), job.properties(), b"{}".to_vec());
        assert_eq!(letter.exchange, "");
        assert_eq!(letter.routing_key, "p.deliveries.dead");
        assert_eq!(letter.properties.delivery_mode(), &Some(2));
        assert_eq!(
            letter
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/json"),
            "the kept properties stay"
        );
        let read = DeadLetter::read(&t, DeadQueue::Deliveries, &letter.properties, &letter.body);
        assert_eq!(read.reason.as_deref(), Some("job_failed"));
        assert_eq!(read.error.as_deref(), Some("the job failed 5 times"));
        assert_eq!(read.origin, "p.deliveries");
        assert_eq!(read.event_id.as_deref(), Some("evt_dead"));
        assert_eq!(read.routing_key, None);

        let event = Verdict::new("invalid_json", "expected value")
            .routing_key("qr.created")
            .letter(
                t.ingest_dead_queue(),
                BasicProperties::default(),
                b"{".to_vec(),
            );
        let read = DeadLetter::read(&t, DeadQueue::Ingest, &event.properties, &event.body);
        assert_eq!(read.routing_key.as_deref(), Some("qr.created"));
        assert_eq!(read.origin, "p.ingest");
        assert_eq!(
            event.properties.headers().as_ref().map(|h| h.inner().len()),
            Some(3),
            "reason, error and routing key only"
        );
    }

    #[test]
    fn reads_our_reason_error_and_routing_key_and_defaults_the_origin_by_queue() {
        let t = topology();
        let props = properties(&[
            (REASON, long("invalid_json")),
            (ERROR, long("expected value at line 1 column 1")),
            (ROUTING_KEY, long("qr.created")),
        ]);
        let body = "é".repeat(300);
        let letter = DeadLetter::read(&t, DeadQueue::Ingest, &props, body.as_bytes());
        assert_eq!(letter.queue, "p.ingest.dead");
        assert_eq!(letter.reason.as_deref(), Some("invalid_json"));
        assert_eq!(
            letter.error.as_deref(),
            Some("expected value at line 1 column 1")
        );
        assert_eq!(letter.origin, "p.ingest");
        assert_eq!(letter.routing_key.as_deref(), Some("qr.created"));
        assert_eq!(letter.deaths, None);
        assert_eq!(letter.body_bytes, 600);
        assert_eq!(letter.body_excerpt, "é".repeat(EXCERPT_CHARS));
    }

    #[test]
    fn the_origin_is_our_header_then_the_broker_s_then_the_queue_s() {
        let t = topology();
        let ours = table(&[
            (ORIGIN, long("p.deliveries")),
            x_death("p.ingest", "rejected", "qr.created"),
        ]);
        assert_eq!(origin(&t, DeadQueue::Ingest, &ours), "p.deliveries");
        let broker = table(&[x_death("p.deliveries", "delivery_limit", "p.deliveries")]);
        assert_eq!(origin(&t, DeadQueue::Ingest, &broker), "p.deliveries");
        let none = FieldTable::default();
        assert_eq!(origin(&t, DeadQueue::Deliveries, &none), "p.deliveries");
        assert_eq!(origin(&t, DeadQueue::Ingest, &none), "p.ingest");
    }

    #[test]
    fn a_broker_dead_letter_shows_the_broker_s_reason_count_and_routing_key() {
        let props = properties(&[x_death("p.ingest", "delivery_limit", "qr.scanned")]);
        let letter = DeadLetter::read(&topology(), DeadQueue::Ingest, &props, b"{}");
        assert_eq!(letter.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(letter.error, None);
        assert_eq!(letter.origin, "p.ingest");
        assert_eq!(letter.deaths, Some(1));
        assert_eq!(letter.routing_key.as_deref(), Some("qr.scanned"));
    }

    #[test]
    fn reads_the_ids_of_a_single_job_and_counts_a_bundle() {
        let t = topology();
        let single = job();
        let letter = DeadLetter::read(&t, DeadQueue::Deliveries, &single.properties(), b"{}");
        assert_eq!(letter.event_id.as_deref(), Some("evt_dead"));
        assert_eq!(
            letter.webhook_id.as_deref(),
            Some(single.webhook_id.as_str())
        );
        assert_eq!(
            letter.workspace_id.as_deref(),
            Some(single.workspace_id.as_str())
        );
        assert_eq!(letter.jobs, None);

        let mut packer = Packer::new(10, 1 << 20);
        let jobs = [job(), job(), job()];
        packer.push_event(&jobs, b"{}");
        let messages = packer.finish();
        assert_eq!(messages.len(), 1);
        let (props, body) = &messages[0];
        let letter = DeadLetter::read(&t, DeadQueue::Deliveries, props, body);
        assert_eq!(letter.jobs, Some(3));
        assert_eq!(letter.event_id, None);
    }

    #[test]
    fn a_redrive_strips_the_verdict_and_the_broker_s_history_and_keeps_the_job() {
        let single = job();
        let mut headers = single.properties().headers().clone().unwrap();
        for (name, value) in [
            (REASON, long("job_failed")),
            (ERROR, long("gave up")),
            (ORIGIN, long("p.deliveries")),
            ("x-first-death-reason", long("rejected")),
            ("x-first-death-queue", long("p.deliveries")),
            ("x-first-death-exchange", long("")),
            ("x-last-death-reason", long("rejected")),
            ("x-last-death-queue", long("p.deliveries")),
            ("x-last-death-exchange", long("")),
            ("x-delivery-count", AMQPValue::LongLongInt(2)),
            x_death("p.deliveries", "rejected", "p.deliveries"),
        ] {
            headers.insert(name.into(), value);
        }
        let dead = single.properties().with_headers(headers);
        let redriven = redrive_properties(&dead);
        assert_eq!(redriven.headers(), single.properties().headers());
        assert_eq!(redriven.delivery_mode(), &Some(2));
        assert_eq!(redriven.content_type(), dead.content_type());
        let back = DeliveryJob::from_message(&redriven, b"{}".to_vec()).unwrap();
        assert_eq!(back.attempt, 3);
        assert_eq!(back.event_id, single.event_id);
    }

    #[test]
    fn a_listed_message_goes_back_as_it_was_without_the_broker_s_delivery_count() {
        let mut headers = table(&[
            (REASON, long("job_failed")),
            x_death("p.deliveries", "rejected", "p.deliveries"),
        ]);
        let stored = properties(&[]).with_headers(headers.clone());
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(0));
        let delivered = stored.clone().with_headers(headers);
        assert_eq!(rotate_properties(&delivered), stored);
    }
}
