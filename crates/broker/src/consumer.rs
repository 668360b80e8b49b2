//! One consuming role's link to its queue: the reconnecting loop, and in each session
//! the channel, the prefetch window, the topology, the consumer with manual acks, the
//! session's publisher and its held publishing, and dead-lettering what cannot be read.
//! Ingest and the sender say only what they do with the deliveries.
//!
//! A session: connect (another node first after a loss), open the consuming channel,
//! declare the topology, set the prefetch, open the confirm-mode publisher, start
//! consuming, and hand the role its [`Session`] and its [`Deliveries`]. Each delivery
//! arrives with its [`Settlement`], registered with the session's [`AckTracker`] in
//! delivery order before the role sees it, so a multiple ack never covers a message the
//! role has not finished. The deliveries end at shutdown, when the publishing channel
//! is found closed (`Hold::broken`), or when the consumer fails. The role returns once
//! its in-flight work is settled; then the publisher and the channel are closed, before
//! the connection is. A session error that is (or wraps) [`Fatal`] ends the role; any
//! other starts a new session.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use futures_util::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use prometheus::{IntCounter, IntGauge, IntGaugeVec};
use qr3_config::Settings;
use tokio_util::sync::CancellationToken;

use crate::connect::{consume_reconnecting, Fatal, Link};
use crate::dead_letters::{watch_depth, DeadQueue, Verdict};
use crate::hold::Hold;
use crate::publish::{close_channel, Publisher};
use crate::{AckTracker, BrokerTls, Settlement, Topology};

/// What a consuming role consumes and how: built once, then [`Consumer::run`].
pub struct Consumer {
    settings: Settings,
    role: &'static str,
    line: DeadQueue,
    prefetch: u16,
    link: Option<(IntGauge, IntCounter)>,
    depth: Option<IntGaugeVec>,
    waits: Option<IntCounter>,
}

/// What one session gives the role besides its deliveries; cheap to clone.
#[derive(Clone)]
pub struct Session {
    publisher: Publisher,
    hold: Hold,
    dead_queue: String,
}

/// A session's deliveries, each with its settlement, in delivery order.
pub struct Deliveries {
    inner: Pin<Box<dyn Stream<Item = (Delivery, Settlement)> + Send>>,
}

impl Consumer {
    /// The `role` (`ingest`, `sender`: the connection is named `qr3-<role>/<prefix>`)
    /// consuming the main queue that feeds `line`'s dead-letter queue, where it also
    /// dead-letters what it cannot read, holding up to `prefetch` unacknowledged
    /// messages.
    pub fn new(settings: &Settings, role: &'static str, line: DeadQueue, prefetch: u16) -> Self {
        Self {
            settings: settings.clone(),
            role,
            line,
            prefetch,
            link: None,
            depth: None,
            waits: None,
        }
    }

    /// Reports the link: `connected` is 1 while a session runs, `reconnects` counts the
    /// sessions lost to an error.
    pub fn link_metrics(mut self, connected: IntGauge, reconnects: IntCounter) -> Self {
        self.link = Some((connected, reconnects));
        self
    }

    /// Exports the depth of the dead-letter queue as `gauges{queue}` while running
    /// ([`watch_depth`]).
    pub fn dead_letter_depth(mut self, gauges: IntGaugeVec) -> Self {
        self.depth = Some(gauges);
        self
    }

    /// Counts each wait of a held publish ([`Hold::waits`]).
    pub fn dependency_waits(mut self, waits: IntCounter) -> Self {
        self.waits = Some(waits);
        self
    }

    /// Reports to a role's metrics: the link (`qr3_broker_connected`,
    /// `qr3_broker_reconnects_total`), the dead-letter depth, and held publishes'
    /// waits (`qr3_dependency_waits_total{dependency="broker"}`).
    pub fn observed_by(self, metrics: &qr3_telemetry::Metrics) -> Self {
        self.link_metrics(
            metrics.broker_connected.clone(),
            metrics.broker_reconnects_total.clone(),
        )
        .dead_letter_depth(metrics.dead_letters.clone())
        .dependency_waits(
            metrics
                .dependency_waits_total
                .with_label_values(&["broker"]),
        )
    }

    /// Consumes until `shutdown`, a session at a time, calling `role` with each
    /// session and its deliveries. `role` must return once its deliveries end, after
    /// settling its in-flight work, or with a [`Fatal`] error to end the process.
    pub async fn run<F, Fut>(self, shutdown: &CancellationToken, role: F) -> anyhow::Result<()>
    where
        F: Fn(Session, Deliveries) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let settings = &self.settings;
        if let Some(gauges) = &self.depth {
            watch_depth(settings, self.line, gauges, shutdown);
        }
        let plan = Arc::new(Plan {
            topology: Arc::new(Topology::from_settings(settings)),
            role: self.role,
            line: self.line,
            prefetch: self.prefetch,
            shutdown: shutdown.clone(),
            waits: self.waits.clone(),
        });
        let role = Arc::new(role);
        let name = format!("qr3-{}/{}", self.role, settings.amqp.prefix);
        let link = &self.link;
        consume_reconnecting(
            settings.amqp.url.expose(),
            &name,
            &BrokerTls::from_settings(&settings.amqp),
            shutdown,
            |event| {
                if let Some((connected, reconnects)) = link {
                    match event {
                        Link::Up => connected.set(1),
                        Link::Lost => reconnects.inc(),
                        Link::Down => connected.set(0),
                    }
                }
            },
            |connection| {
                let (plan, role) = (plan.clone(), role.clone());
                Box::pin(async move { plan.session(connection, &*role).await })
            },
        )
        .await
    }
}

