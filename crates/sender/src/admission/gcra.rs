//! The GCRA rate limiter of a webhook's `max_per_second`, exact across sender
//! processes: its send slots, one every `1 / max_per_second`, come from one sequence in
//! Postgres (`Store::take_rate_block`), and each sender takes them in blocks.
//!
//! ```text
//!  job ──▶ next slot of this sender's block ──within defer_ms──▶ sleep until it ──▶ send
//!              │ block used up                   │ further          │ woke past its end
//!              ▼                                 ▼                  ▼
//!          take a block from Postgres ──none──▶ parked          next slot (same way)
//!                                          (delivery.defer_ms)
//! ```
//!
//! A block is a tenth of a second's worth of slots (at least one): a sender never
//! holds more than that of a webhook's rate, so a sender that stops wastes at most a
//! tenth of a second of it, and one round-trip serves many attempts at high rates.
//!
//! A slot is an interval of Postgres's clock. The sender knows where that interval
//! lies on its own clock only to within the round-trip of the statement that granted
//! it (the statement read the clock somewhere between sending and answering), so it
//! uses only the part it is sure of: from the latest the slot can start (placed by
//! the answer's arrival) to the earliest it can end (placed by the statement's
//! sending). When the round-trip is longer than a slot that part is empty, and
//! consecutive slots are joined into one send until it is not. An attempt starts only
//! inside its window, checked again after the sleep: a job whose timer woke too late
//! takes another slot. So every attempt lies inside the Postgres interval of the
//! slots it used, whatever the round-trips, timer delays and number of senders, and no
//! one-second window holds more than `max_per_second` attempts, plus one for the
//! window's edge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qr3_domain::WebhookId;
use qr3_store::{RateBlock, Store, StoreError};
use tokio::time::Instant;

/// What [`RateLimiter::reserve`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved: the attempt may start inside this window.
    Slot(Window),
    /// No slot within the wait allowed: the job should be parked.
    Busy,
}

/// When a reserved attempt may start: from `start` until before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// Whether an attempt starting at `now` is inside the window.
    pub fn admits(&self, now: Instant) -> bool {
        self.start <= now && now < self.end
    }
}

/// Slots of one webhook granted to this sender: `count` slots, `interval` apart. On
/// this sender's clock the first starts no later than `latest` and no earlier than
/// `earliest` (`latest - earliest` is the statement's round-trip); a send uses `join`
/// consecutive slots, the fewest whose sure part is not empty; `next` is the first
/// slot not yet used.
#[derive(Debug, Clone)]
pub struct Block {
    latest: Instant,
    earliest: Instant,
    interval: Duration,
    count: u32,
    join: u32,
    next: u32,
}

/// What a block can give a job at a given moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Slot(Window),
    /// The block's next slot is beyond the wait allowed.
    TooFar,
    /// Every slot of the block is used or over.
    Empty,
}

impl Block {
    /// The block `granted` by a statement sent at `sent` and answered at `answered`.
    pub fn new(granted: RateBlock, sent: Instant, answered: Instant) -> Self {
        let interval = granted.interval.max(Duration::from_nanos(1));
        let round_trip = answered.saturating_duration_since(sent);
        let join = round_trip.as_nanos() / interval.as_nanos() + 1;
        Self {
            latest: answered + granted.wait,
            earliest: sent.min(answered) + granted.wait,
            interval,
            count: granted.count,
            join: u32::try_from(join).unwrap_or(u32::MAX),
            next: 0,
        }
    }

    /// The window of the send made of slots `first..first + join`.
    fn window(&self, first: u32) -> Window {
        Window {
            start: self.latest + self.interval * first,
            end: self.earliest + self.interval * first.saturating_add(self.join),
        }
    }

