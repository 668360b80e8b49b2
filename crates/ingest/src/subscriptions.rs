//! A short-lived cache of each workspace's active subscriptions, so a burst of events
//! for one workspace costs one query. Entries expire after
//! `ingest.subscription_cache_ms`, which bounds how long an API change takes to apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qr3_domain::WorkspaceId;
use qr3_store::{Store, WebhookSummary};

type Entry = (Instant, Arc<Vec<WebhookSummary>>);

pub struct SubscriptionCache {
    ttl: Duration,
    entries: Mutex<HashMap<WorkspaceId, Entry>>,
}

impl SubscriptionCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(
        &self,
        store: &Store,
        workspace: &WorkspaceId,
    ) -> qr3_store::Result<Arc<Vec<WebhookSummary>>> {
        if let Some((at, subs)) = self
            .entries
            .lock()
            .expect("cache lock poisoned")
            .get(workspace)
        {
            if at.elapsed() < self.ttl {
                return Ok(subs.clone());
            }
        }
        let subs = Arc::new(store.active_subscriptions(workspace).await?);
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries.len() > 100_000 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(workspace.clone(), (Instant::now(), subs.clone()));
        Ok(subs)
    }
}
