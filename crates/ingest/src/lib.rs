//! The ingest role: consumes domain events from the events exchange, dead-letters the
//! ones it cannot read, de-duplicates by event id, and publishes one delivery job per
//! subscribed active webhook, acknowledging an event only once every job is confirmed.
//! The jobs of a batch cross the broker packed into bundles (`ingest.jobs_per_message`).
//!
//! Events are handled in batches of whatever the broker has ready (up to the prefetch):
//! one claim statement, one confirmed publish round and one finish statement per batch,
//! so the per-event cost under load is a fraction of a database round-trip.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::BasicProperties;
use qr3_broker::{
    Backoff, Consumer, DeadQueue, Deliveries, DeliveryJob, IncomingEvent, Outgoing, Packer,
    Publisher, Rejection, Session, Settlement, Topology, Trigger, Verdict,
};
use qr3_config::Settings;
use qr3_store::{ClaimOutcome, EventKey, Store};
use qr3_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

/// How long an unfinished claim protects an event from a second ingest worker.
const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// Job messages published per confirm round.
const PUBLISH_CHUNK: usize = 1000;

/// Everything the ingest role needs; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: Settings,
    topology: Topology,
    metrics: Metrics,
    /// Webhook rows already reported as unreadable (logged once each, counted always).
    reported: Mutex<HashSet<String>>,
}

/// What happened to one event message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fanned out to this many webhooks (jobs confirmed by the broker).
    FannedOut(usize),
    /// Already fanned out before (or twice in one batch): acknowledged, not published.
    Duplicate,
    /// Another worker is fanning it out right now: held, and processed again once that
    /// worker has finished or its claim has lapsed.
    Busy,
    /// Its workspace does not exist (never created, or deleted): acknowledged and
    /// counted, never fanned out.
    UnknownWorkspace,
    /// Moved to the dead-letter queue for this reason.
    Rejected(&'static str),
}

/// What earlier tries of a held batch did.
#[derive(Default)]
struct Progress {
    /// Claims this worker took for the batch and has not finished.
    claims: HashSet<(qr3_domain::WorkspaceId, qr3_domain::EventId)>,
    /// The batch's unreadable messages are on the dead-letter queue already.
    dead_lettered: bool,
    /// The last try's claim statement failed without an answer: the unfinished claims
    /// of the batch's events may be its own. (Taking over another worker's claim
    /// instead can only fan an event out twice, never lose it.)
    claim_unanswered: bool,
}

/// One message of a batch: its body and routing key.
pub struct Message<'a> {
    pub body: &'a [u8],
    pub routing_key: &'a str,
}