    /// The next send still open at `now` (its window not over), if it starts within
    /// `max_wait`.
    pub fn take(&mut self, now: Instant, max_wait: Duration) -> Take {
        loop {
            if self.count.saturating_sub(self.next) < self.join {
                return Take::Empty;
            }
            let window = self.window(self.next);
            if window.end <= now {
                self.next += self.join;
                continue;
            }
            if window.start.saturating_duration_since(now) > max_wait {
                return Take::TooFar;
            }
            self.next += self.join;
            return Take::Slot(window);
        }
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
    /// Reserves the webhook's next send at `rate` per second if its window opens within
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
                Take::Slot(window) => return Ok(Reservation::Slot(window)),
                Take::TooFar => return Ok(Reservation::Busy),
                Take::Empty => {}
            }
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let sent = Instant::now();
        let granted = store
            .take_rate_block(webhook, interval, block_size(rate), max_wait)
            .await?;
        let answered = Instant::now();
        let Some(granted) = granted else {
            *block = None;
            return Ok(Reservation::Busy);
        };
        let mut fresh = Block::new(granted, sent, answered);
        let taken = fresh.take(answered, max_wait);
        *block = Some(fresh);
        Ok(match taken {
            Take::Slot(window) => Reservation::Slot(window),
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

    fn block(wait: u64, interval: u64, count: u32) -> RateBlock {
        RateBlock {
            wait: ms(wait),
            interval: ms(interval),
            count,
        }
    }

    fn window(start: Instant, end: Instant) -> Take {
        Take::Slot(Window { start, end })
    }

    #[test]
    fn a_block_hands_out_its_slots_spaced_and_only_within_their_interval() {
        let now = Instant::now();
        let mut slots = Block::new(block(20, 10, 3), now, now);
        assert_eq!(slots.take(now, ms(5)), Take::TooFar, "20 ms is beyond 5");
        assert_eq!(slots.take(now, ms(100)), window(now + ms(20), now + ms(30)));
        assert_eq!(slots.take(now, ms(100)), window(now + ms(30), now + ms(40)));
        // 45 ms later the third slot (40..50 ms) is still open.
        assert_eq!(
            slots.take(now + ms(45), ms(100)),
            window(now + ms(40), now + ms(50))
        );
        assert_eq!(slots.take(now + ms(45), ms(100)), Take::Empty);
        // A job that comes after a slot's interval is over does not use it.
        let mut late = Block::new(block(20, 10, 3), now, now);
        assert_eq!(
            late.take(now + ms(41), ms(100)),
            window(now + ms(40), now + ms(50))
        );
        assert_eq!(late.take(now + ms(41), ms(100)), Take::Empty);
    }

    #[test]
    fn a_slot_is_used_only_where_it_surely_lies_on_postgres_clock() {
        // The statement was sent at 0 and answered at 4 ms: Postgres read its clock
        // somewhere in between, so the first slot (10 ms long, 20 ms after that read)
        // lies somewhere from 20..30 to 24..34 ms. Only 24..30 is sure.
        let sent = Instant::now();
        let mut slots = Block::new(block(20, 10, 2), sent, sent + ms(4));
        assert_eq!(
            slots.take(sent + ms(4), ms(100)),
            window(sent + ms(24), sent + ms(30))
        );
        assert_eq!(
            slots.take(sent + ms(4), ms(100)),
            window(sent + ms(34), sent + ms(40))
        );
        assert_eq!(slots.take(sent + ms(4), ms(100)), Take::Empty);
    }

    #[test]
    fn slots_shorter_than_the_round_trip_are_joined_into_one_send() {
        // A 25 ms round-trip and 10 ms slots: three slots make a 5 ms sure window.
        let sent = Instant::now();
        let answered = sent + ms(25);
        let mut slots = Block::new(block(0, 10, 7), sent, answered);
        assert_eq!(
            slots.take(answered, ms(100)),
            window(sent + ms(25), sent + ms(30))
        );
        assert_eq!(
            slots.take(answered, ms(100)),
            window(sent + ms(55), sent + ms(60))
        );
        // One slot is left, too short to be sure of: the block is used up.
        assert_eq!(slots.take(answered, ms(100)), Take::Empty);
        // A round-trip longer than the whole block leaves nothing usable.
        let mut slow = Block::new(block(0, 10, 2), sent, sent + ms(30));
        assert_eq!(slow.take(sent + ms(30), ms(100)), Take::Empty);
    }

    #[test]
    fn a_block_is_a_tenth_of_a_second_of_the_rate() {
        assert_eq!(block_size(1), 1);
        assert_eq!(block_size(10), 1);
        assert_eq!(block_size(11), 2);
        assert_eq!(block_size(100), 10);
        assert_eq!(block_size(10_000), 1000);
    }

    /// A deterministic pseudo-random sequence (xorshift) for the simulation.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, bound: Duration) -> Duration {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX).max(1);
            Duration::from_nanos(self.0 % nanos)
        }
    }

    /// The sequence row of `Store::take_rate_block`, on Postgres's clock.
    struct Sequence {
        next: Option<Instant>,
    }