/// What every session of a [`Consumer`] is made of.
struct Plan {
    topology: Arc<Topology>,
    role: &'static str,
    line: DeadQueue,
    prefetch: u16,
    shutdown: CancellationToken,
    waits: Option<IntCounter>,
}

impl Plan {
    /// One session on `connection`: set up, the role's part, and the channels closed.
    async fn session<F, Fut>(&self, connection: Arc<Connection>, role: &F) -> anyhow::Result<()>
    where
        F: Fn(Session, Deliveries) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let topology = &self.topology;
        let channel = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        topology
            .declare(&connection)
            .await
            .context("cannot declare the broker topology")?;
        // The prefetch bounds how many unacknowledged messages this process holds: its
        // memory, and what the broker hands out again if it dies.
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let publisher = Publisher::open(&connection)
            .await
            .context("cannot open the publishing channel")?;
        let queue = self.line.feeds_from(topology);
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                // Manual acknowledgement (no_ack = false): a message is acknowledged
                // only once what it asks for is done.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume {queue}"))?;
        tracing::info!(%queue, prefetch = self.prefetch, "{} consuming", self.role);

        let hold = Hold {
            shutdown: self.shutdown.clone(),
            broken: CancellationToken::new(),
            connection,
            topology: topology.clone(),
            waits: self.waits.clone(),
        };
        let failure = Arc::new(Mutex::new(None));
        let deliveries =
            Deliveries::new(consumer, AckTracker::new(channel.clone()), &hold, &failure);
        let session = Session {
            publisher: publisher.clone(),
            hold: hold.clone(),
            dead_queue: self.line.name(topology),
        };
        let ended = role(session, deliveries).await;
        if ended
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<Fatal>().is_some())
        {
            // The process ends: whatever is in flight is the broker's again once the
            // connection closes.
            return ended;
        }
        // Before the connection closes (see `Publisher::close`).
        publisher.close().await;
        close_channel(&channel).await;
        ended?;
        if let Some(error) = failure.lock().expect("never poisoned").take() {
            return Err(error).context("consumer stream failed");
        }
        if hold.broken.is_cancelled() && !hold.shutdown.is_cancelled() {
            anyhow::bail!("the publishing channel closed");
        }
        Ok(())
    }
}

impl Session {
    /// The session's confirm-mode publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishing held through refusals, for this session ([`Hold::publish`]).
    pub fn hold(&self) -> &Hold {
        &self.hold
    }

    /// Parks `delivery` on the dead-letter queue with `verdict` (its headers kept, the
    /// verdict's added), held through refusals, then acknowledges it; hands it back to
    /// the broker if the publish is abandoned (shutdown, or the channel closed).
    pub async fn dead_letter(&self, delivery: Delivery, settlement: Settlement, verdict: &Verdict) {
        let kept = BasicProperties::default()
            .with_headers(delivery.properties.headers().clone().unwrap_or_default());
        let letter = verdict.letter(self.dead_queue.clone(), kept, delivery.data);
        match self
            .hold
            .publish(
                &self.publisher,
                "dead letter",
                std::slice::from_ref(&letter),
            )
            .await
        {
            Ok(()) => settlement.ack().await,
            Err(_abandoned) => settlement.requeue().await,
        }
    }

    /// The dead-letter queue this session's messages go to.
    pub fn dead_queue(&self) -> &str {
        &self.dead_queue
    }
}

impl Deliveries {
    /// `consumer`'s messages until shutdown, the publishing channel is found closed or
    /// the consumer fails (the error kept in `failure`), each registered with `acks`
    /// as it arrives.
    fn new(
        consumer: lapin::Consumer,
        acks: Arc<AckTracker>,
        hold: &Hold,
        failure: &Arc<Mutex<Option<lapin::Error>>>,
    ) -> Self {
        let stream = consumer
            .take_until(hold.shutdown.clone().cancelled_owned())
            .take_until(hold.broken.clone().cancelled_owned())
            .scan(failure.clone(), |failure, received| {
                std::future::ready(match received {
                    Ok(delivery) => Some(delivery),
                    Err(error) => {
                        tracing::warn!(%error, "consumer failed");
                        *failure.lock().expect("never poisoned") = Some(error);
                        None
                    }
                })
            })
            // In delivery order, before the role sees the delivery: registering never
            // waits (a stream left unpolled by a busy role must hold no lock).
            .map(move |delivery| {
                let settlement = acks.received(delivery.delivery_tag);
                (delivery, settlement)
            });
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for Deliveries {
    type Item = (Delivery, Settlement);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