impl Ingest {
    pub fn new(store: Store, settings: Settings, metrics: Metrics) -> Self {
        let topology = Topology::from_settings(&settings);
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                topology,
                metrics,
                reported: Mutex::default(),
            }),
        }
    }

    /// Consumes until `shutdown`, reconnecting to the broker whenever the connection is
    /// lost. In-flight batches finish before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        let metrics = &inner.metrics;
        // The prefetch bounds how many unacknowledged events this process holds: its
        // memory, its largest batch, and what is redelivered if it dies.
        Consumer::new(
            &inner.settings,
            "ingest",
            DeadQueue::Ingest,
            inner.settings.amqp.prefetch,
        )
        .observed_by(metrics)
        .run(&shutdown, move |session, deliveries| {
            let this = self.clone();
            async move {
                this.consume(session, deliveries).await;
                Ok(())
            }
        })
        .await
    }

    /// One session: batches of whatever the broker has ready, several at once.
    async fn consume(&self, session: Session, deliveries: Deliveries) {
        let inner = &self.inner;
        let batch_size = usize::from(inner.settings.amqp.prefetch).max(1);
        deliveries
            .ready_chunks(batch_size)
            .for_each_concurrent(inner.settings.ingest.concurrency, |batch| {
                let session = &session;
                async move { self.handle(session, batch).await }
            })
            .await;
    }

    /// Processes one batch and settles every message of it. Nothing is handed back to the
    /// broker to wait (each return counts towards the queue's delivery limit): while the
    /// database or broker is away the batch is held and processed again with backoff,
    /// and events another worker is fanning out are held until it has finished or its
    /// claim has lapsed. Only stopping (or a lost channel, when the broker redelivers
    /// anyway) hands messages back.
    async fn handle(&self, session: &Session, batch: Vec<(Delivery, Settlement)>) {
        let inner = &self.inner;
        let publisher = session.publisher();
        let shutdown = &session.hold().shutdown;
        let mut pending = batch;
        let mut progress = Progress::default();
        let mut outage = Backoff::dependency();
        let mut busy = Backoff::new(Duration::from_millis(500), CLAIM_LEASE);
        while !pending.is_empty() {
            let routing_keys: Vec<String> = pending
                .iter()
                .map(|(d, _)| d.routing_key.to_string())
                .collect();
            let views: Vec<Message<'_>> = pending
                .iter()
                .zip(&routing_keys)
                .map(|((d, _), key)| Message {
                    body: &d.data,
                    routing_key: key.as_str(),
                })
                .collect();
            let wait = match self.process_again(publisher, &views, &mut progress).await {
                Ok(outcomes) => {
                    outage.reset();
                    let mut done = Vec::with_capacity(pending.len());
                    let mut still = Vec::new();
                    for ((delivery, settle), outcome) in pending.into_iter().zip(outcomes) {
                        if outcome == Outcome::Busy {
                            still.push((delivery, settle));
                        } else {
                            done.push(settle);
                        }
                    }
                    if let Some(first) = done.first() {
                        let tracker = first.tracker().clone();
                        tracker.ack(done.iter().map(|s| s.tag)).await;
                    }
                    pending = still;
                    if pending.is_empty() {
                        break;
                    }
                    &mut busy
                }
                Err(error) => {
                    if !publisher.channel().status().connected() {
                        // The broker redelivers everything this session held, once it
                        // starts over.
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "broker channel lost mid-batch"
                        );
                        session.hold().broken.cancel();
                        return;
                    }
                    let dependency = if error.downcast_ref::<qr3_store::StoreError>().is_some() {
                        "database"
                    } else {
                        "broker"
                    };
                    inner
                        .metrics
                        .dependency_waits_total
                        .with_label_values(&[dependency])
                        .inc();
                    let error = format!("{error:#}");
                    if outage.worth_logging(&error) {
                        tracing::error!(
                            %error,
                            events = pending.len(),
                            tries = outage.tries(),
                            "cannot ingest events; holding them and trying again"
                        );
                    }
                    &mut outage
                }
            };
            if !wait.wait(shutdown).await {
                for (_, settle) in pending {
                    settle.requeue().await;
                }
                return;
            }
        }
    }

    /// One step: what to do with a batch of event messages, every side effect done and
    /// confirmed before it returns; one outcome per message, in order. Acknowledging
    /// is the caller's job.
    pub async fn process(
        &self,
        publisher: &Publisher,
        messages: &[Message<'_>],
    ) -> anyhow::Result<Vec<Outcome>> {
        self.process_again(publisher, messages, &mut Progress::default())
            .await
    }

    /// [`Ingest::process`] of a batch that may have been tried before: what the earlier
    /// tries did (`progress`) is not done again, and claims they took are this worker's
    /// own, not another worker's fan-out in progress.
    async fn process_again(
        &self,
        publisher: &Publisher,
        messages: &[Message<'_>],
        progress: &mut Progress,
    ) -> anyhow::Result<Vec<Outcome>> {
        let inner = &self.inner;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; messages.len()];
        let mut rejected = Vec::new();
        let mut events: Vec<(usize, IncomingEvent)> = Vec::new();
        let mut seen = HashSet::new();
        for (i, message) in messages.iter().enumerate() {
            match IncomingEvent::parse(message.body, inner.settings.ingest.max_event_bytes) {
                Ok(event) => {
                    if seen.insert((event.workspace_id.clone(), event.id.clone())) {
                        events.push((i, event));
                    } else {
                        inner.metrics.events_duplicate_total.inc();
                        outcomes[i] = Some(Outcome::Duplicate);
                    }
                }
                Err(rejection) => {
                    outcomes[i] = Some(Outcome::Rejected(rejection.reason()));
                    rejected.push((message, rejection));
                }
            }
        }
        if !rejected.is_empty() && !progress.dead_lettered {
            self.dead_letter(publisher, &rejected).await?;
            progress.dead_lettered = true;
        }

        let keys: Vec<EventKey> = events
            .iter()
            .map(|(_, e)| EventKey {
                workspace_id: e.workspace_id.clone(),
                event_id: e.id.clone(),
                event_type: e.event_type,
            })
            .collect();
        // What an earlier try claimed is ours: so is what it may have claimed, when the
        // claim statement failed without an answer (a connection cut after the commit).
        let unanswered = progress.claim_unanswered;
        progress.claim_unanswered = true;
        let mut claims = inner.store.claim_events(&keys, CLAIM_LEASE).await?;
        progress.claim_unanswered = false;
        for (key, claim) in keys.iter().zip(claims.iter_mut()) {
            let id = (key.workspace_id.clone(), key.event_id.clone());
            match claim {
                ClaimOutcome::Claimed => {
                    progress.claims.insert(id);
                }
                ClaimOutcome::InProgress if unanswered || progress.claims.contains(&id) => {
                    *claim = ClaimOutcome::Claimed;
                    progress.claims.insert(id);
                }
                _ => {}
            }
        }
        // The subscriptions of the batch's claimed events, read now (one query): a
        // webhook created or re-enabled before an event was published gets it.
        let workspaces: Vec<&qr3_domain::WorkspaceId> = {
            let mut seen = HashSet::new();
            events
                .iter()
                .zip(&claims)
                .filter(|(_, claim)| **claim == ClaimOutcome::Claimed)
                .map(|((_, e), _)| &e.workspace_id)
                .filter(|w| seen.insert(*w))
                .collect()
        };
        let subscribers = inner
            .store
            .active_subscribers(&workspaces)
            .await
            .context("cannot read subscriptions")?;
        self.report_unreadable(&subscribers.unreadable);
        let queue = inner.topology.deliveries_queue();
        // The batch's jobs, packed into bundles: the broker moves one message for many
        // deliveries, and one event's payload once per bundle whatever its fan-out.
        let mut packer = Packer::new(
            inner.settings.ingest.jobs_per_message,
            inner.settings.ingest.max_event_bytes,
        );
        let mut fanned: Vec<(usize, &EventKey, usize)> = Vec::new();
        for (((i, event), key), claim) in events.iter().zip(&keys).zip(claims) {
            match claim {
                ClaimOutcome::AlreadyDone => {
                    inner.metrics.events_duplicate_total.inc();
                    tracing::info!(event_id = %event.id, "duplicate event ignored");
                    outcomes[*i] = Some(Outcome::Duplicate);
                    continue;
                }
                ClaimOutcome::InProgress => {
                    outcomes[*i] = Some(Outcome::Busy);
                    continue;
                }
                ClaimOutcome::UnknownWorkspace => {
                    inner.metrics.events_unknown_workspace_total.inc();
                    tracing::debug!(event_id = %event.id, workspace_id = %event.workspace_id, "event of an unknown workspace ignored");
                    outcomes[*i] = Some(Outcome::UnknownWorkspace);
                    continue;
                }
                ClaimOutcome::Claimed => {}
            }
            let subscriptions = subscribers.of(&event.workspace_id);
            let targets: Vec<_> = subscriptions
                .iter()
                .filter(|s| s.wants(event.event_type))
                .collect();
            if !targets.is_empty() {
                // Encoded once per event (at parse), whatever the number of webhooks.
                let body = event.payload().as_bytes().to_vec();
                let jobs: Vec<DeliveryJob> = targets
                    .iter()
                    .map(|target| DeliveryJob {
                        webhook_id: target.id.clone(),
                        workspace_id: event.workspace_id.clone(),
                        event_id: event.id.clone(),
                        event_type: event.event_type,
                        event_created: event.created,
                        attempt: 1,
                        trigger: Trigger::Event,
                        body: Vec::new(),
                    })
                    .collect();
                packer.push_event(&jobs, &body);
            }
            fanned.push((*i, key, targets.len()));
        }
        let jobs = packer.jobs();
        let messages = packer.into_messages(&queue);
        for chunk in messages.chunks(PUBLISH_CHUNK) {
            publisher
                .publish_all(chunk)
                .await
                .context("cannot publish delivery jobs")?;
        }
        let finished: Vec<(&EventKey, usize)> =
            fanned.iter().map(|(_, key, n)| (*key, *n)).collect();
        inner.store.finish_events(&finished).await?;
        for (i, key, n) in &fanned {
            outcomes[*i] = Some(Outcome::FannedOut(*n));
            inner
                .metrics
                .events_ingested_total
                .with_label_values(&[key.event_type.as_str()])
                .inc();
            inner.metrics.fanout_webhooks_per_event.observe(*n as f64);
            tracing::debug!(event_id = %key.event_id, event_type = %key.event_type, webhooks = n, "event fanned out");
        }
        inner
            .metrics
            .fanout_jobs_published_total
            .inc_by(jobs as u64);
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every message got an outcome"))
            .collect())
    }

    /// Counts the webhook rows this batch could not fully read, and says each once.
    fn report_unreadable(&self, unreadable: &[qr3_store::Unreadable]) {
        for row in unreadable {
            self.inner
                .metrics
                .webhook_rows_unreadable_total
                .with_label_values(&[row.reason.as_str()])
                .inc();
            let mut reported = self.inner.reported.lock().expect("never poisoned");
            if reported.len() < 10_000 && reported.insert(row.webhook.clone()) {
                tracing::warn!(webhook_id = %row.webhook, reason = ?row.reason,
                    "a webhook row is unreadable in part; fanning out what can be read");
            }
        }
    }

    async fn dead_letter(
        &self,
        publisher: &Publisher,
        rejected: &[(&Message<'_>, Rejection)],
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        let queue = DeadQueue::Ingest.name(&inner.topology);
        let messages: Vec<Outgoing> = rejected
            .iter()
            .map(|(message, rejection)| {
                Verdict::new(rejection.reason(), rejection)
                    .routing_key(message.routing_key)
                    .letter(
                        queue.clone(),
                        BasicProperties::default(),
                        message.body.to_vec(),
                    )
            })
            .collect();
        publisher
            .publish_all(&messages)
            .await
            .context("cannot dead-letter events")?;
        for (message, rejection) in rejected {
            inner
                .metrics
                .events_rejected_total
                .with_label_values(&[rejection.reason()])
                .inc();
            tracing::warn!(reason = rejection.reason(), error = %rejection, routing_key = message.routing_key, "event dead-lettered");
        }
        Ok(())
    }
}
