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
//!   `delivery.max_in_flight_per_webhook` deliveries in flight (or no `max_per_second`
//!   slot soon); back after the TTL. Four of them, `delivery.defer_ms` times 1, 2, 4
//!   and 8: a job parked again waits longer, so a hanging receiver's backlog does not
//!   cycle through the broker every `defer_ms`.
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
use lapin::{Channel, Connection, ExchangeKind};
use qr3_config::Settings;

/// How many defer queues there are, each waiting twice as long as the one before.
pub const DEFER_STEPS: u32 = 4;

/// Names of everything a deployment declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub events_exchange: String,
    pub prefix: String,
    pub retry_delays_ms: Vec<u64>,
    /// How long a job deferred by the per-webhook in-flight cap waits.
    pub defer_ms: u64,
    /// `x-delivery-limit` of the two main queues.
    pub delivery_limit: u32,
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
            delivery_limit: settings.amqp.delivery_limit,
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

    /// How long a job parked for the `deferrals`-th time (0 = the first) waits:
    /// `defer_ms`, then twice, four and eight times that.
    pub fn defer_delay_ms(&self, deferrals: u32) -> u64 {
        self.defer_ms
            .saturating_mul(1 << deferrals.min(DEFER_STEPS - 1))
    }

    /// Where a job parked for the `deferrals`-th time waits.
    pub fn defer_queue(&self, deferrals: u32) -> String {
        format!("{}.defer.{}ms", self.prefix, self.defer_delay_ms(deferrals))
    }

    /// Every delay queue with its delay: the retry delays and the defer delays.
    fn delay_queues(&self) -> Vec<(String, u64)> {
        let mut queues: Vec<(String, u64)> = self
            .retry_delays_ms
            .iter()
            .map(|d| (self.retry_queue(*d), *d))
            .collect();
        for step in 0..DEFER_STEPS {
            queues.push((self.defer_queue(step), self.defer_delay_ms(step)));
        }
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
    /// Uses channels of its own on `connection`: a main queue declared by an earlier
    /// release without `x-delivery-limit` makes RabbitMQ refuse the new arguments and
    /// close the channel, and is then only checked to exist (with a warning: its limit
    /// is set by a policy instead, see docs/operations.md).
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let channel = connection.create_channel().await?;
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
            declare_quorum(&channel, &queue, FieldTable::default()).await?;
        }
        let mut channel = channel;
        for queue in [self.ingest_queue(), self.deliveries_queue()] {
            match self.declare_named(&channel, &queue).await {
                Ok(_) => {}
                Err(error) if is_precondition_failed(&error) => {
                    tracing::warn!(queue = %queue, %error, "queue exists with other arguments (declared by an earlier release?); keeping them: set its delivery limit with a policy");
                    channel = connection.create_channel().await?;
                    channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                }
                Err(error) => return Err(error),
            }
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
        for (name, _) in self.delay_queues() {
            self.declare_named(&channel, &name).await?;
        }
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Declares one of this deployment's queues again by name (after a publish found it
    /// missing: deleted by an operator). `Ok(false)` for a name that is not ours.
    pub async fn declare_named(&self, channel: &Channel, name: &str) -> lapin::Result<bool> {
        let dead_letter = |args: &mut FieldTable, to: &str| {
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(to));
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        };
        let mut args = FieldTable::default();
        if name == self.ingest_queue() || name == self.deliveries_queue() {
            // A message the broker itself gives up on (after delivery_limit deliveries:
            // a consumer crashing on it again and again) is dead-lettered, never
            // dropped. Explicit, because RabbitMQ 4 sets 20 on quorum queues anyway.
            let dead = if name == self.ingest_queue() {
                self.ingest_dead_queue()
            } else {
                self.deliveries_dead_queue()
            };
            dead_letter(&mut args, &dead);
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        } else if name == self.ingest_dead_queue() || name == self.deliveries_dead_queue() {
        } else if let Some((_, delay)) = self.delay_queues().into_iter().find(|(q, _)| q == name) {
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay as i64));
            // The default exchange routes by queue name: expired messages go back to
            // the delivery queue.
            dead_letter(&mut args, &self.deliveries_queue());
        } else {
            return Ok(false);
        }
        declare_quorum(channel, name, args).await?;
        Ok(true)
    }
}

/// RabbitMQ refused a declaration whose arguments differ from the existing queue's.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_deferral_waits_longer_up_to_eight_times_defer_ms() {
        let mut settings = Settings::defaults();
        settings.amqp.prefix = "p".into();
        settings.delivery.defer_ms = 250;
        settings.delivery.retry_delays_ms = vec![1000];
        let topology = Topology::from_settings(&settings);
        let waits: Vec<u64> = (0..6).map(|n| topology.defer_delay_ms(n)).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(topology.defer_queue(0), "p.defer.250ms");
        assert_eq!(topology.defer_queue(9), "p.defer.2000ms");
        let queues = topology.queues();
        for name in [
            "p.retry.1000ms",
            "p.defer.250ms",
            "p.defer.500ms",
            "p.defer.1000ms",
            "p.defer.2000ms",
        ] {
            assert!(queues.iter().any(|q| q == name), "{name} in {queues:?}");
        }
    }
}
