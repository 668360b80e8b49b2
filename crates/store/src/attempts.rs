//! The delivery log: one row per attempt, written in batches, read newest first.
//!
//! A batch is one transaction: the rows go in with a single multi-row `INSERT … SELECT
//! FROM unnest(…)`, and each webhook's consecutive-failure count is updated once, by one
//! `UPDATE … FROM unnest(…)`. That update is also where a webhook is disabled when its
//! count reaches the threshold; a success resets the count.
//!
//! Attempts are written to `delivery_log` (V8): ids as 16-byte uuids, event type,
//! trigger and status as small codes, and instead of the workspace and event ids the
//! key of the event's payload row in `delivery_log_payloads`, which names both and
//! holds the body once per (workspace, event, UTC day); both are partitioned by day so
//! retention drops them together. An attempt keeps its own body only when it differs
//! from that payload, and its headers in the compact form of [`crate::sent`].
//!
//! Rows written before V8 (and by senders of the previous release during a rollout)
//! are in `delivery_attempts` and `event_payloads`, in their older formats; every
//! reader here reads both tables, each through its own indexes, and merges by id.

use std::collections::{BTreeMap, HashSet};

use qr3_domain::Trigger;

use chrono::{DateTime, DurationRound, Utc};
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId, WorkspaceId};
use tokio_postgres::Row;

use crate::sent::{self, RowFields};
use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStatus {
    Success,
    Failed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Success => "success",
            AttemptStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(AttemptStatus::Success),
            "failed" => Some(AttemptStatus::Failed),
            _ => None,
        }
    }
}

/// The codes `delivery_log` stores for words (the V8 migration's `qr3_log_*_name`
/// functions spell them back).
mod code {
    use qr3_domain::{EventType, Trigger};

    use super::AttemptStatus;

    pub fn event_type(t: EventType) -> i16 {
        match t {
            EventType::QrCreated => 1,
            EventType::QrUpdated => 2,
            EventType::QrDeleted => 3,
            EventType::QrScanned => 4,
            EventType::QrFlagged => 5,
            EventType::ScanCreated => 6,
            EventType::WorkspaceUpdated => 7,
            EventType::WebhookPing => 8,
        }
    }

    pub fn to_event_type(code: i16) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| event_type(*t) == code)
    }

    /// The trigger as logged: a resend is a manual attempt.
    pub fn trigger(t: Trigger) -> i16 {
        match t.logged() {
            Trigger::Event => 1,
            Trigger::Ping => 2,
            Trigger::Manual | Trigger::Resend => 3,
        }
    }

    pub fn to_trigger(code: i16) -> Option<Trigger> {
        [Trigger::Event, Trigger::Ping, Trigger::Manual]
            .into_iter()
            .find(|t| trigger(*t) == code)
    }

    pub fn status(s: AttemptStatus) -> i16 {
        match s {
            AttemptStatus::Failed => 0,
            AttemptStatus::Success => 1,
        }
    }

    pub fn to_status(code: i16) -> Option<AttemptStatus> {
        match code {
            0 => Some(AttemptStatus::Failed),
            1 => Some(AttemptStatus::Success),
            _ => None,
        }
    }
}

/// A ULID id as `delivery_log` takes it: 32 hex digits, cast with `::text::uuid`.
fn uuid_hex(bytes: [u8; 16]) -> String {
    hex::encode(bytes)
}

/// The key of an event's payload row, as the V8 migration's `qr3_payload_key`
/// computes it: the first 128 bits of SHA-256 over `workspace:event` (neither id can
/// contain `:`), in hex. Computed here, once per payload of a batch, rather than by
/// Postgres for every row.
pub(crate) fn payload_key(workspace: &str, event: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(workspace.as_bytes())
        .chain_update(b":")
        .chain_update(event.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// A `uuid_send(…)` column back as the 16 bytes of a ULID.
fn ulid_bytes(row: &Row, i: usize) -> Result<[u8; 16]> {
    row.get::<_, &[u8]>(i)
        .try_into()
        .map_err(|_| corrupt("a delivery_log id is not 16 bytes"))
}

/// Above every id (their top bit is a millisecond time's, 0): "no cursor".
const NO_CURSOR: &str = "7fffffffffffffffffffffffffffffff";

/// One attempt, as logged.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub workspace_id: WorkspaceId,
    pub event_id: EventId,
    pub event_type: EventType,
    pub status: AttemptStatus,
    pub status_code: Option<u16>,
    pub response_time_ms: u32,
    pub attempt: u16,
    /// Why it was made; only `Event` attempts count towards disabling a webhook.
    pub trigger: Trigger,
    pub error: Option<String>,
    pub created_at: Timestamp,
    /// What was sent and received. Always set on rows the sender writes; `None` on rows
    /// read by the list queries (which do not load it) and on rows logged before the
    /// detail was kept.
    pub detail: Option<AttemptDetail>,
}

/// The request an attempt sent and the start of the response it got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptDetail {
    /// Every header the sender set, in the order sent.
    pub request_headers: Vec<(String, String)>,
    /// The exact body posted.
    pub request_body: String,
    /// The first `delivery.response_body_bytes` of the response body, decoded as UTF-8
    /// (invalid sequences replaced); `None` when nothing was stored.
    pub response_body: Option<String>,
}

