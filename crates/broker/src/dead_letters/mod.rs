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

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Connection};
use serde::Serialize;

use crate::{Outgoing, PublishError, Publisher, Topology};

mod depth;
mod letter;

pub use depth::{depth, watch_depth, watch_depth_every, DEPTH_INTERVAL};
use letter::rotate_properties;
pub use letter::{
    origin, redrive_properties, DeadLetter, Verdict, ERROR, ORIGIN, REASON, ROUTING_KEY,
};

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
