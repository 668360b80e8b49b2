//! A short-lived cache of each workspace's active subscriptions, so a burst of events
//! for one workspace costs one query. Entries expire after
//! `ingest.subscription_cache_ms`, which bounds how long an API change takes to apply.

use std::sync::Arc;
use std::time::Duration;

use qr3_domain::WorkspaceId;
use qr3_store::{Store, TtlCache, WebhookSummary};

pub struct SubscriptionCache(TtlCache<WorkspaceId, Arc<Vec<WebhookSummary>>>);

impl SubscriptionCache {
    pub fn new(ttl: Duration) -> Self {
        Self(TtlCache::new(ttl))
    }

    pub async fn get(
        &self,
        store: &Store,
        workspace: &WorkspaceId,
    ) -> qr3_store::Result<Arc<Vec<WebhookSummary>>> {
        self.0
            .get_or_load(workspace, || async {
                store.active_subscriptions(workspace).await.map(Arc::new)
            })
            .await
    }
}
