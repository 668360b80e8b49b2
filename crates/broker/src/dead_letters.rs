//! Dead letters made operable: reading why a message was parked on a `.dead` queue,
//! listing them without wearing them out, moving them back to the queue they came
//! from, and watching the depth of the `.dead` queues for the alert.
//!
//! Two queues hold dead letters (see `topology.rs`): `<prefix>.ingest.dead`, events
//! ingest could not read (`x-qr3-reason`, `x-qr3-error`, `x-qr3-routing-key`), and
//! `<prefix>.deliveries.dead`, jobs a sender could not read or gave up on
//! (`x-qr3-reason`, `x-qr3-error`, the job's own headers kept, and `x-qr3-queue` when the
//! sender names where the job goes back to). Both also take what the broker itself
//! dead-letters from the main queues, which carries RabbitMQ's `x-death` header.
//!
//! Every operation takes a message with `basic.get` and settles it only after the
//! broker has confirmed where it goes next, so nothing is lost at any step:
//!
//! - **list** republishes the message as it is (same properties, headers and body) to
//!   the tail of the same `.dead` queue, then acknowledges the original. A message is
//!   never handed back unacknowledged, which would count as a redelivery: quorum queues
//!   drop or dead-letter a message returned too often (RabbitMQ 4 sets a delivery limit
//!   by default), and a `.dead` queue has nowhere further to send it. Listing therefore
//!   rotates the queue: listed messages move behind the others.
//! - **redrive** publishes the message to its origin queue through the default exchange
//!   (so only that queue gets it, not every consumer of the events exchange), with our
//!   dead-letter headers and the broker's stripped and every other header kept, then
//!   acknowledges it. A message whose origin is not one of this deployment's main queues
//!   is left where it was (rotated) and counted as skipped.
//!
//! Only a failure (connection lost, publish refused) between the take and the
//! acknowledgement hands a message back unacknowledged; a crash after the publish and
//! before the acknowledgement leaves a copy in both places (at-least-once, as
//! everywhere else). Each operation looks at no more messages than the queue held when
//! it started, so it never meets the copies it put at the tail, nor a message that was
//! redriven and dead-lettered again meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use prometheus::IntGaugeVec;
use qr3_config::Settings;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Outgoing, PublishError, Publisher, Topology};

/// Why the message was dead-lettered (ours: `invalid_json`, `invalid_job`, `job_failed`, …).
pub const REASON: &str = "x-qr3-reason";
/// The error behind the reason, for people.
pub const ERROR: &str = "x-qr3-error";
/// The queue a dead letter goes back to, when whoever parked it says so.
pub const ORIGIN: &str = "x-qr3-queue";
/// The routing key an event was published with (ingest's dead letters).
pub const ROUTING_KEY: &str = "x-qr3-routing-key";
/// RabbitMQ's record of dead-lettering, most recent first.
const X_DEATH: &str = "x-death";
/// How often a quorum queue has handed the message out before, added to each delivery.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers a redriven message no longer carries: our verdict and the broker's history.
/// A redriven message starts afresh; its job headers (ids, attempt, trigger) stay.
const STRIPPED_ON_REDRIVE: &[&str] = &[
    REASON,
    ERROR,
    ORIGIN,
    X_DEATH,
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    DELIVERY_COUNT,
];

// The job headers `job.rs` writes that say whom a dead job was for (kept in step by the
// test `reads_the_ids_of_a_single_job_and_counts_a_bundle`).
const WEBHOOK_ID: &str = "x-qr3-webhook-id";
const WORKSPACE_ID: &str = "x-qr3-workspace-id";
const EVENT_ID: &str = "x-qr3-event-id";
const JOBS: &str = "x-qr3-jobs";

/// How much of a body a listing shows.
const EXCERPT_CHARS: usize = 200;
/// How often `watch_depth` reads the depth.
pub const DEPTH_INTERVAL: Duration = Duration::from_secs(15);
/// How long one depth reading may take before it counts as failed.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the two dead-letter queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeadQueue {
    /// `<prefix>.ingest.dead`, fed by `<prefix>.ingest`.
    Ingest,
    /// `<prefix>.deliveries.dead`, fed by `<prefix>.deliveries`.
    Deliveries,
}

