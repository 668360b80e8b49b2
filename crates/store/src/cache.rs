//! Short-lived caches in front of hot store reads (a workspace's subscriptions at
//! ingest, a webhook's delivery target at the sender): one query per burst, while a
//! change still applies within the cache's time to live.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before expired ones are swept out.
const SWEEP_ABOVE: usize = 100_000;

pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value if it is younger than the time to live, else what `load`
    /// returns (which is then cached).
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some((at, value)) = self.entries.lock().expect("cache lock poisoned").get(key) {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        let value = load().await?;
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries.len() > SWEEP_ABOVE {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.insert(key.clone(), (Instant::now(), value.clone()));
        Ok(value)
    }

    /// The cached value if it is younger than the time to live.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock poisoned");
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Caches `value` for `key` from now.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries.len() > SWEEP_ABOVE {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Forgets one key, so the next read loads it again.
    pub fn forget(&self, key: &K) {
        self.entries
            .lock()
            .expect("cache lock poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_once_within_the_ttl_and_again_after() {
        let cache: TtlCache<u8, u32> = TtlCache::new(Duration::from_millis(50));
        let loads = std::sync::atomic::AtomicU32::new(0);
        let load =
            || async { Ok::<_, ()>(loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1) };
        assert_eq!(cache.get_or_load(&1, load).await, Ok(1));
        assert_eq!(cache.get_or_load(&1, load).await, Ok(1), "cached");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get_or_load(&1, load).await, Ok(2), "expired");
        cache.forget(&1);
        assert_eq!(cache.get_or_load(&1, load).await, Ok(3), "forgotten");
    }
}
