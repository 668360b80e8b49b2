//! The sender role: consumes delivery jobs, signs and POSTs them, writes every attempt to
//! the delivery log in batches, schedules retries through the delay queues and
//! acknowledges each job only after its outcome is durable.

#![forbid(unsafe_code)]

mod admission;
mod headers;
pub mod http;
mod parking;
mod parts;
mod skip;
mod targets;
mod writer;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use qr3_broker::{
    Backoff, Consumer, DeadQueue, Deliveries, DeliveryJob, Fatal, Outgoing, Session, Topology,
    Trigger, Verdict,
};
use qr3_config::Settings;
use qr3_domain::{DeliveryId, TargetPolicy, Timestamp};
use qr3_store::{AttemptDetail, AttemptRecord, AttemptStatus, DeliveryTarget, Store, StoreError};
use qr3_telemetry::Metrics;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use admission::breaker::Outcome;
use admission::{Admission, Admitted};
pub use http::{HttpClient, HttpOutcome};
use parts::Part;
use targets::TargetCache;

/// Everything the sender needs; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: Settings,
    topology: Topology,
    metrics: Metrics,
    targets: TargetCache,
    http: HttpClient,
    admission: Admission,
    rate: admission::gcra::RateLimiter,
}

/// What became of one job before logging.
#[derive(Debug)]
pub enum Attempted {
    /// An attempt was made; this is its log row.
    Made(Box<AttemptRecord>),
    /// No attempt: the webhook is gone or disabled, or the event was already delivered
    /// (the reason is the metric label).
    Skipped(&'static str),
    /// No attempt yet: the webhook's `max_per_second` has no slot soon enough; the job
    /// is parked in the defer queue.
    Parked,
}

impl Sender {
    pub fn new(store: Store, settings: Settings, metrics: Metrics) -> anyhow::Result<Self> {
        let topology = Topology::from_settings(&settings);
        let delivery = &settings.delivery;
        if delivery.rate_limit_share.is_some() {
            tracing::warn!("delivery.rate_limit_share is deprecated and ignored: max_per_second holds across every sender");
        }
        if delivery.admission_wait_ms.is_some() {
            tracing::warn!("delivery.admission_wait_ms is deprecated and ignored: a job waits for its webhook's slot as long as it is expected to be served within delivery.defer_ms");
        }
        let admission = Admission::new(admission::Limits {
            cap: delivery.max_in_flight_per_webhook,
            // Waiting longer would make a job later than parking it.
            wait: delivery.defer(),
            // The longest a healthy attempt holds its slot: the rate limit's wait (at
            // most defer_ms) and the request (at most timeout_ms).
            stall: delivery.timeout() + delivery.defer(),
            rules: admission::breaker::Rules {
                trips: delivery.breaker_timeouts,
                backoff: delivery.defer(),
                last_step: qr3_broker::topology::DEFER_STEPS - 1,
            },
        });
        let targets = TargetCache::new(Duration::from_millis(settings.delivery.webhook_cache_ms));
        let http = HttpClient::new(
            settings.delivery.timeout(),
            settings.delivery.allow_private_targets,
            settings.delivery.response_body_bytes,
            // At most delivery.concurrency requests are in flight, so at most that many
            // connections to one host are busy at once: all of them are kept, so a burst
            // to many webhooks on one host (one platform's per-customer paths) reuses
            // them instead of connecting again.
            settings.delivery.concurrency,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                settings,
                topology,
                metrics,
                targets,
                http,
                admission,
                rate: admission::gcra::RateLimiter::default(),
            }),
        })
    }

    /// Consumes until `shutdown`, reconnecting whenever the broker connection is lost.
    /// On shutdown it stops consuming, finishes in-flight deliveries, flushes the log
    /// and acknowledges before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        let metrics = &inner.metrics;
        // Prefetch = delivery.concurrency: at most that many unacknowledged messages
        // (single jobs or bundles) per process, which bounds memory and what a crash
        // hands back to the broker for redelivery. At most delivery.concurrency jobs
        // are in flight or waiting for their log batch (`slots`).
        let prefetch = u16::try_from(inner.settings.delivery.concurrency).unwrap_or(u16::MAX);
        Consumer::new(&inner.settings, "sender", DeadQueue::Deliveries, prefetch)
            .observed_by(metrics)
            .run(&shutdown, move |session, deliveries| {
                let this = self.clone();
                async move { this.consume(session, deliveries).await }
            })
            .await
    }

    /// One session: a task per job, at most `delivery.concurrency` at once, with the
    /// session's log writer and parking task.
    async fn consume(&self, session: Session, deliveries: Deliveries) -> anyhow::Result<()> {
        let inner = &self.inner;
        let hold = session.hold().clone();
        let publisher = session.publisher().clone();
        // `died`: the log writer or the parking task stopped (they only stop once every
        // handle is dropped, after this loop): nothing could settle what this consumer
        // holds, so the session ends as `Fatal` and the process exits to be restarted.
        let died = CancellationToken::new();
        let (writer, writer_task) =
            writer::spawn(self.clone(), publisher.clone(), hold.clone(), died.clone());
        let (parking, parking_task) =
            parking::spawn(self.clone(), publisher.clone(), hold.clone(), died.clone());
        let outlets = Arc::new(Outlets {
            writer,
            parking,
            shutdown: hold.shutdown.clone(),
        });
        let tracker = TaskTracker::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            inner.settings.delivery.concurrency,
        ));
        let mut deliveries = std::pin::pin!(deliveries.take_until(died.cancelled()));
        while let Some((delivery, settle)) = deliveries.next().await {
            let jobs = match qr3_broker::read_jobs(&delivery.properties, &delivery.data) {
                Ok(jobs) => jobs,
                Err(invalid) => {
                    // Parked with the reason rather than retried forever.
                    tracing::warn!(error = %invalid, "delivery job dead-lettered");
                    let session = session.clone();
                    tracker.spawn(async move {
                        let verdict = Verdict::new("invalid_job", invalid);
                        session.dead_letter(delivery, settle, &verdict).await
                    });
                    continue;
                }
            };
            let origin = Origin {
                deferrals: qr3_broker::deferrals(&delivery.properties),
                failures: qr3_broker::failures(&delivery.properties),
                redelivered: delivery.redelivered,
            };
            let parts = Part::split(settle, jobs.len());
            for (job, part) in jobs.into_iter().zip(parts) {
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = died.cancelled() => break,
                };
                let this = self.clone();
                let outlets = outlets.clone();
                tracker.spawn(async move {
                    this.inner.metrics.deliveries_in_flight.inc();
                    this.handle(job, origin, part, &outlets).await;
                    this.inner.metrics.deliveries_in_flight.dec();
                    drop(slot);
                });
            }
        }
        tracker.close();
        drop(outlets);
        if died.is_cancelled() {
            // What the dead task held can no longer be settled; the broker hands it
            // out again once this process is gone.
            tracing::error!(
                "an internal task of the sender stopped; ending the process so it is restarted"
            );
            return Err(Fatal("the sender's log writer or parking task stopped".into()).into());
        }
        tracker.wait().await;
        writer_task.await.context("the log writer panicked")?;
        parking_task.await.context("the parking task panicked")?;
        Ok(())
    }

    /// One job, in one direction: admission (breaker, bulkhead), then the attempt, then
    /// its outcome (logged, parked or failed). Every path through here settles the
    /// job's part exactly once (ack, or requeue): an unsettled job would hold back the
    /// acknowledgement of every later one.
    async fn handle(&self, job: DeliveryJob, origin: Origin, part: Part, outlets: &Outlets) {
        let inner = &self.inner;
        // 1. Admission: a slot of the webhook's bulkhead, or the defer queue the breaker
        // (or a wait that ran out) says.
        let permit = match inner.admission.admit(&job.webhook_id).await {
            Admitted::Slot(permit) => permit,
            Admitted::Park(step) => {
                let parked = parking::Parked {
                    job,
                    part,
                    deferrals: step,
                    failures: origin.failures,
                };
                return outlets.parking.park(parked).await;
            }
        };
        // Boxed: the attempt's state (its lookups, the request, the log hand-over) is
        // most of a job task's size, and a job waiting in its webhook's bulkhead queue
        // need not carry it; nor does spawning a job copy it.
        Box::pin(self.serve(job, origin, part, permit, outlets)).await;
    }

    /// Steps 2 and 3 of [`Sender::handle`], for a job admitted to a slot.
    async fn serve(
        &self,
        job: DeliveryJob,
        origin: Origin,
        part: Part,
        permit: admission::Permit,
        outlets: &Outlets,
    ) {
        let inner = &self.inner;
        let Outlets {
            writer,
            parking,
            shutdown,
        } = outlets;
        // 2. The attempt. A job back from a defer queue may have a twin (its bundle was
        // requeued after it was parked): like a redelivered one, it is checked against
        // the log first.
        let recheck = origin.redelivered || origin.deferrals > 0 || origin.failures > 0;
        let attempted = self.attempt_holding(&job, recheck, shutdown).await;
        permit.finish(breaker_outcome(
            &attempted,
            inner.settings.delivery.timeout(),
        ));
        // 3. The outcome.
        match attempted {
            // The rate limit had no slot within delivery.defer_ms: it knows the next
            // one is near, so the shortest wait.
            Ok(Attempted::Parked) => {
                parking
                    .park(parking::Parked {
                        job,
                        part,
                        deferrals: 0,
                        failures: origin.failures,
                    })
                    .await
            }
            Ok(attempted) => {
                writer
                    .submit(writer::Pending {
                        job,
                        attempted,
                        part,
                    })
                    .await
            }
            // Stopping while the database is away: the broker hands the job out again.
            Err(JobFailure::Stopping) => part.requeue().await,
            // Something about this job alone: it waits on a defer queue, and after
            // delivery.job_failure_limit failures it is dead-lettered by itself.
            Err(JobFailure::Job(error)) => {
                parking
                    .fail(parking::Failed {
                        job,
                        part,
                        failures: origin.failures.saturating_add(1),
                        error,
                    })
                    .await
            }
        }
    }

    /// [`Sender::attempt`], holding the job while the database is unavailable (backing
    /// off, in the process) and turning anything else that stops it, a panic included,
    /// into a failure of this job alone.
    async fn attempt_holding(
        &self,
        job: &DeliveryJob,
        recheck: bool,
        shutdown: &CancellationToken,
    ) -> Result<Attempted, JobFailure> {
        use futures_util::FutureExt;
        let mut backoff = Backoff::dependency();
        loop {
            let attempt = std::panic::AssertUnwindSafe(self.attempt(job, recheck)).catch_unwind();
            let error = match attempt.await {
                Ok(Ok(attempted)) => return Ok(attempted),
                Ok(Err(error)) if error.is_unavailable() => error,
                Ok(Err(error)) => return Err(JobFailure::Job(format!("{error:#}"))),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    return Err(JobFailure::Job(format!("panicked: {what}")));
                }
            };
            self.inner
                .metrics
                .dependency_waits_total
                .with_label_values(&["database"])
                .inc();
            let error = format!("{error:#}");
            if backoff.worth_logging(&error) {
                tracing::error!(%error, webhook_id = %job.webhook_id, tries = backoff.tries(),
                    "cannot look the webhook up; holding the job until the database answers");
            }
            if !backoff.wait(shutdown).await {
                return Err(JobFailure::Stopping);
            }
        }
    }

    /// Jobs that each carry their own payload (retries, parked jobs), packed into
    /// messages for `queue` like ingest's.
    fn pack<'a>(
        &self,
        queue: String,
        jobs: impl IntoIterator<Item = &'a DeliveryJob>,
    ) -> Vec<Outgoing> {
        let settings = &self.inner.settings.ingest;
        let mut packer =
            qr3_broker::Packer::new(settings.jobs_per_message, settings.max_event_bytes);
        for job in jobs {
            packer.push_event([job], &job.body);
        }
        packer.into_messages(&queue)
    }

    /// Makes (or skips, or parks) one attempt of `job`, in steps: the target and the
    /// skip rule, the rate limit, the request, the log row. Logging, retrying and
    /// acknowledging are the writer's job. `recheck`: the job may have been delivered
    /// already (the broker handed it out before, a sender having stopped or a bundle
    /// having been requeued after some of its jobs were delivered; or it was parked and
    /// may have a twin), so the log is checked first.
    pub async fn attempt(&self, job: &DeliveryJob, recheck: bool) -> Result<Attempted, StoreError> {
        let target = match self.target(job, recheck).await? {
            Ok(target) => target,
            Err(skip) => {
                self.inner
                    .metrics
                    .deliveries_skipped_total
                    .with_label_values(&[skip.label()])
                    .inc();
                tracing::info!(webhook_id = %job.webhook_id, event_id = %job.event_id, reason = skip.label(), "delivery skipped");
                return Ok(Attempted::Skipped(skip.label()));
            }
        };
        if !self.pace(job, &target).await? {
            return Ok(Attempted::Parked);
        }
        let id = DeliveryId::generate();
        let now = Timestamp::now();
        let (outcome, sent) = self.send(job, &target, &id, now).await;
        Ok(Attempted::Made(Box::new(
            self.record(job, &target, id, now, outcome, sent),
        )))
    }

    /// The webhook's delivery target, or why the job gets no attempt (`skip.rs`).
    async fn target(
        &self,
        job: &DeliveryJob,
        recheck: bool,
    ) -> Result<Result<Arc<DeliveryTarget>, skip::Skip>, StoreError> {
        let inner = &self.inner;
        let target = inner.targets.get(&inner.store, &job.webhook_id).await?;
        let (exists, is_active) = target
            .as_ref()
            .map_or((false, false), |t| (true, t.is_active));
        if let Some(skip) = skip::by_webhook(exists, is_active, job.trigger) {
            return Ok(Err(skip));
        }
        if skip::needs_log_check(job, recheck)
            && inner
                .store
                .event_delivered(&job.webhook_id, &job.event_id)
                .await?
        {
            return Ok(Err(skip::Skip::AlreadyDelivered));
        }
        Ok(Ok(target.expect("an existing target")))
    }

    /// The webhook's `max_per_second` (not for pings): waits for its next send window
    /// when it opens within `delivery.defer_ms`; `false` when there is none that soon
    /// (park). A job whose timer wakes past its window's end takes another one, within
    /// the same overall wait.
    async fn pace(&self, job: &DeliveryJob, target: &DeliveryTarget) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let (Some(rate), false) = (target.max_per_second, job.trigger == Trigger::Ping) else {
            return Ok(true);
        };
        let deadline = Instant::now() + inner.settings.delivery.defer();
        let mut waited = false;
        loop {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let reservation = inner
                .rate
                .reserve(&inner.store, &job.webhook_id, rate, max_wait)
                .await?;
            let admission::gcra::Reservation::Slot(window) = reservation else {
                if !waited {
                    inner.metrics.deliveries_rate_limited_total.inc();
                }
                return Ok(false);
            };
            if window.start > Instant::now() {
                if !waited {
                    inner.metrics.deliveries_rate_limited_total.inc();
                    waited = true;
                }
                tokio::time::sleep_until(window.start).await;
            }
            if window.admits(Instant::now()) {
                return Ok(true);
            }
        }
    }

    /// The signed POST, and the headers it carried as the log keeps them.
    async fn send(
        &self,
        job: &DeliveryJob,
        target: &DeliveryTarget,
        id: &DeliveryId,
        now: Timestamp,
    ) -> (HttpOutcome, Vec<(String, String)>) {
        let inner = &self.inner;
        let policy = TargetPolicy {
            require_https: false,
            allow_private: inner.settings.delivery.allow_private_targets,
        };
        // Checked again at send time: the policy may be stricter than when it was stored.
        if let Err(refused) = policy.admits(&target.url) {
            let outcome = HttpOutcome {
                status: None,
                elapsed: Duration::ZERO,
                error: Some(refused.to_string()),
                body: None,
            };
            return (outcome, Vec::new());
        }
        let headers = headers::signed(job, id, now, &target.secret, target.signing_secrets(now));
        let logged = headers::logged(&headers);
        let outcome = inner
            .http
            .post(
                target.url.as_str(),
                headers,
                Bytes::copy_from_slice(&job.body),
            )
            .await;
        (outcome, logged)
    }

    /// The attempt's log row, and its metrics.
    fn record(
        &self,
        job: &DeliveryJob,
        target: &DeliveryTarget,
        id: DeliveryId,
        now: Timestamp,
        outcome: HttpOutcome,
        sent_headers: Vec<(String, String)>,
    ) -> AttemptRecord {
        let inner = &self.inner;
        let status = if outcome.is_success() {
            AttemptStatus::Success
        } else {
            AttemptStatus::Failed
        };
        // `error` is for failures without a response; a status code speaks for itself.
        let error = outcome.error.clone();
        let attempt_label = match job.trigger {
            Trigger::Ping => Cow::Borrowed("ping"),
            Trigger::Manual | Trigger::Resend => Cow::Borrowed("manual"),
            Trigger::Event => attempt_label(job.attempt),
        };
        inner
            .metrics
            .delivery_attempts_total
            .with_label_values(&[status.as_str(), &attempt_label])
            .inc();
        inner
            .metrics
            .delivery_response_seconds
            .observe(outcome.elapsed.as_secs_f64());
        // A manual resend of an old event is not pipeline lag (it would page on-call).
        if !matches!(job.trigger, Trigger::Manual | Trigger::Resend) {
            let lag = (now.unix_millis() - job.event_created.unix_millis()).max(0) as f64 / 1000.0;
            inner.metrics.delivery_lag_seconds.observe(lag);
        }
        tracing::debug!(webhook_id = %job.webhook_id, event_id = %job.event_id, delivery_id = %id, attempt = job.attempt,
            status = status.as_str(), status_code = outcome.status, "delivery attempted");
        AttemptRecord {
            id,
            webhook_id: job.webhook_id.clone(),
            workspace_id: target.workspace_id.clone(),
            event_id: job.event_id.clone(),
            event_type: job.event_type,
            status,
            status_code: outcome.status,
            response_time_ms: u32::try_from(outcome.elapsed.as_millis()).unwrap_or(u32::MAX),
            attempt: job.attempt,
            trigger: job.trigger.logged(),
            error,
            created_at: now,
            detail: Some(AttemptDetail {
                request_headers: sent_headers,
                request_body: String::from_utf8_lossy(&job.body).into_owned(),
                // Postgres text cannot hold NUL; a receiver's body may.
                response_body: outcome
                    .body
                    .as_ref()
                    .map(|body| String::from_utf8_lossy(body).replace('\0', "\u{fffd}")),
            }),
        }
    }
}

