//! Admission control: whether a job may make its attempt now, wait for it in memory, or
//! be parked on a defer queue. Per webhook, in each sender: a circuit breaker
//! (`breaker.rs`) decides whether the webhook's jobs try at all; a bulkhead
//! (`bulkhead.rs`) caps its attempts in flight and lets a bounded number of jobs wait,
//! first come first served, for a slot; and, for a webhook with a `max_per_second`, the
//! GCRA rate limiter (`gcra.rs`, used by the attempt once the target is known) spaces
//! its attempts across every sender.
//!
//! ```text
//!  job ──▶ breaker ──park(step)──────────────────────────────▶ defer queue of step
//!            │ pass / probe
//!            ▼
//!          bulkhead ──wait over (a stall opens the breaker)──▶ defer queue 0
//!            │ slot
//!            ▼
//!          attempt ──▶ outcome recorded by the breaker, slot freed
//! ```
//!
//! So one slow or hanging receiver holds at most its in-flight cap of the sender's
//! concurrency, plus jobs waiting at most `delivery.admission_wait_ms`, and once it
//! stops freeing slots or keeps timing out its backlog cycles through the defer queues
//! with exponential backoff instead of through the sender.

pub mod breaker;
pub mod bulkhead;
pub mod gcra;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qr3_domain::WebhookId;
use tokio::sync::Notify;
use tokio::time::Instant;

use breaker::{Breaker, Decision, Outcome, Rules, State};
use bulkhead::{Bulkhead, Slot};

/// What admission decided for one job.
pub enum Admitted {
    /// Make the attempt; report how it went with [`Permit::finish`].
    Slot(Permit),
    /// Park the job on the defer queue of this step (`Topology::defer_queue`).
    Park(u32),
}

/// The limits, from configuration: `delivery.max_in_flight_per_webhook`,
/// `delivery.admission_wait_ms`, and the breaker's rules (`delivery.breaker_timeouts`,
/// `delivery.defer_ms`, the defer queues).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cap: usize,
    pub wait: Duration,
    pub rules: Rules,
}

#[derive(Clone)]
pub struct Admission {
    limits: Limits,
    webhooks: Arc<Mutex<HashMap<WebhookId, Entry>>>,
}

/// One webhook's admission state. It exists while the webhook has jobs holding or
/// waiting for a slot, or while its breaker is not resting (closed with nothing
/// counted).
struct Entry {
    bulkhead: Bulkhead,
    breaker: Breaker,
    /// Jobs holding or waiting for a slot.
    users: usize,
    /// When the webhook last freed a slot.
    freed_at: Instant,
    /// Wakes the waiting jobs when the breaker opens, so they park at once.
    opened: Arc<Notify>,
}

