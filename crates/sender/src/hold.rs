//! Holding work through a refusal: publishing with confirms again and again, with
//! backoff, until the broker takes the messages, rather than handing the job back to the
//! broker (a requeue is a redelivery, counted towards the queue's delivery limit, and a
//! requeued job is attempted again at once: a tight loop).
//!
//! A queue that was deleted is declared again. A refusal (nack) is tried again on a
//! fresh channel: a quorum queue that overflowed with `reject-publish` keeps refusing
//! the channels it refused until it drops below its low watermark by consumption, which
//! never comes for a delay queue drained by expiry (seen on RabbitMQ 3.10). A publishing
//! channel that closed ends the session (`Hold::broken`), so the consumer reconnects and
//! everything it held is redelivered by the broker.

use std::sync::Arc;

use qr3_broker::{Backoff, Outgoing, PublishError, Publisher, Topology};
use qr3_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

/// What a held publish watches besides the broker's answer.
#[derive(Clone)]
pub struct Hold {
    /// The process is stopping: give up, the job goes back to the broker.
    pub shutdown: CancellationToken,
    /// Cancelled once the publishing channel is found closed: the session starts over.
    pub broken: CancellationToken,
    /// The session's connection, for a fresh channel after a refusal.
    pub connection: Arc<lapin::Connection>,
}

/// The held publish was given up (shutdown, or the channel is gone): whatever it was for
/// must be handed back to the broker.
#[derive(Debug)]
pub struct Abandoned;

/// Publishes `messages` with confirms; after a refusal (a nack from a full queue, an
/// unroutable message, a broker error) waits with backoff and tries again, until it
/// is confirmed or abandoned.
pub async fn publish(
    publisher: &Publisher,
    topology: &Topology,
    metrics: &Metrics,
    hold: &Hold,
    what: &'static str,
    messages: &[Outgoing],
) -> Result<(), Abandoned> {
    let mut backoff = Backoff::dependency();
    let mut current = publisher.clone();
    let mut replaced = false;
    loop {
        let publisher = &current;
        let error = match publisher.publish_all(messages).await {
            Ok(()) => {
                if backoff.tries() > 0 {
                    tracing::info!(
                        what,
                        tries = backoff.tries(),
                        "publish confirmed after waiting"
                    );
                }
                return Ok(());
            }
            Err(error) => error,
        };
        if !publisher.channel().status().connected() {
            tracing::warn!(what, %error, "the publishing channel closed; reconnecting");
            hold.broken.cancel();
            return Err(Abandoned);
        }
        if let PublishError::Unroutable(queue) = &error {
            // Deleted by hand, most likely: ours are declared again as they were.
            match topology.declare_named(publisher.channel(), queue).await {
                Ok(true) => tracing::warn!(what, %queue, "queue was missing; declared it again"),
                Ok(false) => {}
                Err(declare) => {
                    tracing::warn!(what, %queue, error = %declare, "cannot declare the missing queue")
                }
            }
        }
        if matches!(error, PublishError::Nacked(_)) {
            match Publisher::open(&hold.connection).await {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut current, fresh);
                    if replaced {
                        let _ = old.channel().close(200, "refused".into()).await;
                    }
                    replaced = true;
                }
                Err(open) => {
                    tracing::warn!(what, error = %open, "cannot open a fresh publishing channel")
                }
            }
        }
        metrics
            .dependency_waits_total
            .with_label_values(&["broker"])
            .inc();
        if backoff.worth_logging(&error.to_string()) {
            tracing::error!(what, %error, messages = messages.len(), tries = backoff.tries(), "the broker refuses a publish; holding the jobs and trying again");
        }
        if hold.shutdown.is_cancelled() || !backoff.wait(&hold.shutdown).await {
            return Err(Abandoned);
        }
    }
}