impl DeadQueue {
    pub const ALL: [DeadQueue; 2] = [DeadQueue::Ingest, DeadQueue::Deliveries];

    /// The value of the `queue` label of `qr3_dead_letters`.
    pub fn label(self) -> &'static str {
        match self {
            DeadQueue::Ingest => "ingest",
            DeadQueue::Deliveries => "deliveries",
        }
    }

    /// The dead-letter queue's name.
    pub fn name(self, topology: &Topology) -> String {
        match self {
            DeadQueue::Ingest => topology.ingest_dead_queue(),
            DeadQueue::Deliveries => topology.deliveries_dead_queue(),
        }
    }

    /// The main queue whose dead letters this queue holds: where a dead letter goes back
    /// to when its headers do not say.
    pub fn feeds_from(self, topology: &Topology) -> String {
        match self {
            DeadQueue::Ingest => topology.ingest_queue(),
            DeadQueue::Deliveries => topology.deliveries_queue(),
        }
    }
}

/// Which dead letters an operation looks at.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The queues, taken in this order.
    pub queues: Vec<DeadQueue>,
    /// At most this many messages in all.
    pub limit: usize,
}

/// What a dead letter says about itself, as its headers say it: ids and names are not
/// validated, since a message may be dead precisely because they are wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The dead-letter queue it is on.
    pub queue: String,
    /// `x-qr3-reason`, else the broker's reason (`rejected`, `delivery_limit`, …).
    pub reason: Option<String>,
    /// `x-qr3-error`.
    pub error: Option<String>,
    /// Where a redrive sends it: `x-qr3-queue`, else the queue the broker dead-lettered
    /// it from, else the main queue that feeds this dead-letter queue.
    pub origin: String,
    /// How many times the broker dead-lettered it from `origin` (`x-death` count).
    pub deaths: Option<i64>,
    /// The event's routing key (the event type), when known.
    pub routing_key: Option<String>,
    pub event_id: Option<String>,
    pub webhook_id: Option<String>,
    pub workspace_id: Option<String>,
    /// For a bundle, how many jobs it carries.
    pub jobs: Option<usize>,
    pub body_bytes: usize,
    /// The first characters of the body (invalid UTF-8 replaced).
    pub body_excerpt: String,
}

impl DeadLetter {
    /// Reads a message taken from `dead`.
    pub fn read(
        topology: &Topology,
        dead: DeadQueue,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Self {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let death = last_death(headers);
        let death_text = |key: &str| death.and_then(|d| text(d.inner().get(key)?));
        Self {
            queue: dead.name(topology),
            reason: header_text(headers, REASON).or_else(|| death_text("reason")),
            error: header_text(headers, ERROR),
            origin: origin(topology, dead, headers),
            deaths: death.and_then(|d| integer(d.inner().get("count")?)),
            routing_key: header_text(headers, ROUTING_KEY).or_else(|| {
                match death?.inner().get("routing-keys")? {
                    AMQPValue::FieldArray(keys) => keys.as_slice().iter().find_map(text),
                    _ => None,
                }
            }),
            event_id: header_text(headers, EVENT_ID),
            webhook_id: header_text(headers, WEBHOOK_ID),
            workspace_id: header_text(headers, WORKSPACE_ID),
            jobs: match headers.inner().get(JOBS) {
                Some(AMQPValue::FieldArray(jobs)) => Some(jobs.as_slice().len()),
                _ => None,
            },
            body_bytes: body.len(),
            body_excerpt: String::from_utf8_lossy(body)
                .chars()
                .take(EXCERPT_CHARS)
                .collect(),
        }
    }
}

/// Where a dead letter goes back to: `x-qr3-queue`, else `x-death[0].queue`, else the
/// main queue of the dead-letter queue it is on.
pub fn origin(topology: &Topology, dead: DeadQueue, headers: &FieldTable) -> String {
    header_text(headers, ORIGIN)
        .or_else(|| text(last_death(headers)?.inner().get("queue")?))
        .unwrap_or_else(|| dead.feeds_from(topology))
}

/// The properties a redriven message is published with: the same, without the headers
/// of [`STRIPPED_ON_REDRIVE`], and persistent.
pub fn redrive_properties(properties: &BasicProperties) -> BasicProperties {
    without_headers(properties, STRIPPED_ON_REDRIVE).with_delivery_mode(2)
}

/// The properties a listed message is put back with: the same, without the delivery
/// count the broker added when it handed the message out (it describes that delivery,
/// not the message).
fn rotate_properties(properties: &BasicProperties) -> BasicProperties {
    without_headers(properties, &[DELIVERY_COUNT])
}

fn without_headers(properties: &BasicProperties, names: &[&str]) -> BasicProperties {
    let Some(headers) = properties.headers().as_ref() else {
        return properties.clone();
    };
    let kept: BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(name, _)| !names.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    properties.clone().with_headers(FieldTable::from(kept))
}

fn last_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get(X_DEATH)? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    text(headers.inner().get(name)?)
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot read queue {queue} (is `qr3-webhooks migrate` done?)")]
    Queue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("cannot publish to {queue}")]
    Publish {
        queue: String,
        #[source]
        source: PublishError,
    },
}

