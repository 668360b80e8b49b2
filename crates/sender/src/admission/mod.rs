//! Admission control: whether a job may make its attempt now, wait for it in memory, or
//! be parked on a defer queue. Per webhook, in each sender: a circuit breaker
//! (`breaker.rs`) decides whether the webhook's jobs try at all; a bulkhead
//! (`bulkhead.rs`) caps its attempts in flight and queues, first come first served, the
//! jobs it is expected to serve within the wait bound (`delivery.defer_ms`); and, for a
//! webhook with a `max_per_second`, the GCRA rate limiter (`gcra.rs`, used by the
//! attempt once the target is known) spaces its attempts across every sender.
//!
//! ```text
//!  job ──▶ breaker ──park(step)──────────────────────────────────▶ defer queue of step
//!            │ pass / probe
//!            ▼
//!          bulkhead ──not served within the wait bound──────────▶ defer queue 0
//!            │ slot           (a stall opens the breaker)
//!            ▼
//!          attempt ──▶ outcome recorded by the breaker, slot freed
//! ```
//!
//! So one slow or hanging receiver holds at most its in-flight cap of the sender's
//! concurrency, plus the jobs it is expected to serve within the wait bound (next to
//! none once its attempts stop ending); once it keeps timing out, or frees no slot for
//! longer than any healthy attempt can hold one, its backlog cycles through the defer
//! queues with exponential backoff instead of through the sender.

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
use bulkhead::{Bulkhead, Service, Slot};

/// What admission decided for one job.
pub enum Admitted {
    /// Make the attempt; report how it went with [`Permit::finish`].
    Slot(Permit),
    /// Park the job on the defer queue of this step (`Topology::defer_queue`).
    Park(u32),
}

/// The limits, all from configuration: the bulkhead's cap
/// (`delivery.max_in_flight_per_webhook`), the wait bound (`delivery.defer_ms`), the
/// stall window (the longest a healthy attempt holds its slot: the rate limiter's wait,
/// at most `delivery.defer_ms`, plus the request, at most `delivery.timeout_ms`), and
/// the breaker's rules (`delivery.breaker_timeouts`, `delivery.defer_ms`, the defer
/// queues).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cap: usize,
    pub wait: Duration,
    pub stall: Duration,
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
    service: Service,
    breaker: Breaker,
    /// Jobs holding or waiting for a slot.
    users: usize,
    /// Jobs that have joined the queue, and left it (served, parked or given up), ever:
    /// `joined - departed` are waiting, and a waiter that joined as the `n`th has at
    /// most `n - departed` jobs ahead of it.
    joined: u64,
    departed: u64,
    /// When the webhook last freed a slot (or the entry was made).
    freed_at: Instant,
    /// Wakes the waiting jobs when the breaker opens, so they park at once.
    opened: Arc<Notify>,
}

impl Entry {
    fn new(cap: usize, now: Instant) -> Self {
        Self {
            bulkhead: Bulkhead::new(cap),
            service: Service::new(cap, now),
            breaker: Breaker::default(),
            users: 0,
            joined: 0,
            departed: 0,
            freed_at: now,
            opened: Arc::new(Notify::new()),
        }
    }

    /// Jobs waiting for a slot.
    fn waiting(&self) -> usize {
        usize::try_from(self.joined - self.departed).unwrap_or(usize::MAX)
    }

