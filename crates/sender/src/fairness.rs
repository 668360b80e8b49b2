//! Fair sharing: at most `delivery.max_in_flight_per_webhook` deliveries to one webhook
//! at a time in this process, so a slow or hanging receiver holds a bounded share of the
//! sender's concurrency and the other webhooks keep flowing; and the optional
//! per-webhook `max_per_second`, which spaces attempts out rather than failing them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use qr3_domain::WebhookId;

/// How long a job may wait for its webhook's in-flight slot before it is parked: a
/// webhook at its cap that keeps freeing slots (a fast receiver with a backlog) is
/// served from memory; one that does not (slow, hanging) has its jobs parked at once.
/// It is also the window over which a webhook's pace is counted.
pub const SLOT_PATIENCE: Duration = Duration::from_millis(250);
/// A webhook that has not freed a slot yet (its burst's first responses are still
/// out) has its jobs wait only until this long after it started being used, so a
/// receiver that hangs from the start does not hold waiting jobs for long. Long enough
/// for a first burst's connections on a busy machine: a job parked for want of it
/// arrives a whole `delivery.defer_ms` late.
pub const FIRST_SLOT_WINDOW: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct InFlightLimiter {
    cap: usize,
    patience: Duration,
    first_window: Duration,
    webhooks: Arc<Mutex<Webhooks>>,
}

/// The webhooks in use, and those that were within the patience (whose pace a new burst
/// is judged by).
#[derive(Default)]
struct Webhooks {
    entries: HashMap<WebhookId, Entry>,
    /// At this many entries, the idle ones that are no longer needed are dropped (and
    /// the mark set at twice what is left), so the sweep costs little per new webhook.
    sweep_at: usize,
}

struct Entry {
    /// `cap` permits, handed out first come, first served (a job that arrives while
    /// others wait queues behind them).
    slots: Arc<Semaphore>,
    /// Jobs holding or waiting for a slot. An entry at 0 is kept while its last freed
    /// slot is within the patience, so the next burst sees the webhook's pace.
    users: usize,
    /// When the webhook last freed a slot, or started being used again.
    progress_at: tokio::time::Instant,
    /// When it started being used (again).
    since: tokio::time::Instant,
    /// The slots it freed within the last patience: the pace at which a new waiter
    /// can expect the jobs ahead of it to be served.
    pace: Pace,
}

/// A webhook's freed slots within a window (at most [`PACE_MEMORY`]), oldest first.
/// Where every slot stayed busy from one free to the next (a job was waiting), the gap
/// between them is the receiver's own pace; other gaps also hold moments with nothing
/// to send, and count only when there is nothing better. Over a window, unlike a
/// moving average, one pause of a fast receiver (or of this process) barely moves it.
struct Pace {
    /// How far back frees count (the patience); older ones are forgotten as new ones
    /// come, so a busy webhook below its cap holds only its last window's frees.
    window: Duration,
    /// When each slot was freed, and the gap before it if the webhook was saturated.
    freed: VecDeque<(tokio::time::Instant, Option<Duration>)>,
    /// Sum and number of the saturated gaps in `freed`.
    busy_sum: Duration,
    busy_count: u32,
    /// Every slot stayed busy since the last free (a waiter took it).
    saturated: bool,
}

/// Freed slots remembered per webhook: more jobs than this never wait for one webhook.
const PACE_MEMORY: usize = 4096;
/// Freed slots (or the cap, if smaller) that show a webhook's pace.
const PACE_SAMPLES: usize = 16;

/// A slot for one delivery; released when dropped.
pub struct Permit {
    webhook: WebhookId,
    webhooks: Arc<Mutex<Webhooks>>,
    slot: Option<OwnedSemaphorePermit>,
    cap: usize,
}

impl InFlightLimiter {
    pub fn new(cap: usize, patience: Duration, first_window: Duration) -> Self {
        Self {
            cap,
            patience,
            first_window,
            webhooks: Arc::default(),
        }
    }

