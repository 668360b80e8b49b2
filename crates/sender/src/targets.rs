//! A short-lived cache of active delivery targets (URL, secrets, `max_per_second`), so a
//! burst to one webhook costs one query while an edit still applies within
//! `delivery.webhook_cache_ms`, and batched reads of what it misses: the misses that
//! arrive while earlier reads are in flight are read together, in one query.
//!
//! Invariants:
//! - Only answers that lead to an attempt are cached. "Deleted" and "disabled" are
//!   always read from Postgres for the job at hand, so a job is never skipped on a stale
//!   answer: a webhook re-enabled a moment ago gets its next event.
//! - A batch never fails a job that a read of its own would not: a webhook whose row a
//!   batch could not read, or every webhook of a batch whose query failed or whose
//!   reader stopped, is read again alone.
//!
//! Batching (group commit, as the log writer does for its rows): at most
//! [`READS_IN_FLIGHT`] reads run at once. A miss joins the batch being formed, or starts
//! one and leads it: the leader waits for a free read, takes the batch with every miss
//! that joined it meanwhile, reads it and hands the answer to all of them. When
//! reads are free a batch is one webhook and waits for nothing; in a fan-out burst the
//! misses queue behind the reads in flight and go in a few queries instead of one each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qr3_domain::WebhookId;
use qr3_store::{DeliveryTarget, Store, TtlCache};
use tokio::sync::{watch, Semaphore};

/// Reads of targets in flight at once per sender process: a few, so that a burst's
/// misses batch up behind them while the database pool (`database.pool_size`) keeps
/// connections for the log writer and the other lookups.
const READS_IN_FLIGHT: usize = 4;

pub struct TargetCache {
    cache: TtlCache<WebhookId, Arc<DeliveryTarget>>,
    /// The batch being formed, if any: misses join it until its leader takes it.
    forming: Mutex<Option<Batch>>,
    reads: Semaphore,
    /// Queries made, batched or alone (what the tests count).
    queries: AtomicUsize,
}

/// Misses read together, and where their answer goes.
struct Batch {
    /// Tells a leader's guard its own batch from a later one.
    number: u64,
    ids: Vec<WebhookId>,
    answer: watch::Sender<Option<Arc<Answer>>>,
}

/// What one batch read found: every webhook of the batch whose row was read, `None`
/// when it does not exist. A webhook missing from the map is read again alone.
type Answer = HashMap<WebhookId, Option<Arc<DeliveryTarget>>>;