impl Entry {
    fn new(cap: usize, now: Instant) -> Self {
        Self {
            bulkhead: Bulkhead::new(cap),
            breaker: Breaker::default(),
            users: 0,
            freed_at: now,
            opened: Arc::new(Notify::new()),
        }
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            webhooks: Arc::default(),
        }
    }

    /// Admits a job of `webhook`: a slot (at once, or after waiting behind earlier
    /// jobs), or where to park it.
    pub async fn admit(&self, webhook: &WebhookId) -> Admitted {
        let Limits { cap, wait, rules } = self.limits;
        let (bulkhead, opened, started) = {
            let mut webhooks = self.lock();
            let now = Instant::now();
            let entry = webhooks
                .entry(webhook.clone())
                .or_insert_with(|| Entry::new(cap, now));
            match entry.breaker.decide(now) {
                Decision::Park(step) => return Admitted::Park(step),
                Decision::Probe => {
                    if let Some(slot) = entry.bulkhead.try_enter() {
                        entry.users += 1;
                        return Admitted::Slot(self.permit(webhook, slot));
                    }
                    // Nothing freed during the whole backoff: open again, longer.
                    entry.breaker.probe_refused(&rules, now);
                    return Admitted::Park(open_step(&entry.breaker));
                }
                Decision::Pass => {}
            }
            entry.users += 1;
            if let Some(slot) = entry.bulkhead.try_enter() {
                return Admitted::Slot(self.permit(webhook, slot));
            }
            (entry.bulkhead.clone(), entry.opened.clone(), now)
        };
        let opened = opened.notified();
        let slot = tokio::select! {
            slot = bulkhead.enter_by(started + wait) => slot,
            () = opened => None,
        };
        let mut webhooks = self.lock();
        let entry = webhooks
            .get_mut(webhook)
            .expect("an entry with users is kept");
        if let Some(slot) = slot {
            return Admitted::Slot(self.permit(webhook, slot));
        }
        entry.users -= 1;
        let now = Instant::now();
        if entry.freed_at <= started && matches!(entry.breaker.state(), State::Closed { .. }) {
            // The webhook, at its cap, freed no slot for a whole wait: it is stuck.
            entry.breaker.stalled(&rules, now);
            entry.opened.notify_waiters();
            tracing::info!(webhook_id = %webhook, "circuit breaker opened: no slot freed within the admission wait");
        }
        let step = open_step(&entry.breaker);
        if entry.users == 0 && entry.breaker.is_resting() {
            webhooks.remove(webhook);
        }
        Admitted::Park(step)
    }

    fn permit(&self, webhook: &WebhookId, slot: Slot) -> Permit {
        Permit {
            webhook: webhook.clone(),
            admission: self.clone(),
            slot: Some(slot),
            outcome: Outcome::NotSent,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WebhookId, Entry>> {
        self.webhooks.lock().expect("admission lock poisoned")
    }

    /// The breaker state of a webhook (closed when it has no entry), for tests.
    #[cfg(test)]
    fn state(&self, webhook: &WebhookId) -> State {
        self.lock()
            .get(webhook)
            .map_or(State::Closed { timeouts: 0 }, |e| e.breaker.state())
    }
}

/// The defer step of a breaker: its backoff step when open, else the first.
fn open_step(breaker: &Breaker) -> u32 {
    match breaker.state() {
        State::Open { step, .. } | State::HalfOpen { step, .. } => step,
        State::Closed { .. } => 0,
    }
}

/// One of a webhook's in-flight slots. [`Permit::finish`] reports how the attempt
/// ended; dropped without it, nothing was sent.
pub struct Permit {
    webhook: WebhookId,
    admission: Admission,
    slot: Option<Slot>,
    outcome: Outcome,
}

impl Permit {
    /// Frees the slot, telling the breaker how the attempt ended.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let rules = self.admission.limits.rules;
        let mut webhooks = self.admission.lock();
        let Some(entry) = webhooks.get_mut(&self.webhook) else {
            return;
        };
        let now = Instant::now();
        let was_closed = matches!(entry.breaker.state(), State::Closed { .. });
        entry.breaker.record(&rules, self.outcome, now);
        if was_closed && matches!(entry.breaker.state(), State::Open { .. }) {
            entry.opened.notify_waiters();
            tracing::info!(webhook_id = %self.webhook, "circuit breaker opened: attempts keep timing out");
        }
        entry.freed_at = now;
        entry.users -= 1;
        // The slot goes straight to the oldest waiter, if any.
        drop(self.slot.take());
        if entry.users == 0 && entry.breaker.is_resting() {
            webhooks.remove(&self.webhook);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn admission(cap: usize) -> Admission {
        Admission::new(Limits {
            cap,
            wait: ms(250),
            rules: Rules {
                trips: 2,
                backoff: ms(1000),
                last_step: 3,
            },
        })
    }

    fn slot(admitted: Admitted) -> Permit {
        match admitted {
            Admitted::Slot(permit) => permit,
            Admitted::Park(step) => panic!("parked at step {step}"),
        }
    }

    fn parked(admitted: Admitted) -> u32 {
        match admitted {
            Admitted::Slot(_) => panic!("admitted"),
            Admitted::Park(step) => step,
        }
    }

    fn spawn_admit(
        admission: &Admission,
        webhook: &WebhookId,
    ) -> tokio::task::JoinHandle<Result<Permit, u32>> {
        let (admission, webhook) = (admission.clone(), webhook.clone());
        tokio::spawn(async move {
            match admission.admit(&webhook).await {
                Admitted::Slot(permit) => Ok(permit),
                Admitted::Park(step) => Err(step),
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_job_gets_the_next_freed_slot_and_an_idle_webhook_is_forgotten() {
        let admission = admission(1);
        let a = WebhookId::generate();
        let held = slot(admission.admit(&a).await);
        let waiter = spawn_admit(&admission, &a);
        tokio::time::sleep(ms(100)).await;
        assert!(!waiter.is_finished(), "it waits");
        held.finish(Outcome::Answered);
        let permit = waiter.await.unwrap().expect("served from memory");
        permit.finish(Outcome::Answered);
        assert!(
            admission.lock().is_empty(),
            "nothing kept for an idle webhook"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_webhook_that_frees_no_slot_for_the_wait_opens_its_breaker_and_its_jobs_park() {
        let admission = admission(1);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let _hanging = slot(admission.admit(&a).await);
        let waiters: Vec<_> = (0..3).map(|_| spawn_admit(&admission, &a)).collect();
        let started = Instant::now();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().err(), Some(0), "parked for defer_ms");
        }
        assert_eq!(
            started.elapsed(),
            ms(250),
            "after the admission wait, all at once"
        );
        assert!(matches!(admission.state(&a), State::Open { step: 0, .. }));
        // While open, a job parks at once without waiting; other webhooks are not
        // affected.
        assert_eq!(parked(admission.admit(&a).await), 0);
        assert_eq!(started.elapsed(), ms(250));
        slot(admission.admit(&b).await).finish(Outcome::Answered);
        // After the backoff the probe finds the slot still taken: open again, longer.
        tokio::time::sleep(ms(1000)).await;
        assert_eq!(parked(admission.admit(&a).await), 1);
        assert!(matches!(admission.state(&a), State::Open { step: 1, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_webhook_that_frees_slots_is_not_stuck() {
        let admission = admission(1);
        let a = WebhookId::generate();
        // A receiver answering in 100 ms, with three jobs waiting behind the first: two
        // are served within the 250 ms wait, the third is not and parks, and the
        // breaker stays closed (the webhook kept freeing slots).
        let answer_in_100_ms = |admission: &Admission| {
            let (admission, a) = (admission.clone(), a.clone());
            tokio::spawn(async move {
                match admission.admit(&a).await {
                    Admitted::Slot(permit) => {
                        tokio::time::sleep(ms(100)).await;
                        permit.finish(Outcome::Answered);
                        None
                    }
                    Admitted::Park(step) => Some(step),
                }
            })
        };
        let jobs: Vec<_> = (0..4).map(|_| answer_in_100_ms(&admission)).collect();
        let mut parked = Vec::new();
        for job in jobs {
            parked.extend(job.await.unwrap());
        }
        assert_eq!(parked, [0]);
        assert!(admission.lock().is_empty(), "closed and idle");
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_timeouts_open_the_breaker_and_an_answered_probe_closes_it() {
        let admission = admission(4);
        let a = WebhookId::generate();
        slot(admission.admit(&a).await).finish(Outcome::TimedOut);
        assert!(matches!(admission.state(&a), State::Closed { timeouts: 1 }));
        slot(admission.admit(&a).await).finish(Outcome::TimedOut);
        assert!(matches!(admission.state(&a), State::Open { step: 0, .. }));
        assert_eq!(parked(admission.admit(&a).await), 0);
        tokio::time::sleep(ms(1000)).await;
        let probe = slot(admission.admit(&a).await);
        assert_eq!(parked(admission.admit(&a).await), 0, "one probe at a time");
        probe.finish(Outcome::Answered);
        assert!(admission.lock().is_empty(), "closed and idle: forgotten");
        slot(admission.admit(&a).await).finish(Outcome::Answered);
    }
}