    /// A slot, or `None` when the webhook has `cap` deliveries in flight and will not
    /// free one soon: at the pace of the slots it freed within the patience, the jobs
    /// already waiting for it and this one would not be served within the patience; or
    /// it freed none in that time (none since it started being used, beyond the first
    /// window). A job that waits gives up after the patience.
    pub async fn acquire(&self, webhook: &WebhookId) -> Option<Permit> {
        let (slots, deadline) = {
            let mut webhooks = self.webhooks.lock().expect("limiter lock poisoned");
            let now = tokio::time::Instant::now();
            webhooks.sweep(now, self.patience);
            let entry = webhooks
                .entries
                .entry(webhook.clone())
                .or_insert_with(|| Entry {
                    slots: Arc::new(Semaphore::new(self.cap)),
                    users: 0,
                    progress_at: now,
                    since: now,
                    pace: Pace::new(self.patience),
                });
            if entry.users == 0 {
                // Used again after a pause: the slots it freed before still show its
                // pace, but the quiet time counts from now.
                entry.progress_at = now;
                entry.since = now;
            }
            if let Ok(slot) = entry.slots.clone().try_acquire_owned() {
                entry.users += 1;
                return Some(self.permit(webhook, slot));
            }
            entry.pace.forget_before(now);
            let queue = entry.users.saturating_sub(self.cap) + 1;
            // The first few answers of a burst (new connections, a busy machine) show
            // no pace yet: within the first window of its use a webhook with fewer
            // freed slots than that has its jobs wait until the window ends, so a
            // receiver that hangs from the start does not hold waiting jobs for long.
            // Otherwise its pace decides; one that freed none within the patience
            // is stuck.
            let first_window_end = entry.since + self.first_window;
            let waits_until =
                if entry.pace.freed.len() < self.cap.min(PACE_SAMPLES) && now < first_window_end {
                    Some(first_window_end)
                } else {
                    entry
                        .pace
                        .expected_wait(now, entry.since, queue)
                        .is_some_and(|wait| wait <= self.patience)
                        .then_some(now + self.patience)
                };
            let deadline = waits_until?;
            entry.users += 1;
            (entry.slots.clone(), deadline)
        };
        match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
            Ok(Ok(slot)) => Some(self.permit(webhook, slot)),
            _ => {
                let mut webhooks = self.webhooks.lock().expect("limiter lock poisoned");
                if let Some(entry) = webhooks.entries.get_mut(webhook) {
                    entry.users -= 1;
                }
                None
            }
        }
    }

    /// How long the webhook has been at its cap without freeing a slot (zero when it
    /// is not at its cap).
    pub fn stuck_for(&self, webhook: &WebhookId) -> Duration {
        let webhooks = self.webhooks.lock().expect("limiter lock poisoned");
        match webhooks.entries.get(webhook) {
            Some(entry) if entry.slots.available_permits() == 0 => {
                tokio::time::Instant::now() - entry.progress_at
            }
            _ => Duration::ZERO,
        }
    }

    fn permit(&self, webhook: &WebhookId, slot: OwnedSemaphorePermit) -> Permit {
        Permit {
            webhook: webhook.clone(),
            webhooks: self.webhooks.clone(),
            slot: Some(slot),
            cap: self.cap,
        }
    }
}

impl Pace {
    fn new(window: Duration) -> Self {
        Self {
            window,
            freed: VecDeque::new(),
            busy_sum: Duration::ZERO,
            busy_count: 0,
            saturated: false,
        }
    }

    fn record(&mut self, now: tokio::time::Instant) {
        self.forget_before(now);
        let gap = match (self.saturated, self.freed.back()) {
            (true, Some((last, _))) => Some(now - *last),
            _ => None,
        };
        if self.freed.len() == PACE_MEMORY {
            self.pop();
        }
        if let Some(gap) = gap {
            self.busy_sum += gap;
            self.busy_count += 1;
        }
        self.freed.push_back((now, gap));
    }

    fn forget_before(&mut self, now: tokio::time::Instant) {
        while self
            .freed
            .front()
            .is_some_and(|(at, _)| now - *at > self.window)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((_, Some(gap))) = self.freed.pop_front() {
            self.busy_sum -= gap;
            self.busy_count -= 1;
        }
    }