/// How many messages are ready on `queue` (a passive declare: creates nothing).
pub async fn depth(channel: &Channel, queue: &str) -> Result<u32, DeadLetterError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .map_err(|source| DeadLetterError::Queue {
            queue: queue.to_owned(),
            source,
        })
}

/// Takes the next message of `queue` without acknowledging it (`no_ack = false`: it
/// stays the broker's until it is safe elsewhere).
async fn take(publisher: &Publisher, queue: &str) -> Result<Option<Delivery>, DeadLetterError> {
    let got = publisher
        .channel()
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?;
    Ok(got.map(|message| message.delivery))
}

/// Publishes `delivery`'s body to `queue` with `properties` (default exchange, routing
/// key = queue name, so only that queue gets it; `mandatory`, confirmed), then
/// acknowledges `delivery`. On failure the delivery stays unacknowledged, and closing
/// the channel hands it back to its queue.
async fn move_message(
    publisher: &Publisher,
    delivery: Delivery,
    queue: &str,
    properties: BasicProperties,
) -> Result<(), DeadLetterError> {
    let message = Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        properties,
        body: delivery.data,
    };
    publisher
        .publish_all(std::slice::from_ref(&message))
        .await
        .map_err(|source| DeadLetterError::Publish {
            queue: queue.to_owned(),
            source,
        })?;
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Puts `delivery` back at the tail of `queue` as it was, then acknowledges the original.
async fn rotate(
    publisher: &Publisher,
    delivery: Delivery,
    queue: &str,
) -> Result<(), DeadLetterError> {
    let properties = rotate_properties(&delivery.properties);
    move_message(publisher, delivery, queue, properties).await
}

/// Calls `each` with up to `scope.limit` dead letters, queue by queue, and returns how
/// many it listed. Each listed message moves to the tail of its queue (see the module
/// documentation); none is redelivered.
pub async fn list(
    connection: &Connection,
    topology: &Topology,
    scope: &Scope,
    mut each: impl FnMut(DeadLetter),
) -> Result<usize, DeadLetterError> {
    let publisher = Publisher::open(connection).await?;
    let mut listed = 0;
    for &dead in &scope.queues {
        let queue = dead.name(topology);
        // Never further than the queue held at the start: the rest are our own copies.
        let held = depth(publisher.channel(), &queue).await? as usize;
        for _ in 0..held.min(scope.limit - listed) {
            let Some(delivery) = take(&publisher, &queue).await? else {
                break;
            };
            each(DeadLetter::read(
                topology,
                dead,
                &delivery.properties,
                &delivery.data,
            ));
            rotate(&publisher, delivery, &queue).await?;
            listed += 1;
        }
    }
    Ok(listed)
}

