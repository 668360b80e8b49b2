//! Parking: jobs bound for a defer queue are gathered for a moment and published packed
//! (`ingest.jobs_per_message` per message), so a stuck webhook's backlog cycles through
//! the broker as a few bundles rather than one message per job. A parked job's part of
//! its message is settled once the broker has confirmed where it went.

use std::collections::BTreeMap;
use std::time::Duration;

use qr3_broker::{DeliveryJob, Publisher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
    while let Some(batch) = parts::next_batch(&mut rx, MAX_BATCH, LINGER).await {
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
        for mut message in sender.pack(inner.topology.defer_queue(deferrals), jobs) {
            message.properties =
                qr3_broker::with_deferrals(&message.properties, deferrals.saturating_add(1));
            messages.push(message);
        }
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
    parts::finish_all(batch.into_iter().map(|p| p.part)).await;
}
