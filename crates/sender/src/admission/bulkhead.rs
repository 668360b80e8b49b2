//! The bulkhead of one webhook in one sender: at most `delivery.max_in_flight_per_webhook`
//! attempts at once, and a bounded first-come-first-served queue for a slot whose
//! length follows what the webhook is observed to serve (Little's law).
//!
//! ```text
//!  job ──▶ slot free? ──yes──────────────────▶ IN FLIGHT ──attempt ends──▶ slot freed
//!             │ no                                 ▲                          │
//!             ▼                                    │ the oldest waiter        │
//!          served within the wait bound? ──yes──▶ WAITING (FCFS) ─────────────┘
//!             │ no                                 │ the wait bound passed, the
//!             ▼                                    │ breaker opened, or no slot
//!          parked ◀────────────────────────────────┘ freed and no longer served
//!                                                    within the bound
//! ```
//!
//! The *wait bound* is `delivery.defer_ms`: a parked job comes back that late at the
//! earliest, so waiting in memory up to that long never makes a job later than parking
//! it, and keeps a healthy webhook's backlog flowing instead of sending it round the
//! defer queue. A job joins the queue only if the webhook is expected to serve it within
//! the wait bound: with `n` jobs ahead of it, `cap` slots and a *service time* `s`
//! (how long a slot is held), its wait is about `(n + 1) × s / cap` (Little's law: the
//! webhook frees `cap / s` slots a second), and it waits up to the bound. `s` is the
//! larger of the mean hold time of the webhook's recent attempts (a moving average
//! weighted `1 / cap`, so about one cap's worth of attempts) and the mean age of its
//! attempts in flight, so a receiver that stops answering is seen at once, not only
//! when its attempts end: its queue shrinks as its attempts age, and its backlog is
//! parked instead of holding the sender's `delivery.concurrency` slots. Every waiting
//! job holds one of them, so a healthy webhook's queue holds at most what it serves
//! within the wait bound, and a stuck one's less and less: `cap` jobs once its attempts
//! are a wait bound old, none once they are `cap` times that.
//!
//! Slots go to waiters in arrival order (tokio's semaphore is fair): a job that arrives
//! while others wait queues behind them.

use std::sync::Arc;
use std::time::Duration;

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

/// What the bulkhead observes of one webhook: how long its attempts in flight have
/// held their slots so far, and how long its recent attempts held theirs.
#[derive(Debug)]
pub struct Service {
    cap: usize,
    /// Starts are kept as their sum after `epoch`, for the mean age in flight.
    epoch: Instant,
    in_flight: u32,
    started_sum: Duration,
    /// Moving average of the slot hold time of ended attempts.
    mean: Option<Duration>,
}

impl Service {
    pub fn new(cap: usize, now: Instant) -> Self {
        Self {
            cap: cap.max(1),
            epoch: now,
            in_flight: 0,
            started_sum: Duration::ZERO,
            mean: None,
        }
    }

    /// An attempt took a slot at `now`.
    pub fn start(&mut self, now: Instant) {
        self.in_flight += 1;
        self.started_sum += now.saturating_duration_since(self.epoch);
    }

    /// The attempt that took its slot at `started` freed it at `now`.
    pub fn end(&mut self, started: Instant, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.started_sum = self
            .started_sum
            .saturating_sub(started.saturating_duration_since(self.epoch));
        let held = now.saturating_duration_since(started);
        let weight = 1.0 / self.cap as f64;
        self.mean = Some(match self.mean {
            None => held,
            Some(mean) => mean.mul_f64(1.0 - weight) + held.mul_f64(weight),
        });
    }

    /// The service time `s` at `now`: the larger of the mean hold time of ended
    /// attempts and the mean age of those in flight (which in a steady state is about
    /// half the former, and grows without bound when attempts stop ending).
    pub fn time(&self, now: Instant) -> Duration {
        let age = if self.in_flight == 0 {
            Duration::ZERO
        } else {
            now.saturating_duration_since(self.epoch)
                .saturating_sub(self.started_sum / self.in_flight)
        };
        self.mean.unwrap_or(Duration::ZERO).max(age)
    }

    /// Whether a job with `ahead` jobs waiting before it is expected to get a slot
    /// within `bound`: `(ahead + 1) × s / cap < bound`. (A waiting job waits up to
    /// `bound`: an earlier give-up, e.g. one `s` after its expected wait, parks a
    /// healthy fast webhook's backlog at the first pause of a busy machine, which
    /// delays every job by far more than `s`.)
    pub fn serves_within(&self, ahead: usize, bound: Duration, now: Instant) -> bool {
        let expected = self.time(now).mul_f64((ahead + 1) as f64 / self.cap as f64);
        expected < bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_cap_in_flight_and_waiters_are_served_in_order() {
        let bulkhead = Bulkhead::new(2);
        let a = bulkhead.try_enter().unwrap();
        let _b = bulkhead.try_enter().unwrap();
        assert!(bulkhead.try_enter().is_none(), "the cap is 2");
        let deadline = Instant::now() + ms(100);
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
        tokio::time::sleep(ms(30)).await;
        drop(a);
        let (_slot, served) = first.await.unwrap().expect("the first waiter got the slot");
        assert_eq!(served - (deadline - ms(100)), ms(30));
        assert!(
            !second.await.unwrap(),
            "the second waited until its deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_holds_what_the_webhook_serves_within_the_bound() {
        // Cap 4, attempts of 100 ms: 40 slots a second, so the 39th job in the queue is
        // served within a 1 s bound (975 ms) and the 40th is not.
        let t0 = Instant::now();
        let mut service = Service::new(4, t0);
        for _ in 0..4 {
            service.start(t0);
        }
        for _ in 0..4 {
            service.end(t0, t0 + ms(100));
        }
        let now = t0 + ms(100);
        assert_eq!(service.time(now), ms(100));
        assert!(service.serves_within(38, ms(1000), now));
        assert!(!service.serves_within(39, ms(1000), now));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_does_not_end_shrinks_the_queue_as_it_ages() {
        let t0 = Instant::now();
        let mut service = Service::new(4, t0);
        // Nothing known yet: a fresh webhook's backlog may wait.
        assert!(service.serves_within(100, ms(1000), t0));
        service.start(t0);
        service.start(t0);
        service.end(t0, t0 + ms(10));
        assert_eq!(service.time(t0 + ms(10)), ms(10));
        // The hung attempt's age (the mean age in flight) is the service time: after
        // 500 ms, 4 slots in 500 ms at best, so 7 jobs in the queue fit a 1 s bound and
        // 8 do not; after 4 s not even the first.
        assert_eq!(service.time(t0 + ms(500)), ms(500));
        assert!(service.serves_within(6, ms(1000), t0 + ms(500)));
        assert!(!service.serves_within(7, ms(1000), t0 + ms(500)));
        assert!(!service.serves_within(0, ms(1000), t0 + ms(4000)));
        // Once it ends, the average (weighted a quarter) remembers it.
        service.end(t0, t0 + ms(1000));
        assert_eq!(
            service.time(t0 + ms(1000)),
            ms(10).mul_f64(0.75) + ms(1000).mul_f64(0.25)
        );
    }
}