/// Whether a redrive moves messages or only says what it would move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveMode {
    Move,
    /// Reads the messages as a listing does (rotating them) and moves none.
    DryRun,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveSummary {
    /// Messages moved back to their origin queue (0 in a dry run).
    pub redriven: usize,
    pub dry_run: bool,
    /// In a dry run, how many would have been moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_redrive: Option<usize>,
    /// Per origin queue, how many were (or would be) moved there.
    pub to: BTreeMap<String, usize>,
    /// Messages whose origin is not a main queue of this deployment: left on their
    /// dead-letter queue (rotated).
    pub skipped: usize,
    /// Per dead-letter queue in scope, the messages on it afterwards.
    pub remaining: BTreeMap<String, u32>,
}

/// Moves up to `scope.limit` dead letters back to their origin queues (or, in a dry
/// run, counts them) and says what it did.
pub async fn redrive(
    connection: &Connection,
    topology: &Topology,
    scope: &Scope,
    mode: RedriveMode,
) -> Result<RedriveSummary, DeadLetterError> {
    let publisher = Publisher::open(connection).await?;
    let known = [topology.ingest_queue(), topology.deliveries_queue()];
    let mut summary = RedriveSummary {
        dry_run: mode == RedriveMode::DryRun,
        ..Default::default()
    };
    let mut moved = 0;
    for &dead in &scope.queues {
        let queue = dead.name(topology);
        // Never further than the queue held at the start: what comes after is our own
        // rotated copies, or messages redriven now and dead-lettered again.
        let held = depth(publisher.channel(), &queue).await?;
        for _ in 0..held {
            if moved == scope.limit {
                break;
            }
            let Some(delivery) = take(&publisher, &queue).await? else {
                break;
            };
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let origin = origin(topology, dead, &headers);
            if !known.contains(&origin) {
                tracing::warn!(
                    queue,
                    origin,
                    "dead letter names an origin that is not a queue of this deployment; left in place"
                );
                rotate(&publisher, delivery, &queue).await?;
                summary.skipped += 1;
                continue;
            }
            match mode {
                RedriveMode::DryRun => rotate(&publisher, delivery, &queue).await?,
                RedriveMode::Move => {
                    let properties = redrive_properties(&delivery.properties);
                    move_message(&publisher, delivery, &origin, properties).await?;
                    summary.redriven += 1;
                }
            }
            *summary.to.entry(origin).or_default() += 1;
            moved += 1;
        }
    }
    if mode == RedriveMode::DryRun {
        summary.would_redrive = Some(moved);
    }
    for &dead in &scope.queues {
        let queue = dead.name(topology);
        let left = depth(publisher.channel(), &queue).await?;
        summary.remaining.insert(queue, left);
    }
    Ok(summary)
}

/// Spawns a task that sets `gauges{queue = dead.label()}` to the depth of the `dead`
/// queue every [`DEPTH_INTERVAL`] until `shutdown`, on its own connection
/// (`qr3-depth/<prefix>/<label>`). The service exports the depth itself so that the
/// alert works with a managed RabbitMQ that has no per-queue metrics. While the queue
/// cannot be read the gauge keeps its last value (the broker alerts say why).
pub fn watch_depth(
    settings: &Settings,
    dead: DeadQueue,
    gauges: &IntGaugeVec,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    watch_depth_every(settings, dead, gauges, shutdown, DEPTH_INTERVAL)
}