impl AttemptDetail {
    fn headers_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.request_headers
                .iter()
                .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
                .collect(),
        )
    }

    fn headers_from_json(value: Option<serde_json::Value>) -> Vec<(String, String)> {
        match value {
            Some(serde_json::Value::Object(map)) => map
                .into_iter()
                .map(|(name, value)| match value {
                    serde_json::Value::String(s) => (name, s),
                    other => (name, other.to_string()),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// An event that `POST /v1/webhooks/:id/recover` sends again: its last attempt on the
/// webhook failed and none ever succeeded.
#[derive(Debug, Clone)]
pub struct Recoverable {
    pub event_id: EventId,
    pub event_type: EventType,
    /// The body of the last attempt, re-sent as it was.
    pub body: String,
    /// The number the next attempt carries (attempts so far + 1).
    pub next_attempt: u16,
    /// The event's first attempt since `since`: its place in the recovery order, which
    /// later attempts do not change (a recover cursor resumes after it).
    pub first_attempt: DeliveryId,
}

/// Filters of `GET /v1/webhooks/:id/deliveries`.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub status: Option<AttemptStatus>,
    pub event_type: Option<EventType>,
}

/// What a committed batch changed beyond the rows themselves.
#[derive(Debug, Default)]
pub struct RecordedBatch {
    /// Webhooks this batch disabled (their count reached the threshold).
    pub disabled: Vec<WebhookId>,
}

/// One failed attempt of an event on a webhook: what counts once towards disabling.
type FailureKey<'a> = (&'a WebhookId, &'a EventId, u16);

/// Per webhook, in batch order: does the batch contain a success, and how many failures
/// follow the last success (or the whole batch's failures when there is none). A
/// failure counts once per (event, attempt): one logged before (`logged`, a redelivered
/// or requeued job attempted again) or earlier in the batch does not count again, so
/// one event adds at most one failure per attempt number.
fn failure_deltas<'a>(
    batch: &'a [AttemptRecord],
    logged: &HashSet<FailureKey<'_>>,
) -> BTreeMap<&'a WebhookId, (bool, i32)> {
    let mut deltas: BTreeMap<&WebhookId, (bool, i32)> = BTreeMap::new();
    let mut counted: HashSet<FailureKey<'_>> = HashSet::new();
    for record in batch.iter().filter(|r| r.trigger == Trigger::Event) {
        let entry = deltas.entry(&record.webhook_id).or_default();
        match record.status {
            AttemptStatus::Success => *entry = (true, 0),
            AttemptStatus::Failed => {
                let key = (&record.webhook_id, &record.event_id, record.attempt);
                if !logged.contains(&key) && counted.insert(key) {
                    entry.1 += 1;
                }
            }
        }
    }
    deltas
}

const COLUMNS: &str =
    "id, webhook_id, workspace_id, event_id, event_type, status, status_code, response_time_ms, attempt, trigger, error, created_at";

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn attempt_from_row(row: &Row) -> Result<AttemptRecord> {
    let event_type: &str = row.get(4);
    let status: &str = row.get(5);
    let trigger: &str = row.get(9);
    Ok(AttemptRecord {
        id: DeliveryId::parse(row.get(0)).map_err(corrupt)?,
        webhook_id: WebhookId::parse(row.get(1)).map_err(corrupt)?,
        workspace_id: WorkspaceId::parse(row.get(2)).map_err(corrupt)?,
        event_id: EventId::parse(row.get(3)).map_err(corrupt)?,
        event_type: event_type.parse().map_err(corrupt)?,
        status: AttemptStatus::parse(status).ok_or_else(|| corrupt(status))?,
        status_code: row.get::<_, Option<i16>>(6).map(|c| c as u16),
        response_time_ms: row.get::<_, i32>(7).max(0) as u32,
        attempt: row.get::<_, i16>(8).max(0) as u16,
        trigger: Trigger::parse(trigger).ok_or_else(|| corrupt(trigger))?,
        error: row.get(10),
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(11)),
        detail: None,
    })
}

