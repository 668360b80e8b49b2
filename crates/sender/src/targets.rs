//! A short-lived cache of delivery targets (URL, secret, active flag), so a burst to one
//! webhook costs one query while an edit or a disable still applies within
//! `delivery.webhook_cache_ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qr3_domain::WebhookId;
use qr3_store::{DeliveryTarget, Store};

type Entry = (Instant, Option<Arc<DeliveryTarget>>);

pub struct TargetCache {
    ttl: Duration,
    entries: Mutex<HashMap<WebhookId, Entry>>,
}

impl TargetCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The target, or `None` when the webhook no longer exists.
    pub async fn get(
        &self,
        store: &Store,
        id: &WebhookId,
    ) -> qr3_store::Result<Option<Arc<DeliveryTarget>>> {
        if let Some((at, target)) = self.entries.lock().expect("cache lock poisoned").get(id) {
            if at.elapsed() < self.ttl {
                return Ok(target.clone());
            }
        }
        let target = store.delivery_target(id).await?.map(Arc::new);
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries.len() > 100_000 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(id.clone(), (Instant::now(), target.clone()));
        Ok(target)
    }

    /// Forgets a webhook, e.g. after this process disabled it.
    pub fn forget(&self, id: &WebhookId) {
        self.entries.lock().expect("cache lock poisoned").remove(id);
    }
}
