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

pub async fn settle(finished: Option<Finished>) {
    match finished {
        Some(Finished::Ack(settlement)) => settlement.ack().await,
        Some(Finished::Requeue(settlement)) => settlement.requeue().await,
        None => {}
    }
}