/// The `attempt` label of an event's attempt: its number, without formatting one for
/// the usual first attempts.
fn attempt_label(attempt: u16) -> Cow<'static, str> {
    const FIRST: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match FIRST.get(usize::from(attempt)) {
        Some(label) => Cow::Borrowed(label),
        None => Cow::Owned(attempt.to_string()),
    }
}

/// What the breaker learns from one attempt: a request that got no response within
/// the whole `timeout` timed out; any other attempt made was answered; a job skipped
/// because its webhook is deleted or disabled says the webhook is gone.
fn breaker_outcome(attempted: &Result<Attempted, JobFailure>, timeout: Duration) -> Outcome {
    match attempted {
        Ok(Attempted::Made(row))
            if row.status_code.is_none()
                && u128::from(row.response_time_ms) >= timeout.as_millis() =>
        {
            Outcome::TimedOut
        }
        Ok(Attempted::Made(_)) => Outcome::Answered,
        Ok(Attempted::Skipped(label)) if *label != skip::Skip::AlreadyDelivered.label() => {
            Outcome::Gone
        }
        _ => Outcome::NotSent,
    }
}

/// Why a job could not be attempted.
#[derive(Debug)]
enum JobFailure {
    /// Something about this job alone (its webhook row or secret unreadable, a panic).
    Job(String),
    /// The process is stopping while the job waited for the database.
    Stopping,
}