/// A `delivery_log` row read with [`LOG_COLUMNS`] (from [`LOG_FROM`]).
fn log_attempt_from_row(row: &Row) -> Result<AttemptRecord> {
    let event_type: i16 = row.get(4);
    let status: i16 = row.get(5);
    let trigger: i16 = row.get(9);
    Ok(AttemptRecord {
        id: DeliveryId::from_ulid_bytes(ulid_bytes(row, 0)?),
        webhook_id: WebhookId::from_ulid_bytes(ulid_bytes(row, 1)?),
        workspace_id: WorkspaceId::parse(row.get(2)).map_err(corrupt)?,
        event_id: EventId::parse(row.get(3)).map_err(corrupt)?,
        event_type: code::to_event_type(event_type)
            .ok_or_else(|| corrupt(format!("event type code {event_type}")))?,
        status: code::to_status(status).ok_or_else(|| corrupt(format!("status code {status}")))?,
        status_code: row.get::<_, Option<i16>>(6).map(|c| c as u16),
        response_time_ms: row.get::<_, i32>(7).max(0) as u32,
        attempt: row.get::<_, i16>(8).max(0) as u16,
        trigger: code::to_trigger(trigger)
            .ok_or_else(|| corrupt(format!("trigger code {trigger}")))?,
        error: row.get(10),
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(11)),
        detail: None,
    })
}

/// An old row read with [`COLUMNS`] and [`DETAIL_COLUMNS`].
fn attempt_with_detail_from_row(row: &Row) -> Result<AttemptRecord> {
    with_detail(attempt_from_row(row)?, row)
}

/// A new row read with [`LOG_COLUMNS`] and [`LOG_DETAIL_COLUMNS`].
fn log_attempt_with_detail_from_row(row: &Row) -> Result<AttemptRecord> {
    with_detail(log_attempt_from_row(row)?, row)
}

/// The detail of a row whose columns 12 to 15 are the detail columns (old or new): the
/// body is the row's own or its event's payload; the headers are rebuilt from
/// `sent_headers` when they are in the compact form, or read from the jsonb.
fn with_detail(mut record: AttemptRecord, row: &Row) -> Result<AttemptRecord> {
    let body: Option<String> = row.get(13);
    let compact: Option<&[u8]> = row.get(15);
    let request_headers = match compact {
        Some(blob) if blob.first() == Some(&sent::FORMAT_COMPACT) => {
            sent::decode(blob, &row_fields(&record))
                .ok_or_else(|| corrupt("unreadable sent_headers"))?
        }
        _ => AttemptDetail::headers_from_json(row.get(12)),
    };
    record.detail = body.map(|request_body| AttemptDetail {
        request_headers,
        request_body,
        response_body: row.get(14),
    });
    Ok(record)
}

/// What the compact headers are rebuilt from.
fn row_fields(record: &AttemptRecord) -> RowFields<'_> {
    RowFields {
        id: record.id.as_str(),
        event_id: record.event_id.as_str(),
        event_type: record.event_type.as_str(),
        attempt: record.attempt,
        unix_seconds: record.created_at.unix_seconds(),
    }
}

/// Midnight UTC of `at`'s day: the day of `event_payloads` an attempt's payload is in.
fn payload_day(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::days(1)).unwrap_or(at)
}

/// The detail columns of an attempt `a`, its body falling back to its event's payload
/// of the same day (one index lookup in one partition).
const DETAIL_COLUMNS: &str = "a.request_headers,
    coalesce(a.request_body, (SELECT p.body FROM event_payloads p
        WHERE p.workspace_id = a.workspace_id AND p.event_id = a.event_id
          AND p.created_at = date_trunc('day', a.created_at, 'UTC'))),
    a.response_body, a.sent_headers";

/// A `delivery_log` attempt `a` with its payload row `p` (which every attempt has: it
/// is written in the same transaction, in the partition of the same day).
const LOG_FROM: &str = "delivery_log a JOIN delivery_log_payloads p
    ON p.event = a.event AND p.created_at = date_trunc('day', a.created_at, 'UTC')";

/// The columns of [`COLUMNS`], in the same order, from [`LOG_FROM`].
const LOG_COLUMNS: &str = "uuid_send(a.id), uuid_send(a.webhook_id), p.workspace_id, p.event_id, \
    a.event_type, a.status, a.status_code, a.response_time_ms, a.attempt, a.trigger, a.error, a.created_at";

/// The columns of [`DETAIL_COLUMNS`] from [`LOG_FROM`]: a row has its detail when it has
/// `sent_headers`.
const LOG_DETAIL_COLUMNS: &str = "a.request_headers,
    CASE WHEN a.sent_headers IS NULL THEN NULL ELSE coalesce(a.request_body, p.body) END,
    a.response_body, a.sent_headers";

/// A statement and its parameters.
type Query<'a> = (
    &'a tokio_postgres::Statement,
    &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
);

