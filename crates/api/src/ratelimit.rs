//! The per-caller request rate limit of the public API (`api.rate_limit_per_second`,
//! `api.rate_limit_burst`): a token bucket per authenticated caller, answering 429 with
//! `Retry-After` once the caller's bucket is empty.
//!
//! The buckets are `governor`'s keyed GCRA limiter (a token bucket without a timer: one
//! timestamp per key, updated with a compare-and-swap). They live in this process, so
//! the limit holds per API replica: a key whose requests a load balancer spreads over
//! N replicas gets up to N times the rate. That is the price of keeping the hot path
//! free of a shared store; `docs/security.md` says how to size it.
//!
//! A caller is spent from only after it has authenticated, so nobody can empty another
//! caller's bucket by presenting its id with a wrong secret.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};
use qr3_domain::{ApiKeyId, WorkspaceId};

use crate::error::ApiError;

/// Who a request is counted against: one bucket per value. New kinds of credential
/// (operator tokens) become new variants, checked by their extractor once it has
/// authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// A workspace API key, by its public id (`key_…`), never its secret.
    ApiKey(ApiKeyId),
    /// Every portal session of a workspace, together: minting more sessions does not
    /// buy more requests. The bucket is the size of one API key's.
    PortalSessions(WorkspaceId),
}

/// Which limit refused a request: the `limit` label of `qr3_http_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// An API key's request rate (`api.rate_limit_per_second`), this module.
    ApiKey,
    /// The request rate of a workspace's portal sessions (the same settings).
    PortalSession,
    /// A webhook's manual retries and recoveries (`api.manual_requests_per_minute`).
    ManualRequests,
}

impl Limit {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::ApiKey => "api_key",
            Limit::PortalSession => "portal_session",
            Limit::ManualRequests => "manual_requests",
        }
    }
}

/// Every this many checks (a power of two), the buckets of callers that have been idle
/// long enough to be full again are dropped (they would behave as a fresh bucket).
const FORGET_IDLE_EVERY: u32 = 4096;
const _: () = assert!(FORGET_IDLE_EVERY.is_power_of_two());

/// The buckets of every caller of this process.
pub(crate) struct RateLimit {
    limiter: DefaultKeyedRateLimiter<Caller>,
    checks: AtomicU32,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("callers", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// `per_second` requests a second with bursts of `burst`; zero counts as one (the
    /// configuration refuses zero).
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let at_least_one = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(at_least_one(per_second)).allow_burst(at_least_one(burst));
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU32::new(0),
        }
    }

    /// Spends one request of `caller`'s bucket, or answers 429 with the whole seconds
    /// until the bucket holds one again.
    pub(crate) fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) & (FORGET_IDLE_EVERY - 1) == 0 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(caller).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let (limit, message) = match caller {
                Caller::ApiKey(_) => (
                    Limit::ApiKey,
                    "too many requests with this API key; retry after `Retry-After` seconds",
                ),
                Caller::PortalSessions(_) => (
                    Limit::PortalSession,
                    "too many requests from this workspace's portal sessions; retry after \
                     `Retry-After` seconds",
                ),
            };
            ApiError::RateLimited {
                limit,
                message,
                // Rounded up: a client retrying on time must find a request in its bucket.
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Caller {
        Caller::ApiKey(ApiKeyId::generate())
    }

    #[test]
    fn a_caller_gets_its_burst_then_429_with_retry_after() {
        let limit = RateLimit::new(1, 3);
        let caller = key();
        for _ in 0..3 {
            assert!(limit.check(&caller).is_ok());
        }
        match limit.check(&caller) {
            Err(ApiError::RateLimited {
                limit,
                retry_after_secs,
                ..
            }) => {
                assert_eq!(limit, Limit::ApiKey);
                assert_eq!(retry_after_secs, 1);
            }
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[test]
    fn callers_have_separate_buckets() {
        let limit = RateLimit::new(1, 1);
        let (first, second) = (key(), key());
        assert!(limit.check(&first).is_ok());
        assert!(limit.check(&first).is_err());
        assert!(limit.check(&second).is_ok());
    }
}
