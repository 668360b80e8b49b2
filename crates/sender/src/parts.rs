//! The jobs of one message settle it together: a bundle is acknowledged once every one
//! of its jobs is done (logged, retried or parked), and requeued instead when any of
//! them had to be handed back.
//!
//! A requeued bundle comes back with its jobs already logged as delivered: the sender
//! checks the log before attempting a redelivered job again (`already_delivered`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use qr3_broker::Settlement;

/// The duty to settle one job's share of a message.
pub struct Part {
    shared: Arc<Shared>,
}

struct Shared {
    settlement: Mutex<Option<Settlement>>,
    remaining: AtomicUsize,
    requeue: AtomicBool,
}

/// What the last job of a message leaves to do.
pub enum Finished {
    Ack(Settlement),
    Requeue(Settlement),
}

impl Part {
    /// One part per job of the message `settlement` settles (`jobs` >= 1).
    pub fn split(settlement: Settlement, jobs: usize) -> Vec<Part> {
        let shared = Arc::new(Shared {
            settlement: Mutex::new(Some(settlement)),
            remaining: AtomicUsize::new(jobs),
            requeue: AtomicBool::new(false),
        });
        (0..jobs)
            .map(|_| Part {
                shared: shared.clone(),
            })
            .collect()
    }

    /// This job is done (`handed_back`: it must be tried again). Returns what settles
    /// the message when this was its last job.
    pub fn finish(self, handed_back: bool) -> Option<Finished> {
        let shared = &self.shared;
        if handed_back {
            shared.requeue.store(true, Ordering::SeqCst);
        }
        if shared.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        let settlement = shared
            .settlement
            .lock()
            .expect("never poisoned: nothing panics while holding it")
            .take()?;
        Some(if shared.requeue.load(Ordering::SeqCst) {
            Finished::Requeue(settlement)
        } else {
            Finished::Ack(settlement)
        })
    }

    pub async fn requeue(self) {
        settle(self.finish(true)).await;
    }
}

/// Finishes every part (done, not handed back) and settles the messages they were the
/// last of: the acknowledgements in one call (one channel per consumer, so one tracker),
/// usually one multiple ack.
pub async fn finish_all(parts: impl IntoIterator<Item = Part>) {
    let mut acks = Vec::new();
    for part in parts {
        match part.finish(false) {
            Some(Finished::Ack(settlement)) => acks.push(settlement),
            requeue => settle(requeue).await,
        }
    }
    if let Some(first) = acks.first() {
        let tracker = first.tracker().clone();
        tracker.ack(acks.iter().map(|s| s.tag)).await;
    }
}

/// The next batch from `rx`: the first item to come, and whatever follows within
/// `linger` of it, `max` at most. `None` once every sender is gone.
pub async fn next_batch<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
    linger: std::time::Duration,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(next)) => batch.push(next),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

pub async fn settle(finished: Option<Finished>) {
    match finished {
        Some(Finished::Ack(settlement)) => settlement.ack().await,
        Some(Finished::Requeue(settlement)) => settlement.requeue().await,
        None => {}
    }
}
