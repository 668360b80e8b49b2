//! A delivery job: one (event, webhook) pair, one attempt, and the two ways it crosses
//! the broker.
//!
//! A single job is one message: the body is the exact payload to POST (encoded and made
//! JavaScript-stable once, at ingest); everything else travels in headers. A *bundle*
//! carries several jobs in one message (ingest packs a batch's fan-out that way, and
//! senders their retries and parked jobs, so the broker moves one message for many
//! deliveries): the `x-qr3-jobs` header
//! holds one table per job with the same fields a single job has in its headers, and the
//! body is the payloads back to back, their lengths in `x-qr3-payload-lengths`. No
//! secret is ever in a job.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};

// The names a dead letter is read by too (`dead_letters/letter.rs`).
pub(crate) const WEBHOOK: &str = "x-qr3-webhook-id";
pub(crate) const WORKSPACE: &str = "x-qr3-workspace-id";
pub(crate) const EVENT: &str = "x-qr3-event-id";
const TYPE: &str = "x-qr3-event-type";
const CREATED: &str = "x-qr3-event-created-ms";
const ATTEMPT: &str = "x-qr3-attempt";
const TRIGGER: &str = "x-qr3-trigger";
const DEFERRALS: &str = "x-qr3-deferrals";
const FAILURES: &str = "x-qr3-failures";
pub(crate) const JOBS: &str = "x-qr3-jobs";
const PAYLOAD: &str = "x-qr3-payload";
const PAYLOAD_LENGTHS: &str = "x-qr3-payload-lengths";

pub use qr3_domain::Trigger;

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

/// A text header, borrowed from the message (every job reads four of them).
fn text_header<'a>(headers: &'a FieldTable, name: &str) -> Result<&'a str, InvalidJob> {
    match header(headers, name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .map_err(|_| InvalidJob(format!("header {name} is not UTF-8"))),
        AMQPValue::ShortString(s) => Ok(s.as_str()),
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

fn persistent(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers)
}

impl DeliveryJob {
    /// Properties for publishing: persistent, JSON, ids in headers.
    pub fn properties(&self) -> BasicProperties {
        persistent(self.fields())
    }

    /// The job's fields: a single job's headers, or one entry of a bundle.
    fn fields(&self) -> FieldTable {
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
        headers
    }

    /// Reads a single job back from a consumed message.
    pub fn from_message(properties: &BasicProperties, body: Vec<u8>) -> Result<Self, InvalidJob> {
        let headers = properties
            .headers()
            .as_ref()
            .ok_or_else(|| InvalidJob("no headers".into()))?;
        Self::from_fields(headers, body)
    }

