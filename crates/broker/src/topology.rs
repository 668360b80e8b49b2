//! Exchanges and queues, declared idempotently by every process and by `migrate`.
//!
//! - `amqp.events_exchange` (topic, durable): the platform publishes events here,
//!   routing key = event type. The only name without our prefix.
//! - `<prefix>.ingest`: bound to the events exchange with `#`; the ingest role consumes.
//! - `<prefix>.ingest.dead`: events that could not be ingested, with the reason.
//! - `<prefix>.deliveries`: one message per (event, webhook) job; senders consume.
//! - `<prefix>.deliveries.dead`: jobs that could not be read.
//! - `<prefix>.operator` (topic): notifications for the platform, such as
//!   `webhook.disabled` when a webhook is disabled after consecutive failures.
//! - `<prefix>.defer.<ms>ms`: where a job waits when its webhook already has
//!   `delivery.max_in_flight_per_webhook` deliveries in flight; back after the TTL.
//! - `<prefix>.retry.<ms>ms`: one delay queue per configured retry delay; a message
//!   expires after its queue's TTL and is dead-lettered back to `<prefix>.deliveries`.
//!   The delay is in the name because RabbitMQ refuses to redeclare a queue with other
//!   arguments: changing a delay declares a new queue instead of failing.
//!
//! Every queue is a quorum queue: replicated and durable when the broker is a cluster,
//! and the only kind with at-least-once dead-lettering (`x-dead-letter-strategy`), which
//! the delay queues need so a retry cannot be lost between the delay queue and the
//! delivery queue. At-least-once dead-lettering requires `x-overflow: reject-publish`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use qr3_config::Settings;

/// Names of everything a deployment declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub events_exchange: String,
    pub prefix: String,
    pub retry_delays_ms: Vec<u64>,
    /// How long a job deferred by the per-webhook in-flight cap waits.
    pub defer_ms: u64,
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl Topology {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            events_exchange: settings.amqp.events_exchange.clone(),
            prefix: settings.amqp.prefix.clone(),
            retry_delays_ms: settings.delivery.retry_delays_ms.clone(),
            defer_ms: settings.delivery.defer_ms,
        }
    }

    pub fn ingest_queue(&self) -> String {
        format!("{}.ingest", self.prefix)
    }

    pub fn ingest_dead_queue(&self) -> String {
        format!("{}.ingest.dead", self.prefix)
    }

    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    pub fn deliveries_dead_queue(&self) -> String {
        format!("{}.deliveries.dead", self.prefix)
    }

    /// Topic exchange of operator notifications (routing key `webhook.disabled`), for
    /// the platform to tell its customers.
    pub fn operator_exchange(&self) -> String {
        format!("{}.operator", self.prefix)
    }

    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}ms", self.prefix)
    }

    /// Where a job waits when its webhook is at its in-flight cap.
    pub fn defer_queue(&self) -> String {
        format!("{}.defer.{}ms", self.prefix, self.defer_ms)
    }

    /// Every delay queue with its delay: the retry delays and the defer delay.
    fn delay_queues(&self) -> Vec<(String, u64)> {
        let mut queues: Vec<(String, u64)> = self
            .retry_delays_ms
            .iter()
            .map(|d| (self.retry_queue(*d), *d))
            .collect();
        queues.push((self.defer_queue(), self.defer_ms));
        queues
    }

    /// Every exchange this deployment declares: the events exchange and the operator
    /// exchange (for cleanup in tests; in production the events exchange is shared).
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.events_exchange.clone(), self.operator_exchange()]
    }

    /// Every queue name, for cleanup in tests and for operators.
    pub fn queues(&self) -> Vec<String> {
        let mut names = vec![
            self.ingest_queue(),
            self.ingest_dead_queue(),
            self.deliveries_queue(),
            self.deliveries_dead_queue(),
        ];
        names.extend(self.delay_queues().into_iter().map(|(name, _)| name));
        names
    }

    /// Declares everything; safe to repeat and to run from several processes at once.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        channel
            .exchange_declare(
                self.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.operator_exchange().as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for queue in [self.ingest_dead_queue(), self.deliveries_dead_queue()] {
            declare_quorum(channel, &queue, FieldTable::default()).await?;
        }
        // A message the broker itself gives up on (a delivery limit, as RabbitMQ 4
        // sets by default on quorum queues) is dead-lettered, never dropped.
        for (queue, dead) in [
            (self.ingest_queue(), self.ingest_dead_queue()),
            (self.deliveries_queue(), self.deliveries_dead_queue()),
        ] {
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(&dead));
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
            declare_quorum(channel, &queue, args).await?;
        }
        channel
            .queue_bind(
                self.ingest_queue().into(),
                self.events_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for (name, delay) in self.delay_queues() {
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay as i64));
            // The default exchange routes by queue name: expired messages go back to
            // the delivery queue.
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert(
                "x-dead-letter-routing-key".into(),
                text(&self.deliveries_queue()),
            );
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
            declare_quorum(channel, &name, args).await?;
        }
        Ok(())
    }
}

async fn declare_quorum(channel: &Channel, name: &str, mut args: FieldTable) -> lapin::Result<()> {
    args.insert("x-queue-type".into(), text("quorum"));
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(|_| ())
}