    /// How long the `queue`-th job waiting for a slot can expect to wait: the time
    /// since the last free (or since the webhook started being used again) plus
    /// `queue` times the gap between frees, the saturated gaps if there are any.
    /// `None` without a pace (fewer than two frees).
    fn expected_wait(
        &self,
        now: tokio::time::Instant,
        since: tokio::time::Instant,
        queue: usize,
    ) -> Option<Duration> {
        let queue = u32::try_from(queue).unwrap_or(u32::MAX);
        let (oldest, newest) = (self.freed.front()?.0, self.freed.back()?.0);
        let gap = if self.busy_count > 0 {
            self.busy_sum / self.busy_count
        } else {
            let n = u32::try_from(self.freed.len()).unwrap_or(u32::MAX);
            if n < 2 {
                return None;
            }
            (newest - oldest) / (n - 1)
        };
        let quiet = now - newest.max(since);
        gap.checked_mul(queue)?.checked_add(quiet)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut webhooks = self.webhooks.lock().expect("limiter lock poisoned");
        if let Some(entry) = webhooks.entries.get_mut(&self.webhook) {
            let now = tokio::time::Instant::now();
            entry.pace.record(now);
            entry.progress_at = now;
            entry.users -= 1;
            // With a job waiting, the freed slot is taken at once: every slot stays
            // busy until the next free.
            entry.pace.saturated = entry.users >= self.cap;
            // The slot goes straight to the longest-waiting job, if any.
            drop(self.slot.take());
        }
    }
}

impl Webhooks {
    /// At the mark, drops the entries not in use whose last freed slot is older than
    /// the patience: they have nothing left to tell (one used again is made afresh,
    /// as it would start anyway). Below the mark it costs one comparison.
    fn sweep(&mut self, now: tokio::time::Instant, patience: Duration) {
        if self.entries.len() < self.sweep_at {
            return;
        }
        self.entries
            .retain(|_, e| e.users > 0 || now - e.progress_at <= patience);
        self.sweep_at = (self.entries.len() * 2).max(64);
    }
}

/// Spaces each webhook's attempts at least `1 / rate` apart in this process (a
/// generic cell rate algorithm without burst: each attempt reserves the next free
/// slot). Memory is one instant per webhook that used a slot recently.
#[derive(Clone, Default)]
pub struct RateLimiter {
    next_free: Arc<Mutex<HashMap<WebhookId, Instant>>>,
}

/// What [`RateLimiter::reserve`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved; wait this long, then send.
    Wait(Duration),
    /// The next free slot is further away than the caller would wait: nothing is
    /// reserved and the job should be parked instead.
    Busy,
}

