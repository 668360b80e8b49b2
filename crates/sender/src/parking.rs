//! Parking: jobs bound for a defer queue are gathered for a moment and published packed
//! (`ingest.jobs_per_message` per message), so a stuck webhook's backlog cycles through
//! the broker as a few bundles rather than one message per job. A parked job's part of
//! its message is settled once the broker has confirmed where it went.

use std::collections::BTreeMap;
use std::time::Duration;

use qr3_broker::{DeliveryJob, Outgoing, Packer, Publisher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::parts::{self, Finished, Part};
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
}

#[derive(Clone)]
pub struct Handle(mpsc::Sender<Parked>);

impl Handle {
    pub async fn park(&self, parked: Parked) {
        if let Err(refused) = self.0.send(parked).await {
            // Only after the parking task is gone (shutdown): hand the job back.
            refused.0.part.requeue().await;
        }
    }
}

pub fn spawn(sender: Sender, publisher: Publisher) -> (Handle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_BATCH);
    let task = tokio::spawn(run(sender, publisher, rx));
    (Handle(tx), task)
}

async fn run(sender: Sender, publisher: Publisher, mut rx: mpsc::Receiver<Parked>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&sender, &publisher, batch).await;
    }
}

async fn flush(sender: &Sender, publisher: &Publisher, batch: Vec<Parked>) {
    let inner = &sender.inner;
    let mut by_queue: BTreeMap<u32, Vec<&DeliveryJob>> = BTreeMap::new();
    for parked in &batch {
        by_queue
            .entry(parked.deferrals)
            .or_default()
            .push(&parked.job);
    }
    let mut messages = Vec::new();
    for (deferrals, jobs) in by_queue {
        let mut packer = Packer::new(
            inner.settings.ingest.jobs_per_message,
            inner.settings.ingest.max_event_bytes,
        );
        for job in jobs {
            packer.push_event([job], &job.body);
        }
        messages.extend(
            packer
                .finish()
                .into_iter()
                .map(|(properties, body)| Outgoing {
                    exchange: String::new(),
                    routing_key: inner.topology.defer_queue(deferrals),
                    properties: qr3_broker::with_deferrals(
                        &properties,
                        deferrals.saturating_add(1),
                    ),
                    body,
                }),
        );
    }
    if let Err(error) = publisher.publish_all(&messages).await {
        tracing::warn!(%error, jobs = batch.len(), "cannot park jobs; requeueing them");
        for parked in batch {
            parked.part.requeue().await;
        }
        return;
    }
    inner
        .metrics
        .deliveries_deferred_total
        .inc_by(batch.len() as u64);
    let mut acks = Vec::with_capacity(batch.len());
    for parked in batch {
        match parked.part.finish(false) {
            Some(Finished::Ack(settlement)) => acks.push(settlement),
            requeue => parts::settle(requeue).await,
        }
    }
    if let Some(first) = acks.first() {
        let tracker = first.tracker().clone();
        tracker.ack(acks.iter().map(|s| s.tag)).await;
    }
}
