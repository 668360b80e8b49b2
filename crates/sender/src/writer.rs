//! The attempt-log writer: gathers finished attempts into batches, writes each batch in
//! one transaction, then publishes the retries the batch calls for (confirmed, packed
//! into bundles per delay queue), and only then acknowledges the batch's jobs. A crash
//! anywhere before the ack leaves the jobs in the broker: at worst an attempt is made
//! and logged twice (and counted once towards disabling), never lost.
//!
//! While the database is away the writer waits and writes the batch again; while the
//! broker refuses the retries, the batch's jobs are held (`hold`) in a task of their own
//! so later batches, healthy webhooks' among them, keep being logged and acknowledged.
//! Nothing is handed back to the broker to wait.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use qr3_broker::{DeliveryJob, Hold, Outgoing, Publisher, Trigger};
use qr3_store::{AttemptRecord, AttemptStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::parts::{self, Part};
use crate::{Attempted, Sender};

/// One job whose attempt is done and waits to be made durable.
pub struct Pending {
    pub job: DeliveryJob,
    pub attempted: Attempted,
    pub part: Part,
}

#[derive(Clone)]
pub struct Handle(mpsc::Sender<Pending>);

impl Handle {
    pub async fn submit(&self, pending: Pending) {
        // The writer outlives every submitter (it stops when all handles are dropped).
        let _ = self.0.send(pending).await;
    }
}

/// Starts the writer. It runs until every handle is dropped and its held batches are
/// settled; if it stops before (a panic), `died` is cancelled so the consumer ends the
/// process rather than hold its prefetch window with nobody to settle it.
pub fn spawn(
    sender: Sender,
    publisher: Publisher,
    hold: Hold,
    died: CancellationToken,
) -> (Handle, JoinHandle<()>) {
    let capacity = sender.inner.settings.delivery.log_batch_size * 4;
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(async move {
        let alive = died.drop_guard();
        run(sender, publisher, hold, rx).await;
        alive.disarm();
    });
    (Handle(tx), task)
}

async fn run(sender: Sender, publisher: Publisher, hold: Hold, mut rx: mpsc::Receiver<Pending>) {
    let settings = &sender.inner.settings.delivery;
    let max = settings.log_batch_size;
    let linger = Duration::from_millis(settings.log_flush_ms);
    let held = TaskTracker::new();
    while let Some(batch) = parts::next_batch(&mut rx, max, linger).await {
        flush(&sender, &publisher, &hold, &held, batch).await;
    }
    held.close();
    held.wait().await;
}

async fn flush(
    sender: &Sender,
    publisher: &Publisher,
    hold: &Hold,
    held: &TaskTracker,
    mut batch: Vec<Pending>,
) {
    let inner = &sender.inner;
    crate::failpoint(&inner.settings.amqp.prefix, "sender-log-writer");
    let started = Instant::now();
    // The rows move out of the batch (no copy of their detail); each job keeps the
    // index of its row.
    let mut records: Vec<AttemptRecord> = Vec::with_capacity(batch.len());
    let rows: Vec<Option<usize>> = batch
        .iter_mut()
        .map(
            |p| match std::mem::replace(&mut p.attempted, Attempted::Parked) {
                Attempted::Made(record) => {
                    records.push(*record);
                    Some(records.len() - 1)
                }
                other => {
                    p.attempted = other;
                    None
                }
            },
        )
        .collect();
    // The log must be durable before anything is acknowledged: keep trying while the
    // database is away (the jobs stay unacknowledged in the broker meanwhile).
    let mut backoff = qr3_broker::Backoff::dependency();
    let recorded = loop {
        match inner
            .store
            .record_attempts(&records, inner.settings.delivery.disable_after_failures)
            .await
        {
            Ok(recorded) => {
                inner.metrics.database_up.set(1);
                break recorded;
            }
            Err(error) => {
                inner.metrics.database_up.set(0);
                inner
                    .metrics
                    .dependency_waits_total
                    .with_label_values(&["database"])
                    .inc();
                if backoff.worth_logging(&error.to_string()) {
                    tracing::error!(error = %error, rows = records.len(), tries = backoff.tries(), "cannot write the delivery log; holding the batch and retrying");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    };
    inner.metrics.log_batch_size.observe(records.len() as f64);
    inner
        .metrics
        .log_flush_seconds
        .observe(started.elapsed().as_secs_f64());
    let disabled: HashSet<_> = recorded.disabled.iter().collect();
    for id in &recorded.disabled {
        inner.metrics.webhooks_disabled_total.inc();
        inner.targets.forget(id);
        tracing::warn!(webhook_id = %id, "webhook disabled after consecutive failures");
    }
    if !recorded.disabled.is_empty() {
        notify_disabled(sender, publisher, &records, &recorded.disabled).await;
    }

    // The batch's retries, packed per delay queue like ingest's jobs: a failing
    // receiver's retries cost the broker a few messages, not one each.
    let mut retries: BTreeMap<u64, Vec<DeliveryJob>> = BTreeMap::new();
    for (pending, row) in batch.iter().zip(&rows) {
        let Some(record) = row.map(|i| &records[i]) else {
            continue;
        };
        if record.status != AttemptStatus::Failed
            || pending.job.trigger != Trigger::Event
            || disabled.contains(&record.webhook_id)
        {
            continue;
        }
        let next = pending.job.attempt + 1;
        let Some(delay) = inner.settings.delivery.delay_before(u32::from(next)) else {
            continue;
        };
        retries
            .entry(delay.as_millis() as u64)
            .or_default()
            .push(pending.job.next_attempt());
    }
    if retries.is_empty() {
        // A bundle is acknowledged with its last job.
        parts::finish_all(batch.into_iter().map(|p| p.part)).await;
        return;
    }
    let mut messages = Vec::new();
    for (delay_ms, jobs) in &retries {
        messages.extend(sender.pack(inner.topology.retry_queue(*delay_ms), jobs));
    }
    let scheduled: Vec<(u64, u64)> = retries
        .iter()
        .map(|(delay_ms, jobs)| (*delay_ms, jobs.len() as u64))
        .collect();
    let (sender, publisher, hold) = (sender.clone(), publisher.clone(), hold.clone());
    // The jobs are acknowledged only once their retries are safely queued. Until then
    // they are held here, apart, while the writer goes on with the next batches.
    held.spawn(async move {
        let inner = &sender.inner;
        let published = hold.publish(&publisher, "retries", &messages).await;
        if published.is_err() {
            // Stopping, or the channel is gone: the broker redelivers the jobs; their
            // attempts are logged, and a repeated failure counts once.
            for pending in batch {
                pending.part.requeue().await;
            }
            return;
        }
        for (delay_ms, jobs) in scheduled {
            inner
                .metrics
                .retries_scheduled_total
                .with_label_values(&[&delay_ms.to_string()])
                .inc_by(jobs);
        }
        parts::finish_all(batch.into_iter().map(|p| p.part)).await;
    });
}

/// Publishes `webhook.disabled` on the operator exchange for each webhook this batch
/// disabled, so the platform can tell its customer. Best effort: the disable itself is
/// already committed; a notification lost to a crash right here is not retried.
async fn notify_disabled(
    sender: &Sender,
    publisher: &Publisher,
    records: &[AttemptRecord],
    disabled: &[qr3_domain::WebhookId],
) {
    let inner = &sender.inner;
    let threshold = inner.settings.delivery.disable_after_failures;
    let now = qr3_domain::Timestamp::now();
    let messages: Vec<Outgoing> = disabled
        .iter()
        .filter_map(|id| records.iter().find(|r| &r.webhook_id == id))
        .map(|record| {
            let body = serde_json::json!({
                "type": "webhook.disabled",
                "webhook_id": record.webhook_id,
                "workspace_id": record.workspace_id,
                "disabled_at": now,
                "reason": format!("{threshold} consecutive failed delivery attempts"),
                "last_status_code": record.status_code,
                "last_error": record.error,
            });
            Outgoing {
                exchange: inner.topology.operator_exchange(),
                routing_key: "webhook.disabled".into(),
                properties: lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
                body: body.to_string().into_bytes(),
            }
        })
        .collect();
    if let Err(error) = publisher.publish_notifications(&messages).await {
        tracing::warn!(%error, "cannot publish webhook.disabled notifications");
    }
}