/// Runs a read on the old table (`delivery_attempts`) and its twin on the new one
/// (`delivery_log`) together, and merges their attempts by id.
async fn query_both_tables(
    client: &tokio_postgres::Client,
    old: Query<'_>,
    new: Query<'_>,
    descending: bool,
    limit: usize,
) -> Result<Vec<AttemptRecord>> {
    let (old_rows, new_rows) =
        tokio::try_join!(client.query(old.0, old.1), client.query(new.0, new.1))?;
    let old_records = old_rows
        .iter()
        .map(attempt_from_row)
        .collect::<Result<Vec<_>>>()?;
    let new_records = new_rows
        .iter()
        .map(log_attempt_from_row)
        .collect::<Result<Vec<_>>>()?;
    Ok(merge_by_id(old_records, new_records, descending, limit))
}

/// Merges two lists sorted by id (`descending` or not) into one, at most `limit` long.
fn merge_by_id(
    a: Vec<AttemptRecord>,
    b: Vec<AttemptRecord>,
    descending: bool,
    limit: usize,
) -> Vec<AttemptRecord> {
    let mut all = a;
    all.extend(b);
    all.sort_by(|x, y| {
        let order = x.id.cmp(&y.id);
        if descending {
            order.reverse()
        } else {
            order
        }
    });
    all.truncate(limit);
    all
}

