//! The ingest role: consumes domain events from the events exchange, dead-letters the
//! ones it cannot read, de-duplicates by event id, and publishes one delivery job per
//! subscribed active webhook, acknowledging an event only once every job is confirmed.
//! The jobs of a batch cross the broker packed into bundles (`ingest.jobs_per_message`).
//!
//! Events are handled in batches of whatever the broker has ready (up to the prefetch):
//! one claim statement, one confirmed publish round and one finish statement per batch,
//! so the per-event cost under load is a fraction of a database round-trip.

#![forbid(unsafe_code)]

mod subscriptions;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use qr3_broker::{
    AckTracker, DeliveryJob, IncomingEvent, Outgoing, Packer, Publisher, Rejection, Settlement,
    Topology, Trigger,
};
use qr3_config::Settings;
use qr3_domain::Payload;
use qr3_store::{ClaimOutcome, EventKey, Store};
use qr3_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use subscriptions::SubscriptionCache;

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
    subscriptions: SubscriptionCache,
    /// Consecutive batches that failed for want of the database or broker: the pause
    /// before requeueing grows with it, so an outage does not spin the queue.
    failures: AtomicU32,
}

/// What happened to one event message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fanned out to this many webhooks (jobs confirmed by the broker).
    FannedOut(usize),
    /// Already fanned out before (or twice in one batch): acknowledged, not published.
    Duplicate,
    /// Another worker is fanning it out right now: requeued after a pause.
    Busy,
    /// Its workspace does not exist (never created, or deleted): acknowledged and
    /// counted, never fanned out.
    UnknownWorkspace,
    /// Moved to the dead-letter queue for this reason.
    Rejected(&'static str),
}

/// One message of a batch: its body and routing key.
pub struct Message<'a> {
    pub body: &'a [u8],
    pub routing_key: &'a str,
}