/// A named fault-injection point, for tests of what happens when an internal task dies
/// (the `failpoints` feature: `fail::cfg("<amqp.prefix>/<name>", "panic")`). Without the
/// feature it is nothing.
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(prefix: &str, name: &str) {
    fail::fail_point!(&format!("{prefix}/{name}"));
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_prefix: &str, _name: &str) {}

/// Where a job's task hands its outcome: the session's log writer and parking task, and
/// the process's shutdown (which ends a wait for the database). One per session, shared.
struct Outlets {
    writer: writer::Handle,
    parking: parking::Handle,
    shutdown: CancellationToken,
}

/// Where a job came from: what its message says besides the job itself.
#[derive(Debug, Clone, Copy)]
struct Origin {
    /// Times the message was parked in a defer queue.
    deferrals: u32,
    /// Times its job failed before an attempt could be made (a single-job message).
    failures: u32,
    /// The broker delivered the message before.
    redelivered: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use qr3_domain::{EventId, EventType, WebhookId, WorkspaceId};

    fn made(status_code: Option<u16>, response_time_ms: u32) -> Result<Attempted, JobFailure> {
        Ok(Attempted::Made(Box::new(AttemptRecord {
            id: DeliveryId::generate(),
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::generate(),
            event_type: EventType::QrScanned,
            status: AttemptStatus::Failed,
            status_code,
            response_time_ms,
            attempt: 1,
            trigger: Trigger::Event,
            error: None,
            created_at: Timestamp::now(),
            detail: None,
        })))
    }

