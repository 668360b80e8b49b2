//! Parking: jobs bound for a defer queue are gathered for a moment and published packed
//! (`ingest.jobs_per_message` per message), so a stuck webhook's backlog cycles through
//! the broker as a few bundles rather than one message per job. A parked job's part of
//! its message is settled once the broker has confirmed where it went.
//!
//! A job that *failed* before any attempt could be made (`Failed`) travels alone with
//! its failure count (`x-qr3-failures`): to the defer queue of that count (so each
//! failure waits longer), and after `delivery.job_failure_limit` failures to
//! `<prefix>.deliveries.dead` with the reason. Either way its bundle-mates are not
//! affected: the bundle is acknowledged once every job of it is settled.

use std::collections::BTreeMap;
use std::time::Duration;

use qr3_broker::{DeadQueue, DeliveryJob, Hold, Outgoing, Publisher, Verdict};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::parts::{self, Part};
use crate::Sender;

/// How long the first parked job of a batch waits for others to share its messages.
const LINGER: Duration = Duration::from_millis(5);
/// Most jobs parked in one confirm round.
const MAX_BATCH: usize = 1024;

/// One job on its way to a defer queue.
pub struct Parked {
    pub job: DeliveryJob,
    pub part: Part,
    /// Which defer queue (`Topology::defer_queue`): the job's deferrals so far when its
    /// wait escalates, otherwise 0. The message records one more.
    pub deferrals: u32,
    /// The job's failures so far (`x-qr3-failures`): a job with some travels alone so
    /// it keeps its count.
    pub failures: u32,
}

/// One job that failed before an attempt could be made.
pub struct Failed {
    pub job: DeliveryJob,
    pub part: Part,
    /// Failures including this one.
    pub failures: u32,
    /// Why, for the log and the dead letter (never a secret).
    pub error: String,
}

pub enum Item {
    Park(Parked),
    Fail(Failed),
}

impl Item {
    fn into_part(self) -> Part {
        match self {
            Item::Park(p) => p.part,
            Item::Fail(f) => f.part,
        }
    }
}

#[derive(Clone)]
pub struct Handle(mpsc::Sender<Item>);

impl Handle {
    pub async fn park(&self, parked: Parked) {
        self.send(Item::Park(parked)).await;
    }

    pub async fn fail(&self, failed: Failed) {
        self.send(Item::Fail(failed)).await;
    }

    async fn send(&self, item: Item) {
        if let Err(refused) = self.0.send(item).await {
            // Only after the parking task is gone: hand the job back.
            refused.0.into_part().requeue().await;
        }
    }
}

/// Starts the parking task. It runs until every handle is dropped; if it stops before
/// (a panic), `died` is cancelled so the consumer ends the process.
pub fn spawn(
    sender: Sender,
    publisher: Publisher,
    hold: Hold,
    died: CancellationToken,
) -> (Handle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_BATCH);
    let task = tokio::spawn(async move {
        let alive = died.drop_guard();
        run(sender, publisher, hold, rx).await;
        alive.disarm();
    });
    (Handle(tx), task)
}

async fn run(sender: Sender, publisher: Publisher, hold: Hold, mut rx: mpsc::Receiver<Item>) {
    while let Some(batch) = parts::next_batch(&mut rx, MAX_BATCH, LINGER).await {
        flush(&sender, &publisher, &hold, batch).await;
    }
}

async fn flush(sender: &Sender, publisher: &Publisher, hold: &Hold, batch: Vec<Item>) {
    let inner = &sender.inner;
    crate::failpoint(&inner.settings.amqp.prefix, "sender-parking");
    let topology = &inner.topology;
    let limit = inner.settings.delivery.job_failure_limit;
    let mut by_queue: BTreeMap<u32, Vec<&DeliveryJob>> = BTreeMap::new();
    let mut messages = Vec::new();
    let (mut parked, mut failed, mut dead) = (0u64, 0u64, 0u64);
    for item in &batch {
        match item {
            Item::Park(p) if p.failures == 0 => {
                parked += 1;
                by_queue.entry(p.deferrals).or_default().push(&p.job);
            }
            Item::Park(p) => {
                parked += 1;
                let mut message = alone(&p.job, topology.defer_queue(p.deferrals));
                message.properties = qr3_broker::with_failures(
                    &qr3_broker::with_deferrals(&message.properties, p.deferrals + 1),
                    p.failures,
                );
                messages.push(message);
            }
            Item::Fail(f) if f.failures >= limit => {
                dead += 1;
                tracing::error!(webhook_id = %f.job.webhook_id, event_id = %f.job.event_id, failures = f.failures, error = %f.error,
                    "delivery job failed too often; dead-lettered alone");
                messages.push(dead_letter(sender, f));
            }
            Item::Fail(f) => {
                failed += 1;
                tracing::warn!(webhook_id = %f.job.webhook_id, event_id = %f.job.event_id, failures = f.failures, error = %f.error,
                    "delivery job failed before an attempt; parked to try again later");
                // The n-th failure waits on the n-th defer queue.
                let mut message = alone(&f.job, topology.defer_queue(f.failures - 1));
                message.properties = qr3_broker::with_failures(&message.properties, f.failures);
                messages.push(message);
            }
        }
    }
    for (deferrals, jobs) in by_queue {
        for mut message in sender.pack(topology.defer_queue(deferrals), jobs) {
            message.properties =
                qr3_broker::with_deferrals(&message.properties, deferrals.saturating_add(1));
            messages.push(message);
        }
    }
    if hold
        .publish(publisher, "parked jobs", &messages)
        .await
        .is_err()
    {
        for item in batch {
            item.into_part().requeue().await;
        }
        return;
    }
    let metrics = &inner.metrics;
    metrics.deliveries_deferred_total.inc_by(parked);
    let failures = &metrics.delivery_jobs_failed_total;
    failures.with_label_values(&["parked"]).inc_by(failed);
    failures.with_label_values(&["dead_lettered"]).inc_by(dead);
    parts::finish_all(batch.into_iter().map(Item::into_part)).await;
}

/// A single-job message for `queue`.
fn alone(job: &DeliveryJob, queue: String) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: queue,
        properties: job.properties(),
        body: job.body.clone(),
    }
}

/// The job alone on `<prefix>.deliveries.dead`, with why and where it belongs.
fn dead_letter(sender: &Sender, failed: &Failed) -> Outgoing {
    let topology = &sender.inner.topology;
    let properties = qr3_broker::with_failures(&failed.job.properties(), failed.failures);
    Verdict::new("job_failed", &failed.error)
        .origin(topology.deliveries_queue())
        .letter(
            DeadQueue::Deliveries.name(topology),
            properties,
            failed.job.body.clone(),
        )
}