impl Ingest {
    pub fn new(store: Store, settings: Settings, metrics: Metrics) -> Self {
        let topology = Topology::from_settings(&settings);
        let subscriptions =
            SubscriptionCache::new(Duration::from_millis(settings.ingest.subscription_cache_ms));
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                topology,
                metrics,
                subscriptions,
                failures: AtomicU32::new(0),
            }),
        }
    }

    /// Consumes until `shutdown`, reconnecting to the broker whenever the connection is
    /// lost. In-flight batches finish before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        let url = inner.settings.amqp.url.expose().clone();
        let metrics = &inner.metrics;
        qr3_broker::consume_reconnecting(
            &url,
            &format!("qr3-ingest/{}", inner.settings.amqp.prefix),
            &shutdown,
            |link| match link {
                qr3_broker::Link::Up => metrics.broker_connected.set(1),
                qr3_broker::Link::Lost => metrics.broker_reconnects_total.inc(),
                qr3_broker::Link::Down => metrics.broker_connected.set(0),
            },
            |connection| {
                let (this, token) = (self.clone(), shutdown.clone());
                Box::pin(async move { this.consume(connection, &token).await })
            },
        )
        .await;
        Ok(())
    }

    async fn consume(
        &self,
        connection: &lapin::Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        let channel = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        inner
            .topology
            .declare(&channel)
            .await
            .context("cannot declare the broker topology")?;
        // Prefetch bounds how many unacknowledged events this process holds: its memory,
        // its largest batch, and what is redelivered if it dies.
        channel
            .basic_qos(inner.settings.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let publisher = Publisher::open(connection)
            .await
            .context("cannot open the publishing channel")?;
        let consumer = channel
            .basic_consume(
                inner.topology.ingest_queue().into(),
                "".into(),
                // Manual acknowledgement (no_ack = false): an event is acked only after
                // its fan-out is confirmed.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("cannot consume the ingest queue")?;
        tracing::info!(queue = %inner.topology.ingest_queue(), "ingest consuming");
        let failed = CancellationToken::new();
        let batch_size = usize::from(inner.settings.amqp.prefetch).max(1);
        let acks = AckTracker::new(channel.clone());
        consumer
            .take_until(shutdown.cancelled())
            .take_until(failed.cancelled())
            .ready_chunks(batch_size)
            // Registered in delivery order, before any batch can be acknowledged: a
            // multiple ack must never cover an event not yet processed.
            .then(|results| {
                let (acks, failed) = (acks.clone(), failed.clone());
                async move {
                    let mut batch = Vec::with_capacity(results.len());
                    for result in results {
                        match result {
                            Ok(delivery) => {
                                let settle = acks.received(delivery.delivery_tag).await;
                                batch.push((delivery, settle));
                            }
                            Err(error) => {
                                tracing::warn!(%error, "ingest consumer failed");
                                failed.cancel();
                            }
                        }
                    }
                    batch
                }
            })
            .for_each_concurrent(inner.settings.ingest.concurrency, |batch| {
                let publisher = publisher.clone();
                async move {
                    if !batch.is_empty() {
                        self.handle(&publisher, batch).await;
                    }
                }
            })
            .await;
        if failed.is_cancelled() {
            anyhow::bail!("consumer stream failed");
        }
        Ok(())
    }

    /// Processes one batch and settles every message of it (ack, or requeue).
    async fn handle(&self, publisher: &Publisher, batch: Vec<(Delivery, Settlement)>) {
        let messages: Vec<(String, &Delivery)> = batch
            .iter()
            .map(|(d, _)| (d.routing_key.to_string(), d))
            .collect();
        let views: Vec<Message<'_>> = messages
            .iter()
            .map(|(key, d)| Message {
                body: &d.data,
                routing_key: key.as_str(),
            })
            .collect();
        let failures = &self.inner.failures;
        match self.process(publisher, &views).await {
            Ok(outcomes) => {
                failures.store(0, Ordering::Relaxed);
                let busy = outcomes.contains(&Outcome::Busy);
                if busy {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let mut done = Vec::with_capacity(batch.len());
                let mut tracker = None;
                for ((_, settle), outcome) in batch.into_iter().zip(outcomes) {
                    if outcome == Outcome::Busy {
                        settle.requeue().await;
                    } else {
                        done.push(settle.tag);
                        tracker.get_or_insert_with(|| settle.tracker().clone());
                    }
                }
                if let Some(tracker) = tracker {
                    tracker.ack(done).await;
                }
            }
            Err(error) => {
                // Database or broker trouble: the batch goes back to the queue, nothing
                // is acknowledged that was not done.
                let n = failures.fetch_add(1, Ordering::Relaxed).min(9);
                let pause = Duration::from_millis(100 << n).min(Duration::from_secs(30));
                tracing::error!(
                    error = format!("{error:#}"),
                    events = batch.len(),
                    pause_ms = pause.as_millis() as u64,
                    "cannot ingest events; requeueing"
                );
                tokio::time::sleep(pause).await;
                for (_, settle) in batch {
                    settle.requeue().await;
                }
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
        if !rejected.is_empty() {
            self.dead_letter(publisher, &rejected).await?;
        }

        let keys: Vec<EventKey> = events
            .iter()
            .map(|(_, e)| EventKey {
                workspace_id: e.workspace_id.clone(),
                event_id: e.id.clone(),
                event_type: e.event_type,
            })
            .collect();
        let claims = inner.store.claim_events(&keys, CLAIM_LEASE).await?;
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
            let subscriptions = inner
                .subscriptions
                .get(&inner.store, &event.workspace_id)
                .await?;
            let targets: Vec<_> = subscriptions
                .iter()
                .filter(|s| s.wants(event.event_type))
                .collect();
            if !targets.is_empty() {
                // Encoded once per event, whatever the number of webhooks.
                let body = Payload {
                    id: &event.id,
                    event_type: event.event_type,
                    created: event.created,
                    data: &event.data,
                }
                .encode()
                .into_bytes();
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

    async fn dead_letter(
        &self,
        publisher: &Publisher,
        rejected: &[(&Message<'_>, Rejection)],
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let messages: Vec<Outgoing> = rejected
            .iter()
            .map(|(message, rejection)| {
                let mut headers = FieldTable::default();
                headers.insert("x-qr3-reason".into(), text(rejection.reason()));
                headers.insert("x-qr3-error".into(), text(&rejection.to_string()));
                headers.insert("x-qr3-routing-key".into(), text(message.routing_key));
                Outgoing {
                    exchange: String::new(),
                    routing_key: inner.topology.ingest_dead_queue(),
                    properties: BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(headers),
                    body: message.body.to_vec(),
                }
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
