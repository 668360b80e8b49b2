//! A short-lived cache of active delivery targets (URL, secrets, `max_per_second`), so a
//! burst to one webhook costs one query while an edit still applies within
//! `delivery.webhook_cache_ms`.
//!
//! Invariant: only answers that lead to an attempt are cached. "Deleted" and "disabled"
//! are always read from Postgres for the job at hand, so a job is never skipped on a
//! stale answer: a webhook re-enabled a moment ago gets its next event.

use std::sync::Arc;
use std::time::Duration;

use qr3_domain::WebhookId;
use qr3_store::{DeliveryTarget, Store, TtlCache};

pub struct TargetCache(TtlCache<WebhookId, Arc<DeliveryTarget>>);

impl TargetCache {
    pub fn new(ttl: Duration) -> Self {
        Self(TtlCache::new(ttl))
    }

    /// The target, or `None` when the webhook no longer exists. An active target may
    /// come from the cache; an inactive one or `None` is always fresh.
    pub async fn get(
        &self,
        store: &Store,
        id: &WebhookId,
    ) -> qr3_store::Result<Option<Arc<DeliveryTarget>>> {
        if let Some(target) = self.0.get(id) {
            return Ok(Some(target));
        }
        let target = store.delivery_target(id).await?.map(Arc::new);
        match &target {
            Some(active) if active.is_active => self.0.insert(id.clone(), active.clone()),
            _ => self.0.forget(id),
        }
        Ok(target)
    }

    /// Forgets a webhook, e.g. after this process disabled it.
    pub fn forget(&self, id: &WebhookId) {
        self.0.forget(id);
    }
}