    /// A job of this webhook, at its cap, gets no slot: where it parks. A webhook that
    /// has freed no slot for the whole stall window has every attempt in flight stuck
    /// past what a healthy one can take: its breaker opens.
    fn refuse(&mut self, webhook: &WebhookId, limits: &Limits, now: Instant) -> u32 {
        if now.saturating_duration_since(self.freed_at) >= limits.stall
            && matches!(self.breaker.state(), State::Closed { .. })
        {
            self.breaker.stalled(&limits.rules, now);
            self.opened.notify_waiters();
            tracing::info!(webhook_id = %webhook, "circuit breaker opened: no slot freed within the stall window");
        }
        open_step(&self.breaker)
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
        let limits = self.limits;
        let (bulkhead, opened, ticket, deadline) = {
            let mut webhooks = self.lock();
            let now = Instant::now();
            let entry = webhooks
                .entry(webhook.clone())
                .or_insert_with(|| Entry::new(limits.cap, now));
            match entry.breaker.decide(now) {
                Decision::Park(step) => return Admitted::Park(step),
                Decision::Probe => {
                    if let Some(slot) = entry.bulkhead.try_enter() {
                        entry.users += 1;
                        return Admitted::Slot(self.permit(webhook, entry, slot, now));
                    }
                    // Nothing freed during the whole backoff: open again, longer.
                    entry.breaker.probe_refused(&limits.rules, now);
                    return Admitted::Park(open_step(&entry.breaker));
                }
                Decision::Pass => {}
            }
            if let Some(slot) = entry.bulkhead.try_enter() {
                entry.users += 1;
                return Admitted::Slot(self.permit(webhook, entry, slot, now));
            }
            if !entry
                .service
                .serves_within(entry.waiting(), limits.wait, now)
            {
                return Admitted::Park(entry.refuse(webhook, &limits, now));
            }
            entry.users += 1;
            let ticket = entry.joined;
            entry.joined += 1;
            (
                entry.bulkhead.clone(),
                entry.opened.clone(),
                ticket,
                now + limits.wait,
            )
        };
        let slot = self
            .wait(webhook, &bulkhead, &opened, ticket, deadline)
            .await;
        let mut webhooks = self.lock();
        let entry = webhooks
            .get_mut(webhook)
            .expect("an entry with users is kept");
        entry.departed += 1;
        let now = Instant::now();
        if let Some(slot) = slot {
            return Admitted::Slot(self.permit(webhook, entry, slot, now));
        }
        entry.users -= 1;
        let step = entry.refuse(webhook, &limits, now);
        if entry.users == 0 && entry.breaker.is_resting() {
            webhooks.remove(webhook);
        }
        Admitted::Park(step)
    }

    /// A queued job's wait for a slot, keeping its place in the queue: it ends with the
    /// slot, or with `None` when the breaker opens, the deadline passes, or the webhook,
    /// having freed no slot since the job last looked, is no longer expected to serve
    /// it before the deadline. It looks every service time (at least every
    /// `wait / cap`, the pace at which a full queue is served), so a webhook whose
    /// attempts stop ending sheds its queue, newest first, as their age grows, instead
    /// of holding the sender's slots until every deadline; one that keeps freeing slots
    /// serves its queue as admission expected.
    async fn wait(
        &self,
        webhook: &WebhookId,
        bulkhead: &Bulkhead,
        opened: &Notify,
        ticket: u64,
        deadline: Instant,
    ) -> Option<Slot> {
        let limits = self.limits;
        let every = limits.wait / u32::try_from(limits.cap.max(1)).unwrap_or(u32::MAX);
        let opened = opened.notified();
        let acquire = bulkhead.enter_by(deadline);
        tokio::pin!(opened, acquire);
        let mut looked = None;
        loop {
            let check = {
                let webhooks = self.lock();
                let entry = webhooks.get(webhook).expect("an entry with users is kept");
                let now = Instant::now();
                let ahead =
                    usize::try_from(ticket.saturating_sub(entry.departed)).unwrap_or(usize::MAX);
                let left = deadline.saturating_duration_since(now);
                let stalled = looked.is_some_and(|at| entry.freed_at <= at);
                if stalled && !entry.service.serves_within(ahead, left, now) {
                    return None;
                }
                looked = Some(now);
                (now + entry.service.time(now).max(every)).min(deadline)
            };
            tokio::select! {
                biased;
                slot = &mut acquire => return slot,
                () = &mut opened => return None,
                () = tokio::time::sleep_until(check) => {}
            }
        }
    }