impl RateLimiter {
    /// Reserves the webhook's next slot at `rate` per second if it starts within
    /// `max_wait` of `now`.
    pub fn reserve(
        &self,
        webhook: &WebhookId,
        rate: f64,
        max_wait: Duration,
        now: Instant,
    ) -> Reservation {
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut next_free = self.next_free.lock().expect("rate limiter lock poisoned");
        if next_free.len() > 4096 {
            // Forget webhooks whose slots are all in the past: they are free anyway.
            next_free.retain(|_, at| *at > now);
        }
        let slot = next_free.get(webhook).map_or(now, |at| (*at).max(now));
        let wait = slot - now;
        if wait > max_wait {
            return Reservation::Busy;
        }
        next_free.insert(webhook.clone(), slot + interval);
        Reservation::Wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `n` jobs asking for a slot of `webhook`, one after the other; each ends
    /// with whether it got one.
    async fn queue_jobs(
        limiter: &InFlightLimiter,
        webhook: &WebhookId,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<bool>> {
        let mut jobs = Vec::with_capacity(n);
        for _ in 0..n {
            let (limiter, webhook) = (limiter.clone(), webhook.clone());
            jobs.push(tokio::spawn(async move {
                limiter.acquire(&webhook).await.is_some()
            }));
            tokio::task::yield_now().await;
        }
        jobs
    }

    #[test]
    fn spaces_a_webhooks_attempts_and_parks_beyond_the_wait() {
        let limiter = RateLimiter::default();
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let now = Instant::now();
        let max_wait = Duration::from_millis(250);
        let ms = Duration::from_millis;
        assert_eq!(
            limiter.reserve(&a, 10.0, max_wait, now),
            Reservation::Wait(ms(0))
        );
        assert_eq!(
            limiter.reserve(&a, 10.0, max_wait, now),
            Reservation::Wait(ms(100))
        );
        assert_eq!(
            limiter.reserve(&a, 10.0, max_wait, now),
            Reservation::Wait(ms(200))
        );
        assert_eq!(limiter.reserve(&a, 10.0, max_wait, now), Reservation::Busy);
        assert_eq!(
            limiter.reserve(&b, 10.0, max_wait, now),
            Reservation::Wait(ms(0)),
            "b is not affected"
        );
        // Time passes: the slots free up again, never more than one per interval.
        let later = now + ms(1000);
        assert_eq!(
            limiter.reserve(&a, 10.0, max_wait, later),
            Reservation::Wait(ms(0))
        );
        assert_eq!(
            limiter.reserve(&a, 10.0, max_wait, later),
            Reservation::Wait(ms(100))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn caps_each_webhook_separately_and_releases_on_drop() {
        let ms = Duration::from_millis;
        let limiter = InFlightLimiter::new(2, ms(100), ms(20));
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let first = limiter.acquire(&a).await.unwrap();
        let _second = limiter.acquire(&a).await.unwrap();
        // At its cap and not freeing slots: a job waits out the first window of its
        // use, then is refused; after that (no slot freed in the first window),
        // refused at once.
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire(&a).await.is_none(), "a is at its cap");
        assert_eq!(started.elapsed(), ms(20));
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire(&a).await.is_none());
        assert_eq!(started.elapsed(), ms(0), "a stuck webhook: no waiting");
        assert!(limiter.acquire(&b).await.is_some(), "b is not affected");
        drop(first);
        assert!(limiter.acquire(&a).await.is_some(), "a slot came back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_webhook_that_frees_slots_keeps_its_jobs_waiting() {
        let ms = Duration::from_millis;
        let limiter = InFlightLimiter::new(1, ms(100), ms(20));
        let a = WebhookId::generate();
        let held = limiter.acquire(&a).await.unwrap();
        let waiter = {
            let limiter = limiter.clone();
            let a = a.clone();
            tokio::spawn(async move { limiter.acquire(&a).await.is_some() })
        };
        tokio::time::sleep(ms(1)).await;
        tokio::time::advance(ms(10)).await;
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter got the freed slot");
        // A webhook whose slots free up every 80 ms: a second waiter would expect to
        // wait about 150 ms, past the patience, and is refused at once.
        // (A second slot stays taken, so the webhook stays in use and at its cap.)
        let limiter = InFlightLimiter::new(2, ms(100), ms(20));
        let _kept = limiter.acquire(&a).await.unwrap();
        let mut slot = limiter.acquire(&a).await;
        for _ in 0..16 {
            tokio::time::advance(ms(80)).await;
            drop(slot.take());
            slot = limiter.acquire(&a).await;
        }
        let first = {
            let limiter = limiter.clone();
            let a = a.clone();
            tokio::spawn(async move { limiter.acquire(&a).await.is_some() })
        };
        tokio::time::sleep(ms(1)).await;
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire(&a).await.is_none());
        assert_eq!(started.elapsed(), ms(0));
        tokio::time::advance(ms(50)).await;
        drop(slot);
        assert!(first.await.unwrap(), "the first waiter was served");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_after_a_short_pause_is_judged_by_the_pace_before_it() {
        let ms = Duration::from_millis;
        let limiter = InFlightLimiter::new(1, ms(100), ms(20));
        let a = WebhookId::generate();
        for _ in 0..10 {
            let slot = limiter.acquire(&a).await.unwrap();
            tokio::time::advance(ms(2)).await;
            drop(slot);
        }
        // Nothing in flight for 30 ms, then a burst whose first answer takes longer
        // than the first window: the next job still waits, as the webhook answered
        // every 2 ms just before.
        tokio::time::advance(ms(30)).await;
        let held = limiter.acquire(&a).await.unwrap();
        tokio::time::advance(ms(25)).await;
        let waiter = {
            let (limiter, a) = (limiter.clone(), a.clone());
            tokio::spawn(async move { limiter.acquire(&a).await.is_some() })
        };
        tokio::time::sleep(ms(1)).await;
        assert!(!waiter.is_finished(), "the job waits for the slot");
        drop(held);
        assert!(waiter.await.unwrap(), "and gets it");
        // A webhook never seen before gets only the first window.
        let b = WebhookId::generate();
        let _held = limiter.acquire(&b).await.unwrap();
        tokio::time::advance(ms(25)).await;
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire(&b).await.is_none());
        assert_eq!(started.elapsed(), ms(0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_answers_of_a_burst_do_not_set_the_pace() {
        let ms = Duration::from_millis;
        let limiter = InFlightLimiter::new(4, ms(100), ms(50));
        let a = WebhookId::generate();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limiter.acquire(&a).await.unwrap());
        }
        // Two answers 7 ms apart: at that pace the 20th waiter would wait 140 ms, but
        // two answers are no pace yet; within the first window they all wait.
        for gap in [5, 7] {
            tokio::time::advance(ms(gap)).await;
            held.remove(0);
            held.push(limiter.acquire(&a).await.unwrap());
        }
        let waiters = queue_jobs(&limiter, &a, 20).await;
        tokio::time::sleep(ms(1)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "every job waits");
        // The burst answers: each waiter is served (and frees its slot at once).
        drop(held);
        for waiter in waiters {
            assert!(waiter.await.unwrap());
        }
    }

    #[test]
    fn the_pace_is_the_saturated_gaps_not_the_moments_with_nothing_to_send() {
        let us = Duration::from_micros;
        let t0 = tokio::time::Instant::from_std(std::time::Instant::now());
        let mut pace = Pace::new(Duration::from_millis(250));
        // 70 answers 0.7 ms apart with jobs waiting (as seen in W1), then nothing to
        // send for 13 ms, then a burst of 276 jobs started 8 ms ago.
        let mut at = t0;
        for _ in 0..70 {
            pace.record(at);
            pace.saturated = true;
            at += us(700);
        }
        pace.saturated = false;
        let since = at + us(13_000);
        let now = since + us(8_000);
        pace.forget_before(now);
        assert_eq!(
            pace.expected_wait(now, since, 276),
            Some(us(700 * 276 + 8_000)),
            "the idle moment does not slow the pace"
        );
        // Without saturated gaps, the gaps between all the frees count.
        let mut idle = Pace::new(Duration::from_millis(250));
        for i in 0..5 {
            idle.record(t0 + us(5_000 * i));
        }
        let now = t0 + us(21_000);
        assert_eq!(idle.expected_wait(now, t0, 3), Some(us(5_000 * 3 + 1_000)));
        let mut one = Pace::new(Duration::from_millis(250));
        one.record(t0);
        assert_eq!(one.expected_wait(now, t0, 1), None, "one free is no pace");
    }

    #[tokio::test(start_paused = true)]
    async fn one_pause_of_a_fast_webhook_does_not_park_its_backlog() {
        let ms = Duration::from_millis;
        let limiter = InFlightLimiter::new(2, ms(250), ms(20));
        let a = WebhookId::generate();
        let _kept = limiter.acquire(&a).await.unwrap();
        let mut slot = limiter.acquire(&a).await;
        // A slot freed every millisecond for 150 ms, then one pause of 30 ms.
        for i in 0..150 {
            tokio::time::advance(ms(if i == 149 { 30 } else { 1 })).await;
            drop(slot.take());
            slot = limiter.acquire(&a).await;
        }
        // A backlog of 100 jobs: at about 1.2 ms per freed slot the last is served in
        // about 120 ms, so each waits (an average of the gaps, 4.6 ms after the pause,
        // would have parked the last half of them).
        let mut waiters = queue_jobs(&limiter, &a, 100).await;
        tokio::time::sleep(ms(1)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "every job of the backlog waits for a slot"
        );
        // 150 more would take longer than the patience: the last is refused at once.
        waiters.extend(queue_jobs(&limiter, &a, 150).await);
        tokio::time::sleep(ms(1)).await;
        assert!(waiters.last().unwrap().is_finished(), "the 250th is parked");
        drop(slot);
    }
}