impl Store {
    /// Writes a batch of attempts and updates failure counts in one transaction.
    /// Retried once on a deadlock with another sender updating the same webhooks.
    pub async fn record_attempts(
        &self,
        batch: &[AttemptRecord],
        disable_after: u32,
    ) -> Result<RecordedBatch> {
        if batch.is_empty() {
            return Ok(RecordedBatch::default());
        }
        match self.record_attempts_once(batch, disable_after).await {
            Err(StoreError::Database(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
                    || e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) =>
            {
                self.record_attempts_once(batch, disable_after).await
            }
            other => other,
        }
    }

    async fn record_attempts_once(
        &self,
        batch: &[AttemptRecord],
        disable_after: u32,
    ) -> Result<RecordedBatch> {
        let n = batch.len();
        let mut ids = Vec::with_capacity(n);
        let mut webhooks = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut codes = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut triggers = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut request_headers = Vec::with_capacity(n);
        let mut request_bodies = Vec::with_capacity(n);
        let mut response_bodies = Vec::with_capacity(n);
        let mut sent_headers = Vec::with_capacity(n);
        let mut days = Vec::with_capacity(n);
        // One payload row per (workspace, event, day): every attempt has one, since it
        // is what names the attempt's workspace and event. Its body is the first
        // attempt's with a detail (NULL when none of the batch's has one).
        let mut payloads: BTreeMap<(&str, &str, DateTime<Utc>), Option<&str>> = BTreeMap::new();
        let mut keys: BTreeMap<(&str, &str), String> = BTreeMap::new();
        for r in batch {
            let day = payload_day(r.created_at.as_datetime());
            days.push(day);
            let body = r.detail.as_ref().map(|d| d.request_body.as_str());
            payloads
                .entry((r.workspace_id.as_str(), r.event_id.as_str(), day))
                .and_modify(|b| {
                    if b.is_none() {
                        *b = body;
                    }
                })
                .or_insert(body);
            match &r.detail {
                Some(detail) => match sent::encode(&detail.request_headers, &row_fields(r)) {
                    Some(blob) => {
                        sent_headers.push(Some(blob));
                        request_headers.push(None);
                    }
                    None => {
                        sent_headers.push(Some(vec![sent::FORMAT_JSON]));
                        request_headers.push(Some(detail.headers_json()));
                    }
                },
                None => {
                    sent_headers.push(None);
                    request_headers.push(None);
                }
            }
            ids.push(uuid_hex(r.id.to_ulid_bytes()));
            webhooks.push(uuid_hex(r.webhook_id.to_ulid_bytes()));
            events.push(
                keys.entry((r.workspace_id.as_str(), r.event_id.as_str()))
                    .or_insert_with(|| payload_key(r.workspace_id.as_str(), r.event_id.as_str()))
                    .clone(),
            );
            types.push(code::event_type(r.event_type));
            statuses.push(code::status(r.status));
            codes.push(r.status_code.map(|c| c as i16));
            times.push(i32::try_from(r.response_time_ms).unwrap_or(i32::MAX));
            attempts.push(r.attempt as i16);
            triggers.push(code::trigger(r.trigger));
            errors.push(r.error.as_deref());
            created.push(r.created_at.as_datetime());
            request_bodies.push(body);
            response_bodies.push(r.detail.as_ref().and_then(|d| d.response_body.as_deref()));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Failed event attempts already in the log (same webhook, event and attempt
        // number), in either table: a job attempted again after a redelivery counts
        // once.
        let failed: Vec<&AttemptRecord> = batch
            .iter()
            .filter(|r| r.trigger == Trigger::Event && r.status == AttemptStatus::Failed)
            .collect();
        let mut logged_rows = Vec::new();
        if !failed.is_empty() {
            let f_webhooks: Vec<&str> = failed.iter().map(|r| r.webhook_id.as_str()).collect();
            let f_events: Vec<&str> = failed.iter().map(|r| r.event_id.as_str()).collect();
            let f_attempts: Vec<i16> = failed.iter().map(|r| r.attempt as i16).collect();
            let f_workspaces: Vec<&str> = failed.iter().map(|r| r.workspace_id.as_str()).collect();
            let f_hooks: Vec<String> = failed
                .iter()
                .map(|r| uuid_hex(r.webhook_id.to_ulid_bytes()))
                .collect();
            let repeats = tx
                .prepare_cached(
                    "SELECT u.webhook_id, u.event_id, u.attempt
                     FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[], $5::text[])
                         AS u(webhook_id, event_id, attempt, workspace_id, hook)
                     WHERE EXISTS (SELECT 1 FROM delivery_log d
                                   WHERE d.event = qr3_payload_key(u.workspace_id, u.event_id)
                                     AND d.webhook_id = u.hook::uuid
                                     AND d.attempt = u.attempt AND d.trigger = 1)
                        OR EXISTS (SELECT 1 FROM delivery_attempts d
                                   WHERE d.event_id = u.event_id AND d.webhook_id = u.webhook_id
                                     AND d.attempt = u.attempt AND d.trigger = 'event')",
                )
                .await?;
            logged_rows = tx
                .query(
                    &repeats,
                    &[&f_webhooks, &f_events, &f_attempts, &f_workspaces, &f_hooks],
                )
                .await?;
        }
        let logged: HashSet<FailureKey<'_>> = logged_rows
            .iter()
            .filter_map(|row| {
                let (webhook, event, attempt): (&str, &str, i16) =
                    (row.get(0), row.get(1), row.get(2));
                failed.iter().find_map(|r| {
                    (r.webhook_id.as_str() == webhook
                        && r.event_id.as_str() == event
                        && r.attempt as i16 == attempt)
                        .then_some((&r.webhook_id, &r.event_id, r.attempt))
                })
            })
            .collect();
        let deltas = failure_deltas(batch, &logged);
        let delta_ids: Vec<&str> = deltas.keys().map(|id| id.as_str()).collect();
        let delta_reset: Vec<bool> = deltas.values().map(|(reset, _)| *reset).collect();
        let delta_failures: Vec<i32> = deltas.values().map(|(_, failures)| *failures).collect();
        let threshold = i32::try_from(disable_after).unwrap_or(i32::MAX);
        let reason = format!("{disable_after} consecutive failed delivery attempts");

        let (mut p_keys, mut p_workspaces, mut p_events, mut p_days, mut p_bodies) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((workspace, event, day), body) in &payloads {
            p_keys.push(keys[&(*workspace, *event)].as_str());
            p_workspaces.push(*workspace);
            p_events.push(*event);
            p_days.push(*day);
            p_bodies.push(*body);
        }
        // In key order, so two senders storing the same payloads take their index
        // locks in the same order.
        let store_payloads = tx
            .prepare_cached(
                "INSERT INTO delivery_log_payloads (event, created_at, workspace_id, event_id, body)
                 SELECT u.event::uuid, u.day, u.workspace_id, u.event_id, u.body
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
                     AS u(event, workspace_id, event_id, day, body)
                 ORDER BY 1, 2
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(
            &store_payloads,
            &[&p_keys, &p_workspaces, &p_events, &p_days, &p_bodies],
        )
        .await?;
        // A body equal to its event's payload is not stored again.
        let insert = tx
            .prepare_cached(
                "INSERT INTO delivery_log (id, webhook_id, event, created_at, response_time_ms, status_code, \
                 attempt, event_type, trigger, status, sent_headers, error, response_body, request_body, \
                 request_headers)
                 SELECT u.id::uuid, u.webhook_id::uuid, u.event::uuid, u.created_at, u.response_time_ms, u.status_code, \
                 u.attempt, u.event_type, u.trigger, u.status, u.sent_headers, u.error, u.response_body, \
                 CASE WHEN u.request_body = (SELECT p.body FROM delivery_log_payloads p \
                     WHERE p.event = u.event::uuid AND p.created_at = u.day) \
                 THEN NULL ELSE u.request_body END, \
                 u.request_headers
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[], $5::smallint[], \
                 $6::smallint[], $7::int[], $8::smallint[], $9::smallint[], $10::text[], $11::timestamptz[], \
                 $12::jsonb[], $13::text[], $14::text[], $15::bytea[], $16::timestamptz[]) \
                 AS u(id, webhook_id, event, event_type, status, status_code, response_time_ms, \
                 attempt, trigger, error, created_at, request_headers, request_body, response_body, sent_headers, day)",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &ids,
                &webhooks,
                &events,
                &types,
                &statuses,
                &codes,
                &times,
                &attempts,
                &triggers,
                &errors,
                &created,
                &request_headers,
                &request_bodies,
                &response_bodies,
                &sent_headers,
                &days,
            ],
        )
        .await?;
        let mut disabled = Vec::new();
        if !delta_ids.is_empty() {
            // Rows are locked in id order (the input is sorted) so two senders updating
            // overlapping webhooks do not deadlock in the common case. A success on a
            // webhook already at zero changes nothing and is filtered out before writing.
            let update = tx
                .prepare_cached(
                    "WITH d AS (
                        SELECT * FROM unnest($1::text[], $2::bool[], $3::int[]) AS d(id, reset, failures)
                     ), locked AS (
                        SELECT w.id, w.consecutive_failures, w.is_active, d.reset, d.failures
                        FROM webhooks w JOIN d ON w.id = d.id
                        WHERE NOT (d.reset AND d.failures = 0 AND w.consecutive_failures = 0)
                        ORDER BY w.id
                        FOR UPDATE OF w
                     )
                     UPDATE webhooks w SET
                        consecutive_failures = n.count,
                        is_active = w.is_active AND n.count < $4,
                        disabled_at = CASE WHEN w.is_active AND n.count >= $4 THEN now() ELSE w.disabled_at END,
                        disabled_reason = CASE WHEN w.is_active AND n.count >= $4 THEN $5 ELSE w.disabled_reason END
                     FROM (SELECT id, CASE WHEN reset THEN failures ELSE consecutive_failures + failures END AS count,
                                  is_active AS was_active
                           FROM locked) n
                     WHERE w.id = n.id
                     RETURNING w.id, n.was_active AND NOT w.is_active",
                )
                .await?;
            let rows = tx
                .query(
                    &update,
                    &[
                        &delta_ids,
                        &delta_reset,
                        &delta_failures,
                        &threshold,
                        &reason,
                    ],
                )
                .await?;
            for row in rows {
                if row.get::<_, bool>(1) {
                    disabled.push(WebhookId::parse(row.get(0)).map_err(corrupt)?);
                }
            }
        }
        tx.commit().await?;
        Ok(RecordedBatch { disabled })
    }

