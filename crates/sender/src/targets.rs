//! A short-lived cache of delivery targets (URL, secrets, active flag), so a burst to one
//! webhook costs one query while an edit or a disable still applies within
//! `delivery.webhook_cache_ms`.

use std::sync::Arc;
use std::time::Duration;

use qr3_domain::WebhookId;
use qr3_store::{DeliveryTarget, Store, TtlCache};

pub struct TargetCache(TtlCache<WebhookId, Option<Arc<DeliveryTarget>>>);

impl TargetCache {
    pub fn new(ttl: Duration) -> Self {
        Self(TtlCache::new(ttl))
    }

    /// The target, or `None` when the webhook no longer exists.
    pub async fn get(
        &self,
        store: &Store,
        id: &WebhookId,
    ) -> qr3_store::Result<Option<Arc<DeliveryTarget>>> {
        self.0
            .get_or_load(id, || async {
                Ok(store.delivery_target(id).await?.map(Arc::new))
            })
            .await
    }

    /// Forgets a webhook, e.g. after this process disabled it.
    pub fn forget(&self, id: &WebhookId) {
        self.0.forget(id);
    }
}