impl TargetCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: TtlCache::new(ttl),
            forming: Mutex::new(None),
            reads: Semaphore::new(READS_IN_FLIGHT),
            queries: AtomicUsize::new(0),
        }
    }

    /// The target, or `None` when the webhook no longer exists. An active target may
    /// come from the cache; an inactive one or `None` is always fresh.
    pub async fn get(
        &self,
        store: &Store,
        id: &WebhookId,
    ) -> qr3_store::Result<Option<Arc<DeliveryTarget>>> {
        if let Some(target) = self.cache.get(id) {
            return Ok(Some(target));
        }
        if let Some(found) = self.read_batched(store, id).await {
            return Ok(found);
        }
        // Not in the batch's answer: read alone, for this job's own answer or error.
        self.queries.fetch_add(1, Ordering::Relaxed);
        let target = store.delivery_target(id).await?.map(Arc::new);
        self.remember(id, target.as_ref());
        Ok(target)
    }

    /// Forgets a webhook, e.g. after this process disabled it.
    pub fn forget(&self, id: &WebhookId) {
        self.cache.forget(id);
    }

    /// `id`'s target as a batch read it; `None` when the batch has no answer for it.
    async fn read_batched(
        &self,
        store: &Store,
        id: &WebhookId,
    ) -> Option<Option<Arc<DeliveryTarget>>> {
        let (mut answer, leading) = self.join(id);
        if let Some(number) = leading {
            let guard = Leading {
                cache: self,
                number,
                taken: false,
            };
            let _read = self.reads.acquire().await.ok()?;
            let batch = guard.take()?;
            let found = self.read(store, batch.ids).await;
            // Nobody listening (every job of the batch gone) is fine.
            let _ = batch.answer.send(Some(Arc::new(found)));
        }
        let answer = answer.wait_for(Option::is_some).await.ok()?.clone()?;
        answer.get(id).cloned()
    }

    /// Joins the batch being formed, or starts one: the answer to wait for, and the
    /// batch's number when this caller leads it.
    fn join(&self, id: &WebhookId) -> (watch::Receiver<Option<Arc<Answer>>>, Option<u64>) {
        static NUMBERS: AtomicU64 = AtomicU64::new(0);
        let mut forming = self.forming.lock().expect("never poisoned");
        if let Some(batch) = forming.as_mut() {
            batch.ids.push(id.clone());
            return (batch.answer.subscribe(), None);
        }
        let number = NUMBERS.fetch_add(1, Ordering::Relaxed);
        let (answer, receiver) = watch::channel(None);
        *forming = Some(Batch {
            number,
            ids: vec![id.clone()],
            answer,
        });
        (receiver, Some(number))
    }

    /// One query for `ids`; the rows it read, remembered. A failed query answers
    /// nothing (each job reads again alone).
    async fn read(&self, store: &Store, mut ids: Vec<WebhookId>) -> Answer {
        // A burst to one webhook joins its batch once per job.
        ids.sort_unstable();
        ids.dedup();
        self.queries.fetch_add(1, Ordering::Relaxed);
        let rows = match store.delivery_targets(&ids).await {
            Ok(rows) => rows,
            Err(_) => return Answer::new(),
        };
        let mut answer: Answer = ids.into_iter().map(|id| (id, None)).collect();
        for (id, target) in rows {
            match target {
                Ok(target) => {
                    let target = Arc::new(target);
                    self.remember(&id, Some(&target));
                    answer.insert(id, Some(target));
                }
                // Unreadable: left out, so its job reads it alone and fails alone.
                Err(_) => {
                    answer.remove(&id);
                }
            }
        }
        for (id, target) in &answer {
            if target.is_none() {
                self.remember(id, None);
            }
        }
        answer
    }

    fn remember(&self, id: &WebhookId, target: Option<&Arc<DeliveryTarget>>) {
        match target {
            Some(active) if active.is_active => self.cache.insert(id.clone(), active.clone()),
            _ => self.cache.forget(id),
        }
    }
}

/// A batch's leader until it takes its batch: if it is dropped before (its job's task
/// ended while waiting for a read), the batch is taken out unanswered, so its members
/// stop waiting and read alone rather than wait for a leader that is gone.
struct Leading<'a> {
    cache: &'a TargetCache,
    number: u64,
    taken: bool,
}