    impl Sequence {
        fn take(
            &mut self,
            now: Instant,
            interval: Duration,
            count: u32,
            max_wait: Duration,
        ) -> Option<RateBlock> {
            let next = self.next.unwrap_or(now);
            if next > now + max_wait {
                return None;
            }
            let start = next.max(now);
            self.next = Some(start + interval * count);
            Some(RateBlock {
                wait: start - now,
                interval,
                count,
            })
        }
    }

    /// One simulated sender: what it does next, and when.
    enum Step {
        /// Ready for a job.
        Idle(Instant),
        /// Its statement reaches Postgres at the first moment; it was sent at the second.
        Asking(Instant, Instant),
        /// Its timer fires at the first moment for a send inside the window.
        Sleeping(Instant, Window),
    }

    impl Step {
        fn at(&self) -> Instant {
            match self {
                Step::Idle(at) | Step::Asking(at, _) | Step::Sleeping(at, _) => *at,
            }
        }
    }

    /// `senders` senders send `jobs` attempts at `rate` per second, each statement's
    /// round-trip and each timer's lateness drawn below the bounds given; the attempts'
    /// start times.
    fn simulate(
        rate: u32,
        senders: usize,
        jobs: usize,
        round_trip: Duration,
        lateness: Duration,
        seed: u64,
    ) -> Vec<Instant> {
        let max_wait = ms(200);
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let t0 = Instant::now();
        let mut dice = Dice(seed);
        let mut sequence = Sequence { next: None };
        let mut steps: Vec<Step> = (0..senders)
            .map(|n| Step::Idle(t0 + ms(n as u64)))
            .collect();
        let mut blocks: Vec<Option<Block>> = vec![None; senders];
        let mut sent = Vec::new();
        while sent.len() < jobs {
            let (who, _) = steps
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.at())
                .unwrap();
            let next = match steps[who] {
                Step::Idle(now) => match blocks[who].as_mut().map(|b| b.take(now, max_wait)) {
                    Some(Take::Slot(w)) => {
                        Step::Sleeping(w.start.max(now) + dice.below(lateness), w)
                    }
                    Some(Take::TooFar) => Step::Idle(now + ms(5)),
                    Some(Take::Empty) | None => {
                        let there = dice.below(round_trip);
                        Step::Asking(now + there, now)
                    }
                },
                Step::Asking(at, asked) => {
                    let answered = at + dice.below(round_trip);
                    match sequence.take(at, interval, block_size(rate), max_wait) {
                        None => Step::Idle(answered + ms(5)),
                        Some(granted) => {
                            blocks[who] = Some(Block::new(granted, asked, answered));
                            Step::Idle(answered)
                        }
                    }
                }
                Step::Sleeping(now, w) => {
                    if w.admits(now) {
                        sent.push(now);
                    }
                    Step::Idle(now)
                }
            };
            steps[who] = next;
        }
        sent
    }

    fn busiest_second(mut times: Vec<Instant>) -> usize {
        times.sort();
        let mut first = 0;
        let mut busiest = 0;
        for (last, at) in times.iter().enumerate() {
            while *at - times[first] >= Duration::from_secs(1) {
                first += 1;
            }
            busiest = busiest.max(last + 1 - first);
        }
        busiest
    }

    #[test]
    fn senders_together_never_exceed_the_rate_whatever_the_round_trips_and_timers() {
        for (rate, senders) in [(20, 3), (20, 8), (100, 3), (1000, 4), (7, 5)] {
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
            for (round_trip, lateness) in [
                (ms(1), ms(1)),
                (interval / 2, interval),
                (interval * 3, interval * 2),
                (ms(120), ms(80)),
            ] {
                for seed in 1..6 {
                    let jobs = rate as usize * 3;
                    let sent = simulate(rate, senders, jobs, round_trip, lateness, seed);
                    let busiest = busiest_second(sent);
                    assert!(
                        busiest <= rate as usize + 1,
                        "{busiest} in one second at {rate}/s, {senders} senders, \
                         round-trip < {round_trip:?}, lateness < {lateness:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_round_trips_use_the_whole_rate() {
        let sent = simulate(100, 3, 500, ms(1), ms(1), 7);
        let busiest = busiest_second(sent);
        assert!(busiest >= 95, "{busiest} in the busiest second at 100/s");
    }
}
