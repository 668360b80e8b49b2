//! Fair sharing: at most `delivery.max_in_flight_per_webhook` deliveries to one webhook
//! at a time in this process, so a slow or hanging receiver holds a bounded share of the
//! sender's concurrency and the other webhooks keep flowing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;

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
