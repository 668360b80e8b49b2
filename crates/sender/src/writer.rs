//! The attempt-log writer: gathers finished attempts into batches, writes each batch in
//! one transaction, then publishes the retries the batch calls for (confirmed, packed
//! into bundles per delay queue), and only then acknowledges the batch's jobs. A crash
//! anywhere before the ack leaves the jobs in the broker: at worst an attempt is made
//! and logged twice, never lost.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use qr3_broker::{DeliveryJob, Outgoing, Publisher, Trigger};
use qr3_store::{AttemptRecord, AttemptStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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

pub fn spawn(sender: Sender, publisher: Publisher) -> (Handle, JoinHandle<()>) {
    let capacity = sender.inner.settings.delivery.log_batch_size * 4;
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(run(sender, publisher, rx));
    (Handle(tx), task)
}

async fn run(sender: Sender, publisher: Publisher, mut rx: mpsc::Receiver<Pending>) {
    let settings = &sender.inner.settings.delivery;
    let max = settings.log_batch_size;
    let linger = Duration::from_millis(settings.log_flush_ms);
    while let Some(batch) = parts::next_batch(&mut rx, max, linger).await {
        flush(&sender, &publisher, batch).await;
    }
}

async fn flush(sender: &Sender, publisher: &Publisher, batch: Vec<Pending>) {
    let inner = &sender.inner;
    let started = Instant::now();
    let records: Vec<AttemptRecord> = batch
        .iter()
        .filter_map(|p| match &p.attempted {
            Attempted::Made(record) => Some((**record).clone()),
            Attempted::Skipped(_) | Attempted::Parked => None,
        })
        .collect();
    // The log must be durable before anything is acknowledged: keep trying while the
    // database is away (the jobs stay unacknowledged in the broker meanwhile).
    let mut backoff = Duration::from_millis(100);
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
                tracing::error!(error = %error, rows = records.len(), "cannot write the delivery log; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
    for pending in &batch {
        let Attempted::Made(record) = &pending.attempted else {
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
    if !retries.is_empty() {
        let mut messages = Vec::new();
        for (delay_ms, jobs) in &retries {
            messages.extend(sender.pack(inner.topology.retry_queue(*delay_ms), jobs));
        }
        if let Err(error) = publisher.publish_all(&messages).await {
            // Without the retry safely queued the jobs must not be acknowledged: hand
            // them back to the broker to be attempted again.
            tracing::error!(%error, "cannot schedule retries; requeueing the batch");
            for pending in batch {
                pending.part.requeue().await;
            }
            return;
        }
        for (delay_ms, jobs) in &retries {
            inner
                .metrics
                .retries_scheduled_total
                .with_label_values(&[&delay_ms.to_string()])
                .inc_by(jobs.len() as u64);
        }
    }
    // A bundle is acknowledged with its last job.
    parts::finish_all(batch.into_iter().map(|p| p.part)).await;
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