impl Leading<'_> {
    /// The batch this leader started (`None` only if it was already taken).
    fn take(mut self) -> Option<Batch> {
        self.taken = true;
        let mut forming = self.cache.forming.lock().expect("never poisoned");
        match forming.as_ref() {
            Some(batch) if batch.number == self.number => forming.take(),
            _ => None,
        }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.taken {
            let mut forming = self.cache.forming.lock().expect("never poisoned");
            if forming.as_ref().is_some_and(|b| b.number == self.number) {
                // Dropped outside the lock: its answer's sender closes, and its
                // members read alone.
                let orphan = forming.take();
                drop(forming);
                drop(orphan);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qr3_domain::{Subscriptions, TargetPolicy, WebhookSecret, WebhookUrl, WorkspaceId};
    use qr3_store::NewWebhook;
    use qr3_testkit::TestDb;

    async fn webhook(db: &TestDb, workspace: &WorkspaceId, n: usize) -> WebhookId {
        db.store
            .insert_webhook(
                workspace,
                NewWebhook {
                    url: WebhookUrl::parse(
                        &format!("https://example.com/{n}"),
                        TargetPolicy::default(),
                    )
                    .unwrap(),
                    events: Subscriptions::parse(&["*"]).unwrap(),
                    secret: WebhookSecret::parse(format!("the-secret-of-{n:06}")).unwrap(),
                    max_per_second: None,
                },
            )
            .await
            .unwrap()
            .id
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_misses_is_read_in_batches_each_job_getting_its_own_answer() {
        let db = TestDb::new().await.unwrap();
        let a = db.store.create_workspace("a").await.unwrap();
        let b = db.store.create_workspace("b").await.unwrap();
        let mut hooks = Vec::new();
        for n in 0..60 {
            let workspace = if n % 2 == 0 { &a.id } else { &b.id };
            hooks.push(webhook(&db, workspace, n).await);
        }
        let (broken, disabled, unknown) =
            (hooks[7].clone(), hooks[8].clone(), WebhookId::generate());
        db.query(&format!(
            "UPDATE webhooks SET secret_ciphertext = '\\x00112233'::bytea WHERE id = '{broken}'"
        ))
        .await
        .unwrap();
        db.query(&format!(
            "UPDATE webhooks SET is_active = false WHERE id = '{disabled}'"
        ))
        .await
        .unwrap();
        let cache = Arc::new(TargetCache::new(Duration::from_secs(60)));
        // Every webhook three times (a burst to one webhook), and an unknown one.
        let mut asked: Vec<WebhookId> = hooks
            .iter()
            .chain(hooks.iter())
            .chain(hooks.iter())
            .cloned()
            .collect();
        asked.push(unknown.clone());
        let answers = futures_util::future::join_all(asked.iter().map(|id| {
            let (cache, store) = (cache.clone(), db.store.clone());
            async move { cache.get(&store, id).await }
        }))
        .await;
        for (id, answer) in asked.iter().zip(&answers) {
            match answer {
                Ok(Some(target)) => {
                    assert_eq!(&target.id, id);
                    assert_eq!(target.is_active, *id != disabled);
                    let n = hooks.iter().position(|h| h == id).unwrap();
                    assert_eq!(target.url.as_str(), format!("https://example.com/{n}"));
                    assert_eq!(target.secret.expose(), format!("the-secret-of-{n:06}"));
                }
                Ok(None) => assert_eq!(*id, unknown),
                Err(error) => {
                    assert_eq!(*id, broken, "{error}");
                    assert!(!error.is_unavailable());
                }
            }
        }
        let made = cache.queries.load(Ordering::Relaxed);
        assert!(
            made < 61 / 2,
            "{made} queries for 61 webhooks asked 181 times: the misses were not batched"
        );

        // Active targets come from the cache now; the disabled, broken and unknown ones
        // are read again for every job.
        let before = cache.queries.load(Ordering::Relaxed);
        for id in &hooks {
            let answer = cache.get(&db.store, id).await;
            assert_eq!(answer.is_err(), *id == broken);
        }
        assert!(cache.get(&db.store, &unknown).await.unwrap().is_none());
        let again = cache.queries.load(Ordering::Relaxed) - before;
        // The broken one: its batch of one, then alone.
        assert_eq!(
            again,
            1 + 2 + 1,
            "only the disabled, broken and unknown webhooks"
        );
    }

    #[tokio::test]
    async fn a_leader_gone_before_its_read_leaves_its_batch_to_read_alone() {
        let db = TestDb::new().await.unwrap();
        let ws = db.store.create_workspace("a").await.unwrap();
        let hook = webhook(&db, &ws.id, 1).await;
        let cache = TargetCache::new(Duration::from_secs(60));
        // Every read busy: a leader waits for one, and a member joins its batch.
        let busy: Vec<_> = (0..READS_IN_FLIGHT)
            .map(|_| cache.reads.try_acquire().unwrap())
            .collect();
        let leader = cache.get(&db.store, &hook);
        let mut leader = Box::pin(leader);
        assert!(futures_util::poll!(leader.as_mut()).is_pending());
        let member = cache.get(&db.store, &hook);
        let mut member = Box::pin(member);
        assert!(futures_util::poll!(member.as_mut()).is_pending());
        drop(leader);
        let found = tokio::time::timeout(Duration::from_secs(5), member)
            .await
            .expect("the member does not wait for a leader that is gone")
            .unwrap()
            .unwrap();
        assert_eq!(found.id, hook);
        drop(busy);
    }
}