    #[test]
    fn attempt_labels_are_the_attempt_number() {
        for attempt in [1, 2, 9, 10, 11, 250, u16::MAX] {
            assert_eq!(attempt_label(attempt), attempt.to_string());
        }
    }

    #[test]
    fn only_an_attempt_without_a_response_for_the_whole_timeout_is_a_timeout() {
        let timeout = Duration::from_millis(1000);
        assert_eq!(
            breaker_outcome(&made(None, 1000), timeout),
            Outcome::TimedOut
        );
        assert_eq!(
            breaker_outcome(&made(None, 3), timeout),
            Outcome::Answered,
            "a refused connection is an answer: it holds no slot"
        );
        assert_eq!(
            breaker_outcome(&made(Some(500), 1200), timeout),
            Outcome::Answered,
            "a 500 is the receiver answering"
        );
        assert_eq!(
            breaker_outcome(
                &Ok(Attempted::Skipped(skip::Skip::WebhookDeleted.label())),
                timeout
            ),
            Outcome::Gone
        );
        assert_eq!(
            breaker_outcome(
                &Ok(Attempted::Skipped(skip::Skip::WebhookDisabled.label())),
                timeout
            ),
            Outcome::Gone
        );
        assert_eq!(
            breaker_outcome(
                &Ok(Attempted::Skipped(skip::Skip::AlreadyDelivered.label())),
                timeout
            ),
            Outcome::NotSent
        );
        assert_eq!(
            breaker_outcome(&Ok(Attempted::Parked), timeout),
            Outcome::NotSent
        );
        assert_eq!(
            breaker_outcome(&Err(JobFailure::Stopping), timeout),
            Outcome::NotSent
        );
    }
}
