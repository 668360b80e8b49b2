//! The ingest role: consumes domain events from the events exchange, dead-letters the
//! ones it cannot read, de-duplicates by event id, and publishes one delivery job per
//! subscribed active webhook, acknowledging the event only once every job is confirmed.

#![forbid(unsafe_code)]

mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use qr3_broker::{DeliveryJob, IncomingEvent, Outgoing, Publisher, Rejection, Topology, Trigger};
use qr3_config::Settings;
use qr3_domain::Payload;
use qr3_store::{ClaimOutcome, Store};
use qr3_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use subscriptions::SubscriptionCache;

/// How long an unfinished claim protects an event from a second ingest worker.
const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// Jobs published per confirm round.
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
    /// Consecutive events that failed for want of the database or broker: the pause
    /// before requeueing grows with it, so an outage does not spin the queue.
    failures: std::sync::atomic::AtomicU32,
}

/// What happened to one event message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fanned out to this many webhooks (jobs confirmed by the broker).
    FannedOut(usize),
    /// Already fanned out before: acknowledged without publishing.
    Duplicate,
    /// Another worker is fanning it out right now: requeued.
    Busy,
    /// Moved to the dead-letter queue for this reason.
    Rejected(&'static str),
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
                failures: Default::default(),
            }),
        }
    }

    /// Consumes until `shutdown`, reconnecting to the broker whenever the connection is
    /// lost. In-flight events finish before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        let url = inner.settings.amqp.url.expose().clone();
        while !shutdown.is_cancelled() {
            let Some(connection) =
                qr3_broker::connect_with_retry(&url, "qr3-ingest", &shutdown).await
            else {
                break;
            };
            inner.metrics.broker_connected.set(1);
            match self.consume(&connection, &shutdown).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "ingest lost its broker connection; reconnecting"
                    );
                    inner.metrics.broker_reconnects_total.inc();
                }
            }
            inner.metrics.broker_connected.set(0);
            let _ = connection.close(200, "ingest stopping".into()).await;
            if !shutdown.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
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
        // Prefetch bounds how many unacknowledged events this process holds: its memory
        // and what is redelivered if it dies.
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
                // Manual acknowledgement: an event is acked only after its fan-out is
                // confirmed (no_ack = false is the default).
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("cannot consume the ingest queue")?;
        tracing::info!(queue = %inner.topology.ingest_queue(), "ingest consuming");
        let failed = CancellationToken::new();
        consumer
            .take_until(shutdown.cancelled())
            .take_until(failed.cancelled())
            .for_each_concurrent(inner.settings.ingest.concurrency, |delivery| {
                let publisher = publisher.clone();
                let failed = failed.clone();
                async move {
                    match delivery {
                        Ok(delivery) => self.handle(&publisher, delivery).await,
                        Err(error) => {
                            tracing::warn!(%error, "ingest consumer failed");
                            failed.cancel();
                        }
                    }
                }
            })
            .await;
        if failed.is_cancelled() {
            anyhow::bail!("consumer stream failed");
        }
        Ok(())
    }

    async fn handle(&self, publisher: &Publisher, delivery: lapin::message::Delivery) {
        let outcome = self
            .process(publisher, &delivery.data, &delivery.routing_key.to_string())
            .await;
        let failures = &self.inner.failures;
        if outcome.is_ok() {
            failures.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let result = match outcome {
            Ok(Outcome::Busy) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Ok(_) => delivery.acker.ack(BasicAckOptions::default()).await,
            Err(error) => {
                // Database or broker trouble: the event goes back to the queue, nothing
                // is acknowledged that was not done.
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot ingest event; requeueing"
                );
                tokio::time::sleep(Duration::from_millis(1000)).await;
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "cannot acknowledge an event; the broker will redeliver it");
        }
    }

    /// One step: what to do with one event message, every side effect done and
    /// confirmed before it returns. Acknowledging is the caller's job.
    pub async fn process(
        &self,
        publisher: &Publisher,
        body: &[u8],
        routing_key: &str,
    ) -> anyhow::Result<Outcome> {
        let inner = &self.inner;
        let event = match IncomingEvent::parse(body, inner.settings.ingest.max_event_bytes) {
            Ok(event) => event,
            Err(rejection) => {
                self.dead_letter(publisher, body, routing_key, &rejection)
                    .await?;
                return Ok(Outcome::Rejected(rejection.reason()));
            }
        };
        let claim = inner
            .store
            .claim_event(
                &event.workspace_id,
                &event.id,
                event.event_type,
                CLAIM_LEASE,
            )
            .await?;
        match claim {
            ClaimOutcome::AlreadyDone => {
                inner.metrics.events_duplicate_total.inc();
                tracing::info!(event_id = %event.id, "duplicate event ignored");
                return Ok(Outcome::Duplicate);
            }
            ClaimOutcome::InProgress => return Ok(Outcome::Busy),
            ClaimOutcome::Claimed => {}
        }
        let subscriptions = inner
            .subscriptions
            .get(&inner.store, &event.workspace_id)
            .await?;
        let body = Payload {
            id: &event.id,
            event_type: event.event_type,
            created: event.created,
            data: &event.data,
        }
        .encode();
        let queue = inner.topology.deliveries_queue();
        let jobs: Vec<Outgoing> = subscriptions
            .iter()
            .filter(|s| s.wants(event.event_type))
            .map(|s| {
                let job = DeliveryJob {
                    webhook_id: s.id.clone(),
                    workspace_id: event.workspace_id.clone(),
                    event_id: event.id.clone(),
                    event_type: event.event_type,
                    event_created: event.created,
                    attempt: 1,
                    trigger: Trigger::Event,
                    body: Vec::new(),
                };
                Outgoing {
                    exchange: String::new(),
                    routing_key: queue.clone(),
                    properties: job.properties(),
                    body: body.as_bytes().to_vec(),
                }
            })
            .collect();
        for chunk in jobs.chunks(PUBLISH_CHUNK) {
            publisher
                .publish_all(chunk)
                .await
                .context("cannot publish delivery jobs")?;
        }
        inner
            .store
            .finish_event(&event.workspace_id, &event.id, jobs.len())
            .await?;
        inner
            .metrics
            .events_ingested_total
            .with_label_values(&[event.event_type.as_str()])
            .inc();
        inner
            .metrics
            .fanout_jobs_published_total
            .inc_by(jobs.len() as u64);
        inner
            .metrics
            .fanout_webhooks_per_event
            .observe(jobs.len() as f64);
        tracing::debug!(event_id = %event.id, event_type = %event.event_type, webhooks = jobs.len(), "event fanned out");
        Ok(Outcome::FannedOut(jobs.len()))
    }

    async fn dead_letter(
        &self,
        publisher: &Publisher,
        body: &[u8],
        routing_key: &str,
        rejection: &Rejection,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        let mut headers = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert("x-qr3-reason".into(), text(rejection.reason()));
        headers.insert("x-qr3-error".into(), text(&rejection.to_string()));
        headers.insert("x-qr3-routing-key".into(), text(routing_key));
        let message = Outgoing {
            exchange: String::new(),
            routing_key: inner.topology.ingest_dead_queue(),
            properties: BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
            body: body.to_vec(),
        };
        publisher
            .publish_all(std::slice::from_ref(&message))
            .await
            .context("cannot dead-letter an event")?;
        inner
            .metrics
            .events_rejected_total
            .with_label_values(&[rejection.reason()])
            .inc();
        tracing::warn!(reason = rejection.reason(), error = %rejection, routing_key, "event dead-lettered");
        Ok(())
    }
}
