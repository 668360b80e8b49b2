//! Waiting for a dependency to come back: capped exponential backoff with jitter, in
//! the process, so a message held meanwhile is never handed back to the broker (each
//! return counts towards a quorum queue's delivery limit).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff: `first`, doubling up to `max`, each wait shortened by a
/// random fraction of up to a quarter so that many waiters do not retry in step. It
/// also decides which failures are worth a log line ([`Backoff::worth_logging`]), so a
/// long outage says what it is without a line per try.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    tries: u32,
    /// At the longest wait, how often a failure is logged again.
    reminder: Duration,
    /// The wait level and reason of the last failure logged, and when.
    logged: Option<(Duration, String, Instant)>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
            tries: 0,
            reminder: Duration::from_secs(60),
            logged: None,
        }
    }

    /// How often, at the longest wait, a failure is logged again (a minute unless set).
    pub fn with_reminder(mut self, reminder: Duration) -> Self {
        self.reminder = reminder;
        self
    }

    /// A try failed because of `why` (call before [`Backoff::next_wait`]): whether to
    /// log it. The first failure at each wait length is, and so is one whose reason
    /// differs from the last logged, and at the longest wait one per reminder.
    pub fn worth_logging(&mut self, why: &str) -> bool {
        let level = self.next;
        let log = match &self.logged {
            None => true,
            Some((logged_level, logged_why, at)) => {
                *logged_level != level
                    || logged_why != why
                    || (level == self.max && at.elapsed() >= self.reminder)
            }
        };
        if log {
            self.logged = Some((level, why.to_owned(), Instant::now()));
        }
        log
    }

    /// 100 ms doubling to 5 s: for a database or broker coming back.
    pub fn dependency() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next wait (and doubles the one after it).
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.tries += 1;
        let jitter = base.mul_f64(jitter_fraction() * 0.25);
        base - jitter
    }

    /// Waits the next wait; `false` when `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// Waits so far.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    pub fn reset(&mut self) {
        self.next = self.first;
        self.tries = 0;
        self.logged = None;
    }
}

/// A number in [0, 1) that differs from call to call (no need for a good generator:
/// it only spreads retries out).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_at_most_a_quarter_off() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..5).map(|_| backoff.next_wait()).collect();
        for (wait, base) in waits.iter().zip([100, 200, 400, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(
                *wait <= base && *wait >= base.mul_f64(0.75),
                "{wait:?} for {base:?}"
            );
        }
        assert_eq!(backoff.tries(), 5);
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn logs_once_per_wait_length_a_new_reason_and_a_reminder_at_the_cap() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(800)).with_reminder(Duration::from_secs(3600));
        let logged: Vec<bool> = (0..7)
            .map(|_| {
                let log = backoff.worth_logging("refused");
                backoff.next_wait();
                log
            })
            .collect();
        assert_eq!(logged, [true, true, true, true, false, false, false]);
        assert!(
            backoff.worth_logging("schema too old"),
            "a new reason is logged"
        );
        assert!(!backoff.worth_logging("schema too old"));
        let mut reminding = Backoff::new(ms(100), ms(100)).with_reminder(ms(0));
        assert!(reminding.worth_logging("refused"));
        assert!(
            reminding.worth_logging("refused"),
            "at the cap, every reminder"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_early_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let waiting = backoff.wait(&shutdown);
        shutdown.cancel();
        assert!(!waiting.await);
    }
}
