//! The circuit breaker of one webhook in one sender: whether its jobs may try for a
//! slot at all, or are parked on the defer queues with exponential backoff.
//!
//! ```text
//!            stall (no slot freed for the stall window),
//!            or `trips` timeouts in a row
//!  CLOSED ───────────────────────────────────────▶ OPEN(step)
//!    ▲                                               │ backoff(step) elapsed
//!    │ an answer, or the webhook gone                ▼
//!    └──────────────────────────────────────────── HALF-OPEN(step)
//!                                                    │ the probe times out, or
//!                                                    │ no slot is free for it
//!                                                    ▼
//!                                                 OPEN(step + 1)
//! ```
//!
//! A *stall* is a webhook at its in-flight cap that has freed no slot for the stall
//! window: longer than any healthy attempt holds a slot (the rate limit's wait, at most
//! `delivery.defer_ms`, plus the request, at most `delivery.timeout_ms`), so every
//! attempt in flight is stuck. A slow receiver is not stalled: however long it takes to
//! answer, it answers within the timeout, which frees a slot. (A receiver that does not
//! answer is usually caught first by its timeouts.) An *answer* is any response (a 500
//! included: the receiver is there) or any error other than a timeout. The webhook
//! *gone* (deleted or disabled: its jobs are skipped, whatever the receiver does) also
//! closes the breaker, in any state. `backoff(step)` is
//! `delivery.defer_ms` × 2^step, the wait of the defer queue of that step, so a job
//! parked while the breaker is open comes back about when it is half-open again; the
//! step stops at the last defer queue. The breaker is pure: time is passed in.

use std::time::Duration;

use tokio::time::Instant;

/// How an attempt ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response, or an error other than a timeout.
    Answered,
    /// No response within `delivery.timeout_ms`.
    TimedOut,
    /// No request was sent (already delivered, parked by the rate limit, failed before
    /// sending).
    NotSent,
    /// No request: the webhook is deleted or disabled, so each of its jobs will be
    /// skipped, not sent. Holding them back would only delay that (and cycle them
    /// through the defer queues one probe at a time): the breaker closes.
    Gone,
}

/// What the breaker lets a job do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Closed: try for a slot.
    Pass,
    /// Half-open: this job is the probe; it may take a free slot but not wait for one.
    Probe,
    /// Open (or half-open with its probe out): park on the defer queue of this step.
    Park(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { timeouts: u32 },
    Open { step: u32, until: Instant },
    HalfOpen { step: u32, probing: bool },
}

/// The breaker's rules: how many timeouts in a row open it, the first backoff and the
/// last step (the defer queues).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub trips: u32,
    pub backoff: Duration,
    pub last_step: u32,
}

impl Rules {
    /// `backoff` × 2^step.
    pub fn backoff(&self, step: u32) -> Duration {
        self.backoff * (1u32 << step.min(self.last_step))
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed { timeouts: 0 },
        }
    }
}

impl Breaker {
    pub fn state(&self) -> State {
        self.state
    }

    /// Closed with nothing counted: an entry in this state can be forgotten.
    pub fn is_resting(&self) -> bool {
        self.state == State::Closed { timeouts: 0 }
    }

