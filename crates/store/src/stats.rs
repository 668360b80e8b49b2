//! A webhook's health at a glance: attempts, outcomes and latency percentiles over the
//! last hour and the last day, read from the delivery log in one query.
//!
//! Only `event` and `manual` attempts count: pings are tests of the endpoint, not
//! traffic, and would skew the numbers of a quiet webhook that is being set up.

use chrono::{DateTime, Utc};
use qr3_domain::{DeliveryId, Timestamp, WebhookId, WorkspaceId};
use tokio_postgres::Row;

use crate::{Result, Store};

/// Both windows end at the database's `now()`, reported as `generated_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookStats {
    pub generated_at: Timestamp,
    pub last_hour: StatsWindow,
    pub last_day: StatsWindow,
}

/// The attempts of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsWindow {
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub latency_ms: LatencyPercentiles,
}

/// Observed `response_time_ms` values (`percentile_disc`), `None` without attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyPercentiles {
    pub p50: Option<u32>,
    pub p90: Option<u32>,
    pub p99: Option<u32>,
}

/// How much earlier than `now - 24 h` the id bound starts. Ids carry the sender's clock,
/// the bound this process's and the window the database's: the bound only narrows the
/// index scan, so it errs early by more than any plausible skew (costing ~4% more of
/// the index range) rather than drop rows the `created_at` window would count.
const ID_BOUND_SLACK: chrono::Duration = chrono::Duration::hours(1);

// Both tables of the log (V8's `delivery_log`, and `delivery_attempts` before it).
// `interval '24 hours'`, not '1 day': on a timestamptz a day follows the session's time
// zone and lasts 23 or 25 hours across a DST change. The `created_at` bound prunes the
// daily partitions; the `id` bound keeps the scan of `(webhook_id, id DESC)` to the
// last day's entries. The workspace condition is repeated so a caller's mistake cannot
// leak another workspace's rows. One `percentile_disc` over an array sorts each window
// once for the three percentiles.
const STATS_SQL: &str = "
    WITH log AS (
        SELECT created_at, status = 'success' AS ok, response_time_ms
        FROM delivery_attempts
        WHERE webhook_id = $1
          AND workspace_id = $2
          AND id >= $3
          AND created_at >= now() - interval '24 hours'
          AND trigger IN ('event', 'manual')
        UNION ALL
        SELECT a.created_at, a.status = 1, a.response_time_ms
        FROM delivery_log a JOIN delivery_log_payloads p
          ON p.event = a.event AND p.created_at = date_trunc('day', a.created_at, 'UTC')
        WHERE qr3_uuid_hi(a.webhook_id) = qr3_uuid_hi($4::text::uuid)
          AND a.webhook_id = $4::text::uuid
          AND qr3_uuid_hi(a.id) >= qr3_uuid_hi($5::text::uuid)
          AND p.workspace_id = $2
          AND a.created_at >= now() - interval '24 hours'
          AND a.trigger IN (1, 3)
    )
    SELECT now(),
           count(*) FILTER (WHERE created_at >= now() - interval '1 hour'),
           count(*) FILTER (WHERE created_at >= now() - interval '1 hour' AND ok),
           count(*) FILTER (WHERE created_at >= now() - interval '1 hour' AND NOT ok),
           percentile_disc(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY response_time_ms)
               FILTER (WHERE created_at >= now() - interval '1 hour'),
           count(*),
           count(*) FILTER (WHERE ok),
           count(*) FILTER (WHERE NOT ok),
           percentile_disc(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY response_time_ms)
    FROM log";

/// The window whose columns start at `first`: attempts, succeeded, failed, percentiles.
fn window(row: &Row, first: usize) -> StatsWindow {
    let count = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    let percentiles: Option<Vec<Option<i32>>> = row.get(first + 3);
    let at = |i: usize| {
        percentiles
            .as_ref()
            .and_then(|p| p.get(i).copied().flatten())
            .map(|ms| ms.max(0) as u32)
    };
    StatsWindow {
        attempts: count(first),
        succeeded: count(first + 1),
        failed: count(first + 2),
        latency_ms: LatencyPercentiles {
            p50: at(0),
            p90: at(1),
            p99: at(2),
        },
    }
}

impl Store {
    /// The webhook's stats over the last hour and the last day. The caller has checked
    /// that the webhook belongs to the workspace; an unknown one reads as no attempts.
    pub async fn webhook_stats(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
    ) -> Result<WebhookStats> {
        let since = Timestamp::from(Utc::now() - chrono::Duration::hours(24) - ID_BOUND_SLACK);
        let lower = DeliveryId::lower_bound_at(since);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(STATS_SQL).await?;
        // An aggregate without GROUP BY always answers exactly one row.
        let row = client
            .query_one(
                &stmt,
                &[
                    &webhook.as_str(),
                    &workspace.as_str(),
                    &lower.as_str(),
                    &hex::encode(webhook.to_ulid_bytes()),
                    &hex::encode(lower.to_ulid_bytes()),
                ],
            )
            .await?;
        Ok(WebhookStats {
            generated_at: Timestamp::from(row.get::<_, DateTime<Utc>>(0)),
            last_hour: window(&row, 1),
            last_day: window(&row, 5),
        })
    }
}
