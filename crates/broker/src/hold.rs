//! Holding work through a refusal: publishing with confirms again and again, with
//! backoff, until the broker takes the messages, rather than handing the consumed
//! message back to the broker (a requeue is a redelivery, counted towards the queue's
//! delivery limit, and a requeued message is handled again at once: a tight loop).
//!
//! A queue that was deleted is declared again. A refusal (nack) is tried again on a
//! fresh channel: a quorum queue that overflowed with `reject-publish` keeps refusing
//! the channels it refused until it drops below its low watermark by consumption, which
//! never comes for a delay queue drained by expiry (seen on RabbitMQ 3.10). A publishing
//! channel that closed ends the session (`Hold::broken`), so the consumer reconnects and
//! everything it held is redelivered by the broker.

use std::sync::Arc;

use lapin::Connection;
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

use crate::{Backoff, Outgoing, PublishError, Publisher, Topology};

/// What a held publish watches besides the broker's answer. One per consuming session
/// ([`crate::Session::hold`]); cheap to clone.
#[derive(Clone)]
pub struct Hold {
    /// The process is stopping: give up, the work goes back to the broker.
    pub shutdown: CancellationToken,
    /// Cancelled once the publishing channel is found closed: the session starts over.
    pub broken: CancellationToken,
    /// The session's connection, for a fresh channel after a refusal.
    pub connection: Arc<Connection>,
    /// To declare a missing queue of ours again.
    pub topology: Arc<Topology>,
    /// Counts each wait (the `broker` series of `qr3_dependency_waits_total`).
    pub waits: Option<IntCounter>,
}

/// The held publish was given up (shutdown, or the channel is gone): whatever it was for
/// must be handed back to the broker.
#[derive(Debug)]
pub struct Abandoned;

impl Hold {
    /// Publishes `messages` with confirms; after a refusal (a nack from a full queue, an
    /// unroutable message, a broker error) waits with backoff and tries again, until
    /// they are confirmed or the publish is abandoned. `what` names them in logs.
    pub async fn publish(
        &self,
        publisher: &Publisher,
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
                self.broken.cancel();
                return Err(Abandoned);
            }
            if let PublishError::Unroutable(queue) = &error {
                // Deleted by hand, most likely: ours are declared again as they were.
                match self
                    .topology
                    .declare_named(publisher.channel(), queue)
                    .await
                {
                    Ok(true) => {
                        tracing::warn!(what, %queue, "queue was missing; declared it again")
                    }
                    Ok(false) => {}
                    Err(declare) => {
                        tracing::warn!(what, %queue, error = %declare, "cannot declare the missing queue")
                    }
                }
            }
            if matches!(error, PublishError::Nacked(_)) {
                match Publisher::open(&self.connection).await {
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
            if let Some(waits) = &self.waits {
                waits.inc();
            }
            if backoff.worth_logging(&error.to_string()) {
                tracing::error!(what, %error, messages = messages.len(), tries = backoff.tries(), "the broker refuses a publish; holding the jobs and trying again");
            }
            if self.shutdown.is_cancelled() || !backoff.wait(&self.shutdown).await {
                return Err(Abandoned);
            }
        }
    }
}