    /// A page of a webhook's attempts, newest first, after `after`; at most `limit + 1`
    /// rows. The caller has checked that the webhook belongs to the workspace; the
    /// workspace condition is repeated here so a mistake cannot leak rows. Each table
    /// gives its own newest `limit + 1` (the two queries pipelined on one connection),
    /// merged by id.
    pub async fn list_attempts(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        filter: &AttemptFilter,
        after: Option<&DeliveryId>,
        limit: i64,
    ) -> Result<Vec<AttemptRecord>> {
        let client = self.pool.get().await?;
        let old = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM delivery_attempts
                 WHERE webhook_id = $1 AND workspace_id = $2
                   AND ($3::text IS NULL OR status = $3)
                   AND ($4::text IS NULL OR event_type = $4)
                   AND ($5::text IS NULL OR id < $5)
                 ORDER BY id DESC LIMIT $6"
            ))
            .await?;
        // `qr3_uuid_hi(id)` first, then the whole id: exactly id order, through the
        // index on the top halves.
        let new = client
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM {LOG_FROM}
                 WHERE qr3_uuid_hi(a.webhook_id) = qr3_uuid_hi($1::text::uuid)
                   AND a.webhook_id = $1::text::uuid AND p.workspace_id = $2
                   AND ($3::smallint IS NULL OR a.status = $3)
                   AND ($4::smallint IS NULL OR a.event_type = $4)
                   AND qr3_uuid_hi(a.id) <= qr3_uuid_hi($5::text::uuid) AND a.id < $5::text::uuid
                 ORDER BY qr3_uuid_hi(a.id) DESC, a.id DESC LIMIT $6"
            ))
            .await?;
        let hook = uuid_hex(webhook.to_ulid_bytes());
        let cursor = after.map_or_else(|| NO_CURSOR.to_owned(), |id| uuid_hex(id.to_ulid_bytes()));
        let status_code = filter.status.map(code::status);
        let type_code = filter.event_type.map(code::event_type);
        let old_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &webhook.as_str(),
            &workspace.as_str(),
            &filter.status.map(AttemptStatus::as_str),
            &filter.event_type.map(EventType::as_str),
            &after.map(DeliveryId::as_str),
            &(limit + 1),
        ];
        let new_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &hook,
            &workspace.as_str(),
            &status_code,
            &type_code,
            &cursor,
            &(limit + 1),
        ];
        let limit = usize::try_from(limit + 1).unwrap_or(usize::MAX);
        query_both_tables(
            &client,
            (&old, &old_params),
            (&new, &new_params),
            true,
            limit,
        )
        .await
    }

    /// One attempt of a webhook with what it sent and received; `None` when there is no
    /// such attempt on this webhook in this workspace.
    pub async fn get_attempt(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        id: &DeliveryId,
    ) -> Result<Option<AttemptRecord>> {
        let client = self.pool.get().await?;
        let new = client
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS}, {LOG_DETAIL_COLUMNS} FROM {LOG_FROM}
                 WHERE qr3_uuid_hi(a.webhook_id) = qr3_uuid_hi($2::text::uuid)
                   AND qr3_uuid_hi(a.id) = qr3_uuid_hi($1::text::uuid)
                   AND a.id = $1::text::uuid AND a.webhook_id = $2::text::uuid
                   AND p.workspace_id = $3"
            ))
            .await?;
        let found = client
            .query_opt(
                &new,
                &[
                    &uuid_hex(id.to_ulid_bytes()),
                    &uuid_hex(webhook.to_ulid_bytes()),
                    &workspace.as_str(),
                ],
            )
            .await?;
        if let Some(row) = found {
            return log_attempt_with_detail_from_row(&row).map(Some);
        }
        let old = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, {DETAIL_COLUMNS} FROM delivery_attempts a
                 WHERE id = $1 AND webhook_id = $2 AND workspace_id = $3"
            ))
            .await?;
        client
            .query_opt(
                &old,
                &[&id.as_str(), &webhook.as_str(), &workspace.as_str()],
            )
            .await?
            .as_ref()
            .map(attempt_with_detail_from_row)
            .transpose()
    }

    /// Whether an attempt of `event` on `webhook` has succeeded: a manual or retried
    /// attempt is not made then, so a customer never gets an event twice because of a
    /// retry. (An attempt still waiting in a sender's log batch is not seen yet.) The
    /// payload key of a new row needs the workspace: the webhook's.
    pub async fn event_delivered(&self, webhook: &WebhookId, event: &EventId) -> Result<bool> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM delivery_log
                     WHERE event = qr3_payload_key((SELECT workspace_id FROM webhooks WHERE id = $2), $1)
                       AND webhook_id = $3::text::uuid AND status = 1 AND trigger <> 2)
                     OR EXISTS (SELECT 1 FROM delivery_attempts
                     WHERE event_id = $1 AND webhook_id = $2 AND status = 'success' AND trigger <> 'ping')",
            )
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &event.as_str(),
                    &webhook.as_str(),
                    &uuid_hex(webhook.to_ulid_bytes()),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Up to `limit` events to recover on a webhook, in the order of their first attempt
    /// since `since` (oldest event first): their last attempt
    /// since `since` failed, no attempt of them ever succeeded, and their body is in the
    /// log (rows logged before the log kept bodies cannot be re-sent). With `after`,
    /// only the events whose first attempt since `since` comes after that attempt, so a
    /// caller pages through to the end even when the manual attempts fail again. Both
    /// tables' attempts are read in the old table's words (ids as text), so an event
    /// with attempts in each is one event.
    pub async fn recoverable_events(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        since: Timestamp,
        after: Option<&DeliveryId>,
        limit: i64,
    ) -> Result<Vec<Recoverable>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH log AS (
                    SELECT id, event_id, event_type, status, created_at, request_body AS body, true AS old
                    FROM delivery_attempts
                    WHERE webhook_id = $1 AND workspace_id = $2 AND created_at >= $3
                      AND trigger IN ('event', 'manual')
                    UNION ALL
                    SELECT ('whd_' || qr3_ulid_text(a.id)) COLLATE \"C\", p.event_id,
                           qr3_log_event_type_name(a.event_type), qr3_log_status_name(a.status),
                           a.created_at,
                           CASE WHEN a.sent_headers IS NULL THEN NULL ELSE coalesce(a.request_body, p.body) END,
                           false
                    FROM delivery_log a JOIN delivery_log_payloads p
                      ON p.event = a.event AND p.created_at = date_trunc('day', a.created_at, 'UTC')
                    WHERE qr3_uuid_hi(a.webhook_id) = qr3_uuid_hi($6::text::uuid)
                      AND a.webhook_id = $6::text::uuid AND p.workspace_id = $2
                      AND a.created_at >= $3 AND a.trigger IN (1, 3)
                 ), last AS (
                    SELECT DISTINCT ON (event_id) event_id, event_type, status, body, old, created_at,
                           min(id) OVER (PARTITION BY event_id) AS first_id
                    FROM log
                    ORDER BY event_id, id DESC
                 ), failed AS (
                    SELECT l.event_id, l.event_type, l.first_id,
                           CASE WHEN l.old THEN coalesce(l.body, (SELECT p.body FROM event_payloads p
                               WHERE p.workspace_id = $2 AND p.event_id = l.event_id
                                 AND p.created_at = date_trunc('day', l.created_at, 'UTC')))
                           ELSE l.body END AS body
                    FROM last l WHERE l.status = 'failed'
                 )
                 SELECT l.event_id, l.event_type, l.body,
                        (SELECT count(*) FROM delivery_attempts a
                         WHERE a.event_id = l.event_id AND a.webhook_id = $1 AND a.trigger <> 'ping')
                        + (SELECT count(*) FROM delivery_log a
                           WHERE a.event = qr3_payload_key($2, l.event_id)
                             AND a.webhook_id = $6::text::uuid AND a.trigger <> 2),
                        l.first_id
                 FROM failed l
                 WHERE l.body IS NOT NULL
                   AND ($5::text IS NULL OR l.first_id > $5)
                   AND NOT EXISTS (SELECT 1 FROM delivery_attempts s
                                   WHERE s.event_id = l.event_id AND s.webhook_id = $1
                                     AND s.status = 'success' AND s.trigger <> 'ping')
                   AND NOT EXISTS (SELECT 1 FROM delivery_log s
                                   WHERE s.event = qr3_payload_key($2, l.event_id)
                                     AND s.webhook_id = $6::text::uuid AND s.status = 1 AND s.trigger <> 2)
                 ORDER BY l.first_id LIMIT $4",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &webhook.as_str(),
                    &workspace.as_str(),
                    &since.as_datetime(),
                    &limit,
                    &after.map(DeliveryId::as_str),
                    &uuid_hex(webhook.to_ulid_bytes()),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let event_type: &str = row.get(1);
                let attempts: i64 = row.get(3);
                Ok(Recoverable {
                    event_id: EventId::parse(row.get(0)).map_err(corrupt)?,
                    event_type: event_type.parse().map_err(corrupt)?,
                    body: row.get(2),
                    next_attempt: u16::try_from(attempts + 1).unwrap_or(u16::MAX),
                    first_attempt: DeliveryId::parse(row.get(4)).map_err(corrupt)?,
                })
            })
            .collect()
    }

    /// The attempts logged for one event on one webhook, oldest first.
    pub async fn attempts_for_event(
        &self,
        webhook: &WebhookId,
        event: &EventId,
    ) -> Result<Vec<AttemptRecord>> {
        let client = self.pool.get().await?;
        let old = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM delivery_attempts WHERE event_id = $1 AND webhook_id = $2 ORDER BY id"
            ))
            .await?;
        let new = client
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM {LOG_FROM}
                 WHERE a.event = qr3_payload_key((SELECT workspace_id FROM webhooks WHERE id = $2), $1)
                   AND a.webhook_id = $3::text::uuid AND p.event_id = $1
                 ORDER BY a.id"
            ))
            .await?;
        let hook = uuid_hex(webhook.to_ulid_bytes());
        let (event, webhook) = (event.as_str(), webhook.as_str());
        let old_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&event, &webhook];
        let new_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&event, &webhook, &hook];
        query_both_tables(
            &client,
            (&old, &old_params),
            (&new, &new_params),
            false,
            usize::MAX,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(webhook: &WebhookId, status: AttemptStatus, trigger: Trigger) -> AttemptRecord {
        AttemptRecord {
            id: DeliveryId::generate(),
            webhook_id: webhook.clone(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::generate(),
            event_type: EventType::QrScanned,
            status,
            status_code: None,
            response_time_ms: 1,
            attempt: 1,
            trigger,
            error: None,
            created_at: Timestamp::now(),
            detail: None,
        }
    }

    #[test]
    fn failures_after_the_last_success_are_what_counts() {
        use AttemptStatus::*;
        use Trigger::*;
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let batch = [
            record(&a, Failed, Event),
            record(&a, Success, Event),
            record(&a, Failed, Event),
            record(&b, Failed, Event),
            record(&b, Failed, Event),
            record(&b, Failed, Ping),
        ];
        let d = failure_deltas(&batch, &HashSet::new());
        assert_eq!(d[&a], (true, 1));
        assert_eq!(d[&b], (false, 2), "pings do not count");
    }

    #[test]
    fn the_same_failed_attempt_counts_once() {
        use AttemptStatus::*;
        use Trigger::*;
        let a = WebhookId::generate();
        let first = record(&a, Failed, Event);
        let mut again = first.clone();
        again.id = DeliveryId::generate();
        let mut next = first.clone();
        next.id = DeliveryId::generate();
        next.attempt = 2;
        let earlier = record(&a, Failed, Event);
        let batch = [first, again, next, earlier.clone()];
        let logged = HashSet::from([(&earlier.webhook_id, &earlier.event_id, earlier.attempt)]);
        let d = failure_deltas(&batch, &logged);
        assert_eq!(
            d[&a],
            (false, 2),
            "attempt 1 twice counts once, attempt 2 once, the logged one not"
        );
    }
}
