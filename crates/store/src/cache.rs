//! A short-lived cache in front of a hot store read (an active webhook's delivery
//! target at the sender): one query per burst, while a change still applies within the
//! cache's time to live. What goes in is the caller's choice (the sender caches only
//! answers that lead to an attempt).

use std::collections::HashMap;
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
    async fn keeps_a_value_for_its_ttl_until_forgotten() {
        let cache: TtlCache<u8, u32> = TtlCache::new(Duration::from_millis(50));
        assert_eq!(cache.get(&1), None);
        cache.insert(1, 7);
        assert_eq!(cache.get(&1), Some(7), "cached");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get(&1), None, "expired");
        cache.insert(1, 8);
        cache.forget(&1);
        assert_eq!(cache.get(&1), None, "forgotten");
    }
}
