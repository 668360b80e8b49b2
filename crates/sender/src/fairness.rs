//! Fair sharing: at most `delivery.max_in_flight_per_webhook` deliveries to one webhook
//! at a time in this process, so a slow or hanging receiver holds a bounded share of the
//! sender's concurrency and the other webhooks keep flowing; and the optional
//! per-webhook `max_per_second`, which spaces attempts out rather than failing them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qr3_domain::WebhookId;

#[derive(Clone)]
pub struct InFlightLimiter {
    cap: usize,
    counts: Arc<Mutex<HashMap<WebhookId, usize>>>,
}

/// A slot for one delivery; released when dropped.
pub struct Permit {
    webhook: WebhookId,
    counts: Arc<Mutex<HashMap<WebhookId, usize>>>,
}

impl InFlightLimiter {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Arc::default(),
        }
    }

    /// A slot, or `None` when the webhook already has `cap` deliveries in flight.
    pub fn try_acquire(&self, webhook: &WebhookId) -> Option<Permit> {
        let mut counts = self.counts.lock().expect("limiter lock poisoned");
        let count = counts.entry(webhook.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Permit {
            webhook: webhook.clone(),
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("limiter lock poisoned");
        if let Some(count) = counts.get_mut(&self.webhook) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.webhook);
            }
        }
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

    #[test]
    fn caps_each_webhook_separately_and_releases_on_drop() {
        let limiter = InFlightLimiter::new(2);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let first = limiter.try_acquire(&a).unwrap();
        let _second = limiter.try_acquire(&a).unwrap();
        assert!(limiter.try_acquire(&a).is_none(), "a is at its cap");
        assert!(limiter.try_acquire(&b).is_some(), "b is not affected");
        drop(first);
        assert!(limiter.try_acquire(&a).is_some(), "a slot came back");
    }
}
