//! The shared rate limit of a webhook's `max_per_second`: a GCRA whose state (the next
//! free send slot) lives in one row per webhook, so every sender process takes its
//! slots from the same sequence, spaced `interval` apart.

use std::time::Duration;

use qr3_domain::WebhookId;

use crate::{Result, Store};

/// Slots granted to one sender: `count` slots, `interval` apart, the first `wait`
/// from the moment the statement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateBlock {
    pub wait: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Store {
    /// Takes the webhook's next `count` send slots, `interval` apart, if the first of
    /// them starts within `max_wait`; otherwise takes nothing (`None`). One statement
    /// (an upsert on the webhook's row), so concurrent senders serialise on it and
    /// never get overlapping slots. A slot nobody took in time is never handed out
    /// again: the sequence restarts at the present, it does not catch up.
    pub async fn take_rate_block(
        &self,
        webhook: &WebhookId,
        interval: Duration,
        count: u32,
        max_wait: Duration,
    ) -> Result<Option<RateBlock>> {
        let interval_us = i64::try_from(interval.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let max_wait_us = i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX);
        let span_us = interval_us.saturating_mul(i64::from(count.max(1)));
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "WITH clock AS (
                    SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint AS now_us
                 )
                 INSERT INTO webhook_rate_slots AS r (webhook_id, next_slot_us)
                 SELECT $1, clock.now_us + $2 FROM clock
                 ON CONFLICT (webhook_id) DO UPDATE
                    SET next_slot_us = GREATEST(r.next_slot_us, (SELECT now_us FROM clock)) + $2
                    WHERE r.next_slot_us <= (SELECT now_us FROM clock) + $3
                 RETURNING r.next_slot_us - $2 - (SELECT now_us FROM clock)",
                &[&webhook.as_str(), &span_us, &max_wait_us],
            )
            .await?;
        Ok(row.map(|row| {
            let wait_us: i64 = row.get(0);
            RateBlock {
                wait: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
                interval: Duration::from_micros(interval_us as u64),
                count: count.max(1),
            }
        }))
    }
}
