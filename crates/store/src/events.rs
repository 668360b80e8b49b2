//! Idempotent ingest: claiming an event id before fanning it out.

use std::time::Duration;

use qr3_domain::{EventId, EventType, WorkspaceId};

use crate::{Result, Store};

/// What a claim on an event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This worker owns the fan-out now.
    Claimed,
    /// The event was fanned out before: a duplicate.
    AlreadyDone,
    /// Another worker claimed it moments ago and has not finished; try again later.
    InProgress,
}

impl Store {
    /// Claims `event` for fan-out. A claim older than `lease` whose fan-out never
    /// finished (the worker died) may be taken over.
    pub async fn claim_event(
        &self,
        workspace: &WorkspaceId,
        event: &EventId,
        event_type: EventType,
        lease: Duration,
    ) -> Result<ClaimOutcome> {
        let client = self.pool.get().await?;
        let claim = client
            .prepare_cached(
                "INSERT INTO ingested_events (workspace_id, event_id, event_type) VALUES ($1, $2, $3)
                 ON CONFLICT (workspace_id, event_id) DO UPDATE SET claimed_at = now()
                 WHERE ingested_events.fanned_out_at IS NULL
                   AND ingested_events.claimed_at < now() - make_interval(secs => $4)
                 RETURNING 1",
            )
            .await?;
        let lease_secs = lease.as_secs_f64();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &workspace.as_str(),
            &event.as_str(),
            &event_type.as_str(),
            &lease_secs,
        ];
        if client.query_opt(&claim, &params).await?.is_some() {
            return Ok(ClaimOutcome::Claimed);
        }
        let row = client
            .query_opt(
                "SELECT fanned_out_at IS NOT NULL FROM ingested_events WHERE workspace_id = $1 AND event_id = $2",
                &[&workspace.as_str(), &event.as_str()],
            )
            .await?;
        Ok(match row {
            Some(r) if r.get::<_, bool>(0) => ClaimOutcome::AlreadyDone,
            Some(_) => ClaimOutcome::InProgress,
            // Expired and deleted between the two statements: claim again next time.
            None => ClaimOutcome::InProgress,
        })
    }

    /// Marks a claimed event as fanned out to `webhooks` jobs (all confirmed).
    pub async fn finish_event(
        &self,
        workspace: &WorkspaceId,
        event: &EventId,
        webhooks: usize,
    ) -> Result<()> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("UPDATE ingested_events SET fanned_out_at = now(), webhooks = $3 WHERE workspace_id = $1 AND event_id = $2")
            .await?;
        let count = i32::try_from(webhooks).unwrap_or(i32::MAX);
        client
            .execute(&stmt, &[&workspace.as_str(), &event.as_str(), &count])
            .await?;
        Ok(())
    }
}
