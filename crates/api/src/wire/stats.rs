//! A webhook's health on the wire: attempts, success ratio and latency percentiles over
//! the last hour and the last day.

use qr3_domain::WebhookId;
use serde::Serialize;
use utoipa::ToSchema;

/// Delivery attempts of one webhook over the last hour and the last day. Pings are
/// tests, not traffic: only attempts triggered by an event or a manual resend count.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"webhook_id": "wh_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "generated_at": "2026-03-15T10:00:00.000Z",
    "last_hour": {"attempts": 4, "succeeded": 3, "failed": 1, "success_ratio": 0.75,
        "latency_ms": {"p50": 145, "p90": 310, "p99": 310}},
    "last_day": {"attempts": 96, "succeeded": 90, "failed": 6, "success_ratio": 0.9375,
        "latency_ms": {"p50": 140, "p90": 300, "p99": 2210}}}))]
pub struct WebhookStats {
    /// `wh_` followed by 26 characters.
    pub webhook_id: String,
    /// When the windows end (the database's clock).
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub generated_at: String,
    pub last_hour: StatsWindow,
    pub last_day: StatsWindow,
}

impl WebhookStats {
    pub fn new(webhook: &WebhookId, stats: qr3_store::WebhookStats) -> Self {
        Self {
            webhook_id: webhook.to_string(),
            generated_at: stats.generated_at.to_string(),
            last_hour: stats.last_hour.into(),
            last_day: stats.last_day.into(),
        }
    }
}

/// The attempts of one window, ending at `generated_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsWindow {
    /// Attempts made in the window, retries included.
    pub attempts: u64,
    /// Attempts the endpoint answered with a 2xx.
    pub succeeded: u64,
    /// Every other attempt: 3xx, 4xx, 5xx or no response.
    pub failed: u64,
    /// `succeeded / attempts`, from 0 to 1; `null` without attempts.
    #[schema(required = true, minimum = 0, maximum = 1)]
    pub success_ratio: Option<f64>,
    pub latency_ms: LatencyPercentiles,
}

impl From<qr3_store::StatsWindow> for StatsWindow {
    fn from(w: qr3_store::StatsWindow) -> Self {
        Self {
            attempts: w.attempts,
            succeeded: w.succeeded,
            failed: w.failed,
            success_ratio: (w.attempts > 0).then(|| w.succeeded as f64 / w.attempts as f64),
            latency_ms: w.latency_ms.into(),
        }
    }
}

/// Percentiles of `response_time_ms`, in milliseconds. Each is a time actually observed:
/// the smallest one that at least that share of the attempts did not exceed (`p90`: 90%
/// took at most this long). `null` without attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyPercentiles {
    #[schema(required = true)]
    pub p50: Option<u32>,
    #[schema(required = true)]
    pub p90: Option<u32>,
    #[schema(required = true)]
    pub p99: Option<u32>,
}

impl From<qr3_store::LatencyPercentiles> for LatencyPercentiles {
    fn from(p: qr3_store::LatencyPercentiles) -> Self {
        Self {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
        }
    }
}
