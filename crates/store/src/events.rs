//! Idempotent ingest: claiming event ids before fanning them out, a batch at a time.
//!
//! Claims are written with `synchronous_commit = off`: losing the last claims in a
//! database crash can only cause an event to be fanned out again (a duplicate), never
//! lost, because the event itself is acknowledged to the broker only after its jobs are
//! confirmed. That keeps a disk flush off the ingest path. Each is one statement in its
//! own implicit transaction, which sets that for itself with `set_config(…, true)`
//! (read at commit, reset after it), so a claim or finish is one round-trip instead of
//! four (BEGIN, SET LOCAL, the statement, COMMIT).

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
    /// Its workspace does not exist (never created, or deleted or being deleted): no
    /// claim is written, and the event has nobody to go to.
    UnknownWorkspace,
}

/// One event to claim.
#[derive(Debug, Clone)]
pub struct EventKey {
    pub workspace_id: WorkspaceId,
    pub event_id: EventId,
    pub event_type: EventType,
}

impl Store {
    /// Claims a batch of distinct events for fan-out, in one statement. A claim older
    /// than `lease` whose fan-out never finished (its worker died) is taken over. An
    /// event of a workspace that is not live is not claimed, so an erased workspace
    /// leaves no new rows behind. Returns one outcome per input, in order.
    pub async fn claim_events(
        &self,
        events: &[EventKey],
        lease: Duration,
    ) -> Result<Vec<ClaimOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let workspaces: Vec<&str> = events.iter().map(|e| e.workspace_id.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let lease_secs = lease.as_secs_f64();
        let client = self.pool.get().await?;
        // The outer SELECT sees ingested_events as it was before this statement, so
        // `done` is the state before the claim: what a duplicate looks like.
        let stmt = client
            .prepare_cached(
                "WITH input AS (
                    SELECT t.*, EXISTS (
                        SELECT 1 FROM workspaces w
                        WHERE w.id = t.workspace_id COLLATE \"C\" AND w.deleted_at IS NULL
                    ) AS live
                    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
                        AS t(workspace_id, event_id, event_type, n)
                 ), claimed AS (
                    INSERT INTO ingested_events (workspace_id, event_id, event_type)
                    SELECT workspace_id, event_id, event_type FROM input WHERE live
                    ON CONFLICT (workspace_id, event_id) DO UPDATE SET claimed_at = now()
                    WHERE ingested_events.fanned_out_at IS NULL
                      AND ingested_events.claimed_at < now() - make_interval(secs => $4)
                    RETURNING workspace_id, event_id
                 )
                 SELECT c.event_id IS NOT NULL, e.fanned_out_at IS NOT NULL, i.live
                 FROM input i
                 LEFT JOIN claimed c ON c.workspace_id = i.workspace_id AND c.event_id = i.event_id
                 LEFT JOIN ingested_events e ON e.workspace_id = i.workspace_id AND e.event_id = i.event_id
                 CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
                 ORDER BY i.n",
            )
            .await?;
        let rows = client
            .query(&stmt, &[&workspaces, &ids, &types, &lease_secs])
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                match (
                    row.get::<_, bool>(2),
                    row.get::<_, bool>(0),
                    row.get::<_, bool>(1),
                ) {
                    (false, _, _) => ClaimOutcome::UnknownWorkspace,
                    (true, true, _) => ClaimOutcome::Claimed,
                    (true, false, true) => ClaimOutcome::AlreadyDone,
                    (true, false, false) => ClaimOutcome::InProgress,
                }
            })
            .collect())
    }

    /// Marks claimed events as fanned out, with the number of jobs each produced (all
    /// confirmed by the broker).
    pub async fn finish_events(&self, events: &[(&EventKey, usize)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let workspaces: Vec<&str> = events
            .iter()
            .map(|(e, _)| e.workspace_id.as_str())
            .collect();
        let ids: Vec<&str> = events.iter().map(|(e, _)| e.event_id.as_str()).collect();
        let counts: Vec<i32> = events
            .iter()
            .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
            .collect();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE ingested_events e SET fanned_out_at = now(), webhooks = u.n
                 FROM unnest($1::text[], $2::text[], $3::int[]) AS u(workspace_id, event_id, n),
                      (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
                 WHERE e.workspace_id = u.workspace_id AND e.event_id = u.event_id",
            )
            .await?;
        client.execute(&stmt, &[&workspaces, &ids, &counts]).await?;
        Ok(())
    }
}
