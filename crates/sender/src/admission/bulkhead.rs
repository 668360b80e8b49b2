//! The bulkhead of one webhook in one sender: at most `delivery.max_in_flight_per_webhook`
//! attempts at once, and a bounded first-come-first-served wait for a slot.
//!
//! ```text
//!  job ──▶ slot free? ──yes──▶ IN FLIGHT ──attempt ends──▶ slot freed
//!             │ no                 ▲                          │
//!             ▼                    │ the oldest waiter        │
//!          WAITING (FCFS) ─────────┴──────────────────────────┘
//!             │ delivery.admission_wait_ms passed, or the breaker opened
//!             ▼
//!          parked
//! ```
//!
//! The wait is bounded in time by `delivery.admission_wait_ms` and in length by the
//! sender's own `delivery.concurrency` (a waiting job holds one of its slots). Slots go
//! to waiters in arrival order (tokio's semaphore is fair): a job that arrives while
//! others wait queues behind them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Clone)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
}

/// One of the webhook's in-flight slots; freed when dropped.
pub type Slot = OwnedSemaphorePermit;

impl Bulkhead {
    pub fn new(cap: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cap)),
        }
    }

    /// A slot at once, if one is free and nobody waits for it.
    pub fn try_enter(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// A slot, waiting behind earlier waiters until `deadline` at most.
    pub async fn enter_by(&self, deadline: Instant) -> Option<Slot> {
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Some(slot),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn at_most_cap_in_flight_and_waiters_are_served_in_order() {
        let bulkhead = Bulkhead::new(2);
        let a = bulkhead.try_enter().unwrap();
        let _b = bulkhead.try_enter().unwrap();
        assert!(bulkhead.try_enter().is_none(), "the cap is 2");
        let deadline = Instant::now() + Duration::from_millis(100);
        let first = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move {
                bulkhead
                    .enter_by(deadline)
                    .await
                    .map(|slot| (slot, Instant::now()))
            }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.enter_by(deadline).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(bulkhead.try_enter().is_none(), "no overtaking the waiters");
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(a);
        let (_slot, served) = first.await.unwrap().expect("the first waiter got the slot");
        assert_eq!(
            served - (deadline - Duration::from_millis(100)),
            Duration::from_millis(30)
        );
        assert!(
            !second.await.unwrap(),
            "the second waited until its deadline"
        );
    }
}