/// [`watch_depth`] at another pace (tests).
pub fn watch_depth_every(
    settings: &Settings,
    dead: DeadQueue,
    gauges: &IntGaugeVec,
    shutdown: &CancellationToken,
    every: Duration,
) -> JoinHandle<()> {
    let url = settings.amqp.url.expose().clone();
    let name = format!("qr3-depth/{}/{}", settings.amqp.prefix, dead.label());
    let queue = dead.name(&Topology::from_settings(settings));
    let gauge = gauges.with_label_values(&[dead.label()]);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut link: Option<(Connection, Channel)> = None;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let reading = tokio::select! {
                _ = shutdown.cancelled() => break,
                reading = tokio::time::timeout(DEPTH_TIMEOUT, read_depth(&mut link, &url, &name, &queue)) => reading,
            };
            match reading {
                Ok(Ok(n)) => gauge.set(i64::from(n)),
                Ok(Err(error)) => {
                    tracing::warn!(queue, %error, "cannot read the depth of a dead-letter queue");
                }
                Err(_) => {
                    tracing::warn!(
                        queue,
                        "reading the depth of a dead-letter queue timed out; reconnecting"
                    );
                    link = None;
                }
            }
        }
        if let Some((connection, _)) = link {
            let _ =
                tokio::time::timeout(DEPTH_TIMEOUT, connection.close(200, "shutdown".into())).await;
        }
    })
}