    /// Whether a job arriving at `now` may try for a slot.
    pub fn decide(&mut self, now: Instant) -> Decision {
        if let State::Open { step, until } = self.state {
            if now < until {
                return Decision::Park(step);
            }
            self.state = State::HalfOpen {
                step,
                probing: false,
            };
        }
        match &mut self.state {
            State::Closed { .. } => Decision::Pass,
            State::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                Decision::Probe
            }
            State::HalfOpen { step, .. } | State::Open { step, .. } => Decision::Park(*step),
        }
    }

    /// The probe found every slot still taken: the webhook freed nothing during the
    /// backoff. Opens again, one step further.
    pub fn probe_refused(&mut self, rules: &Rules, now: Instant) {
        if let State::HalfOpen { step, .. } = self.state {
            self.open(rules, now, (step + 1).min(rules.last_step));
        }
    }

    /// The webhook, at its cap, freed no slot for the whole stall window.
    pub fn stalled(&mut self, rules: &Rules, now: Instant) {
        if let State::Closed { .. } = self.state {
            self.open(rules, now, 0);
        }
    }

    /// An attempt (holding one of the webhook's slots) ended.
    pub fn record(&mut self, rules: &Rules, outcome: Outcome, now: Instant) {
        match (self.state, outcome) {
            (_, Outcome::Gone) => self.state = State::Closed { timeouts: 0 },
            (_, Outcome::NotSent) => {
                // A probe that sent nothing tells nothing: let the next job probe.
                if let State::HalfOpen {
                    step,
                    probing: true,
                } = self.state
                {
                    self.state = State::HalfOpen {
                        step,
                        probing: false,
                    };
                }
            }
            (State::Closed { .. }, Outcome::Answered) => {
                self.state = State::Closed { timeouts: 0 };
            }
            (State::Closed { timeouts }, Outcome::TimedOut) => {
                if timeouts + 1 >= rules.trips {
                    self.open(rules, now, 0);
                } else {
                    self.state = State::Closed {
                        timeouts: timeouts + 1,
                    };
                }
            }
            (State::HalfOpen { .. }, Outcome::Answered) => {
                self.state = State::Closed { timeouts: 0 };
            }
            (State::HalfOpen { step, .. }, Outcome::TimedOut) => {
                self.open(rules, now, (step + 1).min(rules.last_step));
            }
            // While open, answers of attempts sent before it opened wait for the
            // half-open probe to count; timeouts change nothing.
            (State::Open { .. }, _) => {}
        }
    }

    fn open(&mut self, rules: &Rules, now: Instant, step: u32) {
        self.state = State::Open {
            step,
            until: now + rules.backoff(step),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        trips: 3,
        backoff: Duration::from_millis(1000),
        last_step: 3,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn closed_lets_jobs_through_and_answers_keep_it_closed() {
        let mut b = Breaker::default();
        let now = Instant::now();
        assert_eq!(b.decide(now), Decision::Pass);
        b.record(&RULES, Outcome::TimedOut, now);
        b.record(&RULES, Outcome::TimedOut, now);
        b.record(&RULES, Outcome::Answered, now);
        assert_eq!(b.state(), State::Closed { timeouts: 0 }, "an answer resets");
        assert!(b.is_resting());
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_timeouts_open_it_and_the_backoff_doubles() {
        let mut b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(&RULES, Outcome::TimedOut, t0);
        }
        assert_eq!(b.decide(t0), Decision::Park(0));
        assert_eq!(b.decide(t0 + ms(999)), Decision::Park(0));
        // The backoff is over: one probe, the others park.
        let t1 = t0 + ms(1000);
        assert_eq!(b.decide(t1), Decision::Probe);
        assert_eq!(b.decide(t1), Decision::Park(0));
        // The probe times out: open again for twice as long.
        b.record(&RULES, Outcome::TimedOut, t1);
        assert_eq!(b.decide(t1 + ms(1999)), Decision::Park(1));
        assert_eq!(b.decide(t1 + ms(2000)), Decision::Probe);
        b.record(&RULES, Outcome::Answered, t1 + ms(2000));
        assert_eq!(b.decide(t1 + ms(2000)), Decision::Pass, "closed again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_opens_it_and_a_refused_probe_goes_a_step_further_up_to_the_last() {
        let mut b = Breaker::default();
        let mut now = Instant::now();
        b.stalled(&RULES, now);
        assert_eq!(b.decide(now), Decision::Park(0));
        for step in 1..=4 {
            now += RULES.backoff(step - 1);
            assert_eq!(b.decide(now), Decision::Probe);
            b.probe_refused(&RULES, now);
            assert_eq!(b.decide(now), Decision::Park(step.min(3)));
        }
        assert_eq!(RULES.backoff(3), ms(8000));
        assert_eq!(
            RULES.backoff(7),
            ms(8000),
            "no step past the last defer queue"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_sent_nothing_lets_the_next_job_probe() {
        let mut b = Breaker::default();
        let now = Instant::now();
        b.stalled(&RULES, now);
        let later = now + ms(1000);
        assert_eq!(b.decide(later), Decision::Probe);
        b.record(&RULES, Outcome::NotSent, later);
        assert_eq!(b.decide(later), Decision::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_webhook_closes_it_so_its_jobs_are_skipped_not_parked() {
        let mut b = Breaker::default();
        let now = Instant::now();
        b.stalled(&RULES, now);
        let later = now + ms(1000);
        assert_eq!(b.decide(later), Decision::Probe);
        b.record(&RULES, Outcome::Gone, later);
        assert_eq!(b.decide(later), Decision::Pass);
        assert!(b.is_resting());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_while_open_wait_for_the_probe() {
        let mut b = Breaker::default();
        let now = Instant::now();
        b.stalled(&RULES, now);
        b.record(&RULES, Outcome::Answered, now + ms(10));
        assert_eq!(b.decide(now + ms(10)), Decision::Park(0));
        // A stall while open or half-open changes nothing.
        b.stalled(&RULES, now + ms(20));
        assert_eq!(b.decide(now + ms(1000)), Decision::Probe);
    }
}
