//! What the endpoints that send through the pipeline share (ping, retry, recover):
//! publishing delivery jobs, and waiting for the attempt one of them causes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use qr3_broker::{DeliveryJob, Outgoing};
use qr3_domain::Trigger;
use qr3_domain::{DeliveryId, EventId, WebhookId};
use qr3_store::AttemptRecord;

use crate::{error::ApiError, state::ApiState};

/// Publishes `jobs` (each with the exact body to POST) on the delivery queue and waits
/// for the broker's confirms; 503 when the broker cannot take them.
pub(super) async fn publish(
    state: &ApiState,
    jobs: impl IntoIterator<Item = (DeliveryJob, Vec<u8>)>,
) -> Result<(), ApiError> {
    let messages: Vec<Outgoing> = jobs
        .into_iter()
        .map(|(job, body)| Outgoing {
            exchange: String::new(),
            routing_key: state.jobs.deliveries_queue.clone(),
            properties: job.properties(),
            body,
        })
        .collect();
    if messages.is_empty() {
        return Ok(());
    }
    if let Err(error) = state.jobs.publisher.publish_all(&messages).await {
        tracing::error!(%error, jobs = messages.len(), "cannot publish delivery jobs");
        return Err(ApiError::Unavailable(
            "the message broker is unavailable; try again",
        ));
    }
    Ok(())
}

/// Waits up to `api.ping_wait_ms` for the log row of a `trigger` attempt of `event` on
/// `webhook` that is not in `seen`; `None` when it has not appeared by then.
pub(super) async fn await_attempt(
    state: &ApiState,
    webhook: &WebhookId,
    event: &EventId,
    trigger: Trigger,
    seen: &HashSet<DeliveryId>,
) -> Result<Option<AttemptRecord>, ApiError> {
    let deadline = Instant::now() + state.config.ping_wait;
    loop {
        let attempts = state
            .store
            .attempts_for_event(webhook, event)
            .await
            .context("reading an event's attempts")?;
        if let Some(attempt) = attempts
            .into_iter()
            .find(|a| a.trigger == trigger && !seen.contains(&a.id))
        {
            return Ok(Some(attempt));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
