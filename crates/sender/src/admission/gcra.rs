//! The GCRA rate limiter of a webhook's `max_per_second`, exact across sender
//! processes: its send slots, one every `1 / max_per_second`, come from one sequence in
//! Postgres (`Store::take_rate_block`), and each sender takes them in blocks.
//!
//! ```text
//!  job ──▶ next slot of this sender's block ──within defer_ms──▶ sleep until it, send
//!              │ block used up                   │ further
//!              ▼                                 ▼
//!          take a block from Postgres ──none──▶ parked (delivery.defer_ms)
//! ```
//!
//! A block is a tenth of a second's worth of slots (at least one): a sender never
//! holds more than that of a webhook's rate, so a sender that stops wastes at most a
//! tenth of a second of it, and one round-trip serves many attempts at high rates. A
//! slot is used only within its own interval (a job too late for it takes the next),
//! so however many senders take blocks, no one-second window holds more than
//! `max_per_second` attempts, plus one for the window's edge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qr3_domain::WebhookId;
use qr3_store::{RateBlock, Store, StoreError};
use tokio::time::Instant;

/// What [`RateLimiter::reserve`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved; wait this long, then send.
    Wait(Duration),
    /// No slot within the wait allowed: the job should be parked.
    Busy,
}

/// Slots of one webhook granted to this sender: `count` slots, `interval` apart, from
/// `start`; `next` is the first not yet used.
#[derive(Debug, Clone)]
pub struct Block {
    start: Instant,
    interval: Duration,
    count: u32,
    next: u32,
}

/// What a block can give a job at a given moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Slot(Duration),
    /// The block's next slot is beyond the wait allowed.
    TooFar,
    /// Every slot of the block is used or over.
    Empty,
}

impl Block {
    pub fn new(granted: RateBlock, now: Instant) -> Self {
        Self {
            start: now + granted.wait,
            interval: granted.interval,
            count: granted.count,
            next: 0,
        }
    }

    /// The next slot still open at `now` (its interval not over), and how long until
    /// it starts.
    pub fn take(&mut self, now: Instant, max_wait: Duration) -> Take {
        while self.next < self.count && self.start + self.interval * (self.next + 1) <= now {
            self.next += 1;
        }
        if self.next == self.count {
            return Take::Empty;
        }
        let wait = (self.start + self.interval * self.next).saturating_duration_since(now);
        if wait > max_wait {
            return Take::TooFar;
        }
        self.next += 1;
        Take::Slot(wait)
    }
}

/// Slots in one block at `rate` per second: a tenth of a second's worth, at least one.
pub fn block_size(rate: u32) -> u32 {
    rate.div_ceil(10).max(1)
}

/// Each webhook's current block in this sender. Fetching a block for one webhook is
/// serialised (an async lock per webhook) so a burst costs one round-trip per block.
#[derive(Clone, Default)]
pub struct RateLimiter {
    blocks: Arc<Mutex<HashMap<WebhookId, BlockCell>>>,
}

/// One webhook's current block, if any; locked across the fetch of the next one.
type BlockCell = Arc<tokio::sync::Mutex<Option<Block>>>;

impl RateLimiter {
    /// Reserves the webhook's next slot at `rate` per second if it starts within
    /// `max_wait`, taking a new block from Postgres when this sender's is used up.
    pub async fn reserve(
        &self,
        store: &Store,
        webhook: &WebhookId,
        rate: u32,
        max_wait: Duration,
    ) -> Result<Reservation, StoreError> {
        let cell = {
            let mut blocks = self.blocks.lock().expect("rate limiter lock poisoned");
            if blocks.len() > 4096 {
                // Forget the blocks nobody is using: a webhook seen again takes a new one.
                blocks.retain(|_, cell| Arc::strong_count(cell) > 1);
            }
            blocks.entry(webhook.clone()).or_default().clone()
        };
        let mut block = cell.lock().await;
        if let Some(current) = block.as_mut() {
            match current.take(Instant::now(), max_wait) {
                Take::Slot(wait) => return Ok(Reservation::Wait(wait)),
                Take::TooFar => return Ok(Reservation::Busy),
                Take::Empty => {}
            }
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let granted = store
            .take_rate_block(webhook, interval, block_size(rate), max_wait)
            .await?;
        let Some(granted) = granted else {
            *block = None;
            return Ok(Reservation::Busy);
        };
        let mut fresh = Block::new(granted, Instant::now());
        let taken = fresh.take(Instant::now(), max_wait);
        *block = Some(fresh);
        Ok(match taken {
            Take::Slot(wait) => Reservation::Wait(wait),
            Take::TooFar | Take::Empty => Reservation::Busy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_hands_out_its_slots_spaced_and_only_within_their_interval() {
        let now = Instant::now();
        let granted = RateBlock {
            wait: ms(20),
            interval: ms(10),
            count: 3,
        };
        let mut block = Block::new(granted, now);
        assert_eq!(block.take(now, ms(5)), Take::TooFar, "20 ms is beyond 5");
        assert_eq!(block.take(now, ms(100)), Take::Slot(ms(20)));
        assert_eq!(block.take(now, ms(100)), Take::Slot(ms(30)));
        // 45 ms later the third slot (40..50 ms) is still open: no wait.
        assert_eq!(block.take(now + ms(45), ms(100)), Take::Slot(ms(0)));
        assert_eq!(block.take(now + ms(45), ms(100)), Take::Empty);
        // A job that comes after a slot's interval is over does not use it.
        let mut late = Block::new(granted, now);
        assert_eq!(late.take(now + ms(41), ms(100)), Take::Slot(ms(0)));
        assert_eq!(late.take(now + ms(41), ms(100)), Take::Empty);
    }

    #[test]
    fn a_block_is_a_tenth_of_a_second_of_the_rate() {
        assert_eq!(block_size(1), 1);
        assert_eq!(block_size(10), 1);
        assert_eq!(block_size(11), 2);
        assert_eq!(block_size(100), 10);
        assert_eq!(block_size(10_000), 1000);
    }
}