    fn from_fields(headers: &FieldTable, body: Vec<u8>) -> Result<Self, InvalidJob> {
        let created_ms = int_header(headers, CREATED)?;
        let created = chrono::DateTime::from_timestamp_millis(created_ms)
            .ok_or_else(|| invalid("event created out of range"))?;
        let trigger = text_header(headers, TRIGGER)?;
        let trigger = Trigger::parse(trigger)
            .ok_or_else(|| InvalidJob(format!("unknown trigger {trigger}")))?;
        let attempt = u16::try_from(int_header(headers, ATTEMPT)?).map_err(invalid)?;
        if attempt == 0 {
            return Err(invalid("attempt must start at 1"));
        }
        Ok(Self {
            webhook_id: WebhookId::parse(text_header(headers, WEBHOOK)?).map_err(invalid)?,
            workspace_id: WorkspaceId::parse(text_header(headers, WORKSPACE)?).map_err(invalid)?,
            event_id: EventId::parse(text_header(headers, EVENT)?).map_err(invalid)?,
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

/// Reads every job of a consumed message: one for a single job, several for a bundle.
pub fn read_jobs(
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Vec<DeliveryJob>, InvalidJob> {
    let headers = properties
        .headers()
        .as_ref()
        .ok_or_else(|| InvalidJob("no headers".into()))?;
    let Some(entries) = headers.inner().get(JOBS) else {
        return Ok(vec![DeliveryJob::from_fields(headers, body.to_vec())?]);
    };
    let AMQPValue::FieldArray(entries) = entries else {
        return Err(invalid(format!("header {JOBS} is not an array")));
    };
    let AMQPValue::FieldArray(lengths) = header(headers, PAYLOAD_LENGTHS)? else {
        return Err(invalid(format!("header {PAYLOAD_LENGTHS} is not an array")));
    };
    let mut payloads = Vec::with_capacity(lengths.as_slice().len());
    let mut rest = body;
    for length in lengths.as_slice() {
        let length = match length {
            AMQPValue::LongLongInt(n) => usize::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => usize::try_from(*n).ok(),
            AMQPValue::LongInt(n) => usize::try_from(*n).ok(),
            _ => None,
        }
        .filter(|n| *n <= rest.len())
        .ok_or_else(|| invalid("a payload length is not within the body"))?;
        let (payload, tail) = rest.split_at(length);
        payloads.push(payload);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(invalid("the body is longer than its payloads"));
    }
    if entries.as_slice().is_empty() {
        return Err(invalid("a bundle without jobs"));
    }
    entries
        .as_slice()
        .iter()
        .map(|entry| {
            let AMQPValue::FieldTable(fields) = entry else {
                return Err(invalid(format!("an entry of {JOBS} is not a table")));
            };
            let payload = usize::try_from(int_header(fields, PAYLOAD)?)
                .ok()
                .and_then(|i| payloads.get(i))
                .ok_or_else(|| invalid("a job names a payload the bundle does not have"))?;
            DeliveryJob::from_fields(fields, payload.to_vec())
        })
        .collect()
}

/// Packs jobs into as few messages as the limits allow: at most `max_jobs` jobs and,
/// unless one event's payload is bigger by itself, `max_bytes` of payload per message.
/// The jobs of one event share its payload, so a fan-out to ten webhooks carries the
/// payload once. A message that ends up with one job is written as a single job, so
/// `max_jobs = 1` is exactly the one-message-per-job format.
#[derive(Debug)]
pub struct Packer {
    max_jobs: usize,
    max_bytes: usize,
    done: Vec<(BasicProperties, Vec<u8>)>,
    /// The open message's jobs: each one's fields and the index of its payload.
    entries: Vec<(FieldTable, i64)>,
    lengths: Vec<AMQPValue>,
    body: Vec<u8>,
    jobs: usize,
}

impl Packer {
    pub fn new(max_jobs: usize, max_bytes: usize) -> Self {
        Self {
            max_jobs: max_jobs.max(1),
            max_bytes,
            done: Vec::new(),
            entries: Vec::new(),
            lengths: Vec::new(),
            body: Vec::new(),
            jobs: 0,
        }
    }

    /// Adds the jobs of one event, which all POST `payload` (their `body` is ignored).
    pub fn push_event<'a>(
        &mut self,
        jobs: impl IntoIterator<Item = &'a DeliveryJob>,
        payload: &[u8],
    ) {
        // Index of the payload in the open message, once written there.
        let mut written: Option<i64> = None;
        for job in jobs {
            if self.entries.len() == self.max_jobs {
                self.close();
                written = None;
            }
            let index = match written {
                Some(index) => index,
                None => {
                    if !self.entries.is_empty() && self.body.len() + payload.len() > self.max_bytes
                    {
                        self.close();
                    }
                    self.body.extend_from_slice(payload);
                    self.lengths
                        .push(AMQPValue::LongLongInt(payload.len() as i64));
                    let index = self.lengths.len() as i64 - 1;
                    written = Some(index);
                    index
                }
            };
            self.entries.push((job.fields(), index));
            self.jobs += 1;
        }
    }

    fn close(&mut self) {
        let body = std::mem::take(&mut self.body);
        let lengths = std::mem::take(&mut self.lengths);
        let mut entries = std::mem::take(&mut self.entries);
        match entries.len() {
            0 => {}
            // Alone: a single job, its fields as the headers and its payload the body.
            1 => {
                let (fields, _) = entries.remove(0);
                self.done.push((persistent(fields), body));
            }
            _ => {
                let tables: Vec<AMQPValue> = entries
                    .into_iter()
                    .map(|(mut fields, index)| {
                        fields.insert(PAYLOAD.into(), AMQPValue::LongLongInt(index));
                        AMQPValue::FieldTable(fields)
                    })
                    .collect();
                let mut headers = FieldTable::default();
                headers.insert(JOBS.into(), AMQPValue::FieldArray(tables.into()));
                headers.insert(
                    PAYLOAD_LENGTHS.into(),
                    AMQPValue::FieldArray(lengths.into()),
                );
                self.done.push((persistent(headers), body));
            }
        }
    }

    /// How many jobs were pushed.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// The messages: properties and body of each.
    pub fn finish(mut self) -> Vec<(BasicProperties, Vec<u8>)> {
        self.close();
        self.done
    }

    /// The messages, addressed to `queue` (through the default exchange).
    pub fn into_messages(self, queue: &str) -> Vec<crate::Outgoing> {
        self.finish()
            .into_iter()
            .map(|(properties, body)| crate::Outgoing {
                exchange: String::new(),
                routing_key: queue.to_owned(),
                properties,
                body,
            })
            .collect()
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

/// How many times the job of a single-job message failed before any attempt could be
/// made (0 when never). A failed job always travels alone, so the count is the job's.
pub fn failures(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| int_header(headers, FAILURES).ok())
        .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// `properties` with the job's failure count set to `failures`.
pub fn with_failures(properties: &BasicProperties, failures: u32) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(FAILURES.into(), AMQPValue::LongLongInt(i64::from(failures)));
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

    #[test]
    fn every_trigger_round_trips() {
        for trigger in [
            Trigger::Event,
            Trigger::Ping,
            Trigger::Manual,
            Trigger::Resend,
        ] {
            let mut sent = job("evt_trigger");
            sent.trigger = trigger;
            let back = DeliveryJob::from_message(&sent.properties(), sent.body.clone()).unwrap();
            assert_eq!(back.trigger, trigger, "{}", trigger.as_str());
        }
    }

    fn job(event: &str) -> DeliveryJob {
        DeliveryJob {
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::parse(event).unwrap(),
            event_type: EventType::QrCreated,
            event_created: Timestamp::parse("2026-03-15T10:00:00.123Z").unwrap(),
            attempt: 1,
            trigger: Trigger::Event,
            body: Vec::new(),
        }
    }

    /// Every job read back from the packed messages, with the payload it POSTs.
    fn unpack(messages: &[(BasicProperties, Vec<u8>)]) -> Vec<(String, String, Vec<u8>)> {
        messages
            .iter()
            .flat_map(|(properties, body)| read_jobs(properties, body).unwrap())
            .map(|j| (j.webhook_id.to_string(), j.event_id.to_string(), j.body))
            .collect()
    }

    #[test]
    fn packs_events_into_bundles_and_reads_them_back() {
        let a: Vec<_> = (0..3).map(|_| job("evt_a")).collect();
        let b: Vec<_> = (0..2).map(|_| job("evt_b")).collect();
        let mut packer = Packer::new(4, 1 << 20);
        packer.push_event(&a, b"{\"a\":1}");
        packer.push_event(&b, b"{\"b\":22}");
        assert_eq!(packer.jobs(), 5);
        let messages = packer.finish();
        // Four jobs in the first message (both payloads), the fifth alone as a single job.
        assert_eq!(messages.len(), 2);
        assert!(messages[0].0.headers().as_ref().unwrap().contains_key(JOBS));
        assert_eq!(messages[0].1, b"{\"a\":1}{\"b\":22}");
        assert!(!messages[1].0.headers().as_ref().unwrap().contains_key(JOBS));
        assert_eq!(messages[1].1, b"{\"b\":22}");
        let expected: Vec<_> = a
            .iter()
            .map(|j| {
                (
                    j.webhook_id.to_string(),
                    "evt_a".to_owned(),
                    b"{\"a\":1}".to_vec(),
                )
            })
            .chain(b.iter().map(|j| {
                (
                    j.webhook_id.to_string(),
                    "evt_b".to_owned(),
                    b"{\"b\":22}".to_vec(),
                )
            }))
            .collect();
        assert_eq!(unpack(&messages), expected);
    }

    #[test]
    fn one_job_per_message_is_the_single_format() {
        let jobs: Vec<_> = (0..3).map(|_| job("evt_a")).collect();
        let mut packer = Packer::new(1, 1 << 20);
        packer.push_event(&jobs, b"{}");
        let messages = packer.finish();
        assert_eq!(messages.len(), 3);
        for ((properties, body), job) in messages.iter().zip(&jobs) {
            let single = DeliveryJob::from_message(properties, body.clone()).unwrap();
            assert_eq!(single.webhook_id, job.webhook_id);
            assert_eq!(single.body, b"{}");
        }
    }

    #[test]
    fn a_payload_over_the_byte_limit_starts_a_new_message() {
        let mut packer = Packer::new(100, 10);
        packer.push_event(&[job("evt_a")], b"123456");
        packer.push_event(&[job("evt_b"), job("evt_b")], b"1234567890ab");
        packer.push_event(&[job("evt_c")], b"12");
        let messages = packer.finish();
        let bodies: Vec<&[u8]> = messages.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(bodies, [&b"123456"[..], b"1234567890ab", b"12"]);
        assert_eq!(unpack(&messages).len(), 4);
        assert!(Packer::new(5, 5).finish().is_empty());
    }

    #[test]
    fn inconsistent_bundles_are_invalid() {
        let mut packer = Packer::new(10, 1 << 20);
        packer.push_event(&[job("evt_a"), job("evt_a")], b"{}");
        let (properties, body) = packer.finish().remove(0);
        assert_eq!(read_jobs(&properties, &body).unwrap().len(), 2);
        assert!(
            read_jobs(&properties, b"{}x").is_err(),
            "body longer than payloads"
        );
        assert!(
            read_jobs(&properties, b"{").is_err(),
            "body shorter than payloads"
        );
        let mut headers = properties.headers().clone().unwrap();
        headers.insert(PAYLOAD_LENGTHS.into(), AMQPValue::FieldArray(vec![].into()));
        let no_payload = properties.clone().with_headers(headers.clone());
        assert!(
            read_jobs(&no_payload, b"").is_err(),
            "job names a missing payload"
        );
        headers.insert(JOBS.into(), AMQPValue::LongLongInt(1));
        assert!(read_jobs(&properties.with_headers(headers), b"").is_err());
    }
}