/// One depth reading, connecting or opening a channel first when needed (a failed
/// passive declare closes its channel).
async fn read_depth(
    link: &mut Option<(Connection, Channel)>,
    url: &str,
    name: &str,
    queue: &str,
) -> Result<u32, DeadLetterError> {
    if !matches!(link, Some((connection, _)) if connection.status().connected()) {
        let connection = crate::connect(url, name).await?;
        let channel = connection.create_channel().await?;
        *link = Some((connection, channel));
    }
    let (connection, channel) = link.as_mut().expect("connected just above");
    if !channel.status().connected() {
        *channel = connection.create_channel().await?;
    }
    depth(channel, queue).await
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString, ShortString};
    use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};

    use super::*;
    use crate::{DeliveryJob, Packer, Trigger};

    fn topology() -> Topology {
        let mut settings = Settings::defaults();
        settings.amqp.prefix = "p".into();
        Topology::from_settings(&settings)
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    /// `x-death` as RabbitMQ writes it when it dead-letters from `queue`.
    fn x_death(queue: &str, reason: &str, routing_key: &str) -> (&'static str, AMQPValue) {
        let death = table(&[
            ("count", AMQPValue::LongLongInt(1)),
            ("reason", long(reason)),
            ("queue", long(queue)),
            ("exchange", long("")),
            (
                "routing-keys",
                AMQPValue::FieldArray(FieldArray::from(vec![long(routing_key)])),
            ),
        ]);
        (
            X_DEATH,
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        )
    }

    fn properties(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table(headers))
    }

    fn job() -> DeliveryJob {
        DeliveryJob {
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::parse("evt_dead").unwrap(),
            event_type: EventType::QrCreated,
            event_created: Timestamp::parse("2026-03-15T10:00:00.123Z").unwrap(),
            attempt: 3,
            trigger: Trigger::Event,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn reads_our_reason_error_and_routing_key_and_defaults_the_origin_by_queue() {
        let t = topology();
        let props = properties(&[
            (REASON, long("invalid_json")),
            (ERROR, long("expected value at line 1 column 1")),
            (ROUTING_KEY, long("qr.created")),
        ]);
        let body = "é".repeat(300);
        let letter = DeadLetter::read(&t, DeadQueue::Ingest, &props, body.as_bytes());
        assert_eq!(letter.queue, "p.ingest.dead");
        assert_eq!(letter.reason.as_deref(), Some("invalid_json"));
        assert_eq!(
            letter.error.as_deref(),
            Some("expected value at line 1 column 1")
        );
        assert_eq!(letter.origin, "p.ingest");
        assert_eq!(letter.routing_key.as_deref(), Some("qr.created"));
        assert_eq!(letter.deaths, None);
        assert_eq!(letter.body_bytes, 600);
        assert_eq!(letter.body_excerpt, "é".repeat(EXCERPT_CHARS));
    }

    #[test]
    fn the_origin_is_our_header_then_the_broker_s_then_the_queue_s() {
        let t = topology();
        let ours = table(&[
            (ORIGIN, long("p.deliveries")),
            x_death("p.ingest", "rejected", "qr.created"),
        ]);
        assert_eq!(origin(&t, DeadQueue::Ingest, &ours), "p.deliveries");
        let broker = table(&[x_death("p.deliveries", "delivery_limit", "p.deliveries")]);
        assert_eq!(origin(&t, DeadQueue::Ingest, &broker), "p.deliveries");
        let none = FieldTable::default();
        assert_eq!(origin(&t, DeadQueue::Deliveries, &none), "p.deliveries");
        assert_eq!(origin(&t, DeadQueue::Ingest, &none), "p.ingest");
    }

    #[test]
    fn a_broker_dead_letter_shows_the_broker_s_reason_count_and_routing_key() {
        let props = properties(&[x_death("p.ingest", "delivery_limit", "qr.scanned")]);
        let letter = DeadLetter::read(&topology(), DeadQueue::Ingest, &props, b"{}");
        assert_eq!(letter.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(letter.error, None);
        assert_eq!(letter.origin, "p.ingest");
        assert_eq!(letter.deaths, Some(1));
        assert_eq!(letter.routing_key.as_deref(), Some("qr.scanned"));
    }

    #[test]
    fn reads_the_ids_of_a_single_job_and_counts_a_bundle() {
        let t = topology();
        let single = job();
        let letter = DeadLetter::read(&t, DeadQueue::Deliveries, &single.properties(), b"{}");
        assert_eq!(letter.event_id.as_deref(), Some("evt_dead"));
        assert_eq!(
            letter.webhook_id.as_deref(),
            Some(single.webhook_id.as_str())
        );
        assert_eq!(
            letter.workspace_id.as_deref(),
            Some(single.workspace_id.as_str())
        );
        assert_eq!(letter.jobs, None);

        let mut packer = Packer::new(10, 1 << 20);
        let jobs = [job(), job(), job()];
        packer.push_event(&jobs, b"{}");
        let messages = packer.finish();
        assert_eq!(messages.len(), 1);
        let (props, body) = &messages[0];
        let letter = DeadLetter::read(&t, DeadQueue::Deliveries, props, body);
        assert_eq!(letter.jobs, Some(3));
        assert_eq!(letter.event_id, None);
    }

    #[test]
    fn a_redrive_strips_the_verdict_and_the_broker_s_history_and_keeps_the_job() {
        let single = job();
        let mut headers = single.properties().headers().clone().unwrap();
        for (name, value) in [
            (REASON, long("job_failed")),
            (ERROR, long("gave up")),
            (ORIGIN, long("p.deliveries")),
            ("x-first-death-reason", long("rejected")),
            ("x-first-death-queue", long("p.deliveries")),
            ("x-first-death-exchange", long("")),
            ("x-last-death-reason", long("rejected")),
            ("x-last-death-queue", long("p.deliveries")),
            ("x-last-death-exchange", long("")),
            ("x-delivery-count", AMQPValue::LongLongInt(2)),
            x_death("p.deliveries", "rejected", "p.deliveries"),
        ] {
            headers.insert(name.into(), value);
        }
        let dead = single.properties().with_headers(headers);
        let redriven = redrive_properties(&dead);
        assert_eq!(redriven.headers(), single.properties().headers());
        assert_eq!(redriven.delivery_mode(), &Some(2));
        assert_eq!(redriven.content_type(), dead.content_type());
        let back = DeliveryJob::from_message(&redriven, b"{}".to_vec()).unwrap();
        assert_eq!(back.attempt, 3);
        assert_eq!(back.event_id, single.event_id);
    }

    #[test]
    fn a_listed_message_goes_back_as_it_was_without_the_broker_s_delivery_count() {
        let mut headers = table(&[
            (REASON, long("job_failed")),
            x_death("p.deliveries", "rejected", "p.deliveries"),
        ]);
        let stored = properties(&[]).with_headers(headers.clone());
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(0));
        let delivered = stored.clone().with_headers(headers);
        assert_eq!(rotate_properties(&delivered), stored);
    }
}