    fn permit(&self, webhook: &WebhookId, entry: &mut Entry, slot: Slot, now: Instant) -> Permit {
        entry.service.start(now);
        Permit {
            webhook: webhook.clone(),
            admission: self.clone(),
            slot: Some(slot),
            started: now,
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
    /// When the slot was taken.
    started: Instant,
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
        entry.service.end(self.started, now);
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
            wait: ms(1000),
            stall: ms(2000),
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

    /// A job of a receiver that answers in `latency`: `None` once answered, or the
    /// step it was parked at.
    fn answered_in(
        admission: &Admission,
        webhook: &WebhookId,
        latency: Duration,
    ) -> tokio::task::JoinHandle<Option<u32>> {
        let (admission, webhook) = (admission.clone(), webhook.clone());
        tokio::spawn(async move {
            match admission.admit(&webhook).await {
                Admitted::Slot(permit) => {
                    tokio::time::sleep(latency).await;
                    permit.finish(Outcome::Answered);
                    None
                }
                Admitted::Park(step) => Some(step),
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
    async fn a_healthy_receiver_slower_than_any_short_wait_is_served_from_memory_and_never_stalls()
    {
        // Cap 2, answers in 300 ms. Nothing known yet: a first backlog of 6 waits, in
        // three rounds (up to 600 ms, within the 1 s wait bound).
        let admission = admission(2);
        let a = WebhookId::generate();
        let first: Vec<_> = (0..6)
            .map(|_| answered_in(&admission, &a, ms(300)))
            .collect();
        let started = Instant::now();
        // At 400 ms its service time is known (300 ms: 2 slots every 300 ms), 2 wait.
        // Of a backlog of 10 more, 4 are expected to be served within the 1 s bound
        // (up to 6 × 150 ms) and wait; 6 are parked on the first defer queue. The
        // breaker stays closed: the webhook keeps freeing slots.
        tokio::time::sleep(ms(400)).await;
        let second: Vec<_> = (0..10)
            .map(|_| answered_in(&admission, &a, ms(300)))
            .collect();
        for job in first {
            assert_eq!(job.await.unwrap(), None, "served from memory");
        }
        assert_eq!(started.elapsed(), ms(900));
        let mut parked = Vec::new();
        for job in second {
            parked.extend(job.await.unwrap());
        }
        assert_eq!(parked, [0; 6]);
        assert_eq!(started.elapsed(), ms(1500), "two more rounds");
        assert!(admission.lock().is_empty(), "closed and idle");
    }

    #[tokio::test(start_paused = true)]
    async fn a_webhook_whose_attempts_do_not_end_has_its_queue_shrink_and_then_its_breaker_open() {
        let admission = admission(4);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let t0 = Instant::now();
        let _hanging: Vec<Permit> = (0..4).map(|_| slot_now(&admission, &a)).collect();
        // Nothing known yet: the first job waits, for the whole wait bound, in vain; it
        // parks for defer_ms and the breaker stays closed.
        let first = spawn_admit(&admission, &a);
        tokio::time::sleep(ms(1500)).await;
        assert!(first.is_finished());
        assert_eq!(first.await.unwrap().err(), Some(0));
        assert!(matches!(admission.state(&a), State::Closed { .. }));
        // At 1.5 s the attempts' age says 4 slots in 1.5 s at best: one job may still
        // wait (1.5 s / 4 = 375 ms expected).
        let waiter = spawn_admit(&admission, &a);
        tokio::task::yield_now().await;
        tokio::time::sleep(ms(500)).await;
        assert!(!waiter.is_finished(), "it waits");
        // At 2 s a second may not (2 × 2 s / 4), and it is the stall window: nothing
        // freed since the slots were taken. The refused job opens the breaker, which
        // parks the waiter at once.
        assert_eq!(parked(admission.admit(&a).await), 0);
        assert!(matches!(admission.state(&a), State::Open { step: 0, .. }));
        assert_eq!(waiter.await.unwrap().err(), Some(0));
        assert_eq!(t0.elapsed(), ms(2000));
        // While open, a job parks at once; other webhooks are not affected.
        assert_eq!(parked(admission.admit(&a).await), 0);
        slot(admission.admit(&b).await).finish(Outcome::Answered);
        // After the backoff the probe finds every slot still taken: open again, longer.
        tokio::time::sleep(ms(1000)).await;
        assert_eq!(parked(admission.admit(&a).await), 1);
        assert!(matches!(admission.state(&a), State::Open { step: 1, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_joined_before_the_attempts_stopped_ending_is_shed_before_its_deadlines() {
        // Cap 2 (a look every 500 ms at least), both attempts hang from the start, and
        // 8 jobs queue while nothing is known yet. At 500 ms nothing has been freed and
        // the attempts' age says 2 slots per 500 ms at best: of the 500 ms left, the
        // queue keeps at most the job or two at its head, the rest park at once
        // instead of holding the sender's slots until their deadline.
        let admission = admission(2);
        let a = WebhookId::generate();
        let _hanging: Vec<Permit> = (0..2).map(|_| slot_now(&admission, &a)).collect();
        let queued: Vec<_> = (0..8).map(|_| spawn_admit(&admission, &a)).collect();
        tokio::time::sleep(ms(501)).await;
        let parked = queued.iter().filter(|job| job.is_finished()).count();
        assert!(parked >= 6, "{parked} of 8 parked at 500 ms");
        tokio::time::sleep(ms(500)).await;
        for job in queued {
            assert_eq!(
                job.await.unwrap().err(),
                Some(0),
                "parked, at the deadline at the latest"
            );
        }
    }

    fn slot_now(admission: &Admission, webhook: &WebhookId) -> Permit {
        use futures_util::FutureExt;
        slot(
            admission
                .admit(webhook)
                .now_or_never()
                .expect("a free slot is taken at once"),
        )
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
