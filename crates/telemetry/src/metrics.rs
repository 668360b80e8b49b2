//! The Prometheus metrics of every role, in one registry per [`Metrics`] value.
//!
//! Names are prefixed `qr3_`; labels never carry ids, so cardinality stays bounded.
//! `docs/metrics.md` describes each metric and which role exports it.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const WEBHOOKS_PER_EVENT_BUCKETS: &[f64] =
    &[0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0];
/// 1 ms to 30 s: the delivery timeout is 10 s by default and configurable.
const RESPONSE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// 1 ms to 1 h: first attempts land in the sub-second buckets, retries around the
/// configured delays (1 and 5 minutes by default).
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 300.0,
    400.0, 600.0, 1800.0, 3600.0,
];
const LOG_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
const FLUSH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric a qr3 process exports, registered in its own [`Registry`] (not the
/// global default one), so several apps in one test process do not collide.
///
/// Cloning is cheap: each field is a reference-counted handle to the same metric.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// API requests, by route template (`/v1/webhooks/{id}`, or `unmatched`), method
    /// and status code.
    pub http_requests_total: IntCounterVec,
    /// API request latency, by route template and method.
    pub http_request_duration_seconds: HistogramVec,
    /// API requests refused with 429, by route template and the limit that refused
    /// them (`api_key`: the key's `api.rate_limit_per_second`; `manual_requests`: the
    /// webhook's `api.manual_requests_per_minute`). Counted by [`crate::track_http`]
    /// from the [`crate::RateLimitedBy`] mark the API puts on such a response.
    pub http_rate_limited_total: IntCounterVec,
    /// Events accepted by ingest, by event type.
    pub events_ingested_total: IntCounterVec,
    /// Events dead-lettered by ingest, by reason (`invalid_json`, `invalid_schema`,
    /// `invalid_field`, `unknown_type`, `too_large`). A duplicate is not a rejection.
    pub events_rejected_total: IntCounterVec,
    /// Events whose id had already been ingested, so were not fanned out again.
    pub events_duplicate_total: IntCounter,
    /// Events of a workspace that does not exist (never created, or deleted):
    /// acknowledged, never fanned out.
    pub events_unknown_workspace_total: IntCounter,
    /// Delivery jobs published by the fan-out.
    pub fanout_jobs_published_total: IntCounter,
    /// Number of subscribed webhooks per ingested event.
    pub fanout_webhooks_per_event: Histogram,
    /// Delivery attempts, by outcome (`success`/`failed`) and attempt (`1`, `2`, `3`, …
    /// or `ping`).
    pub delivery_attempts_total: IntCounterVec,
    /// Time from sending a delivery to the end of the receiver's response.
    pub delivery_response_seconds: Histogram,
    /// Time from the event's creation to the delivery attempt.
    pub delivery_lag_seconds: Histogram,
    /// Retries put on a delay queue, by delay in milliseconds.
    pub retries_scheduled_total: IntCounterVec,
    /// Delivery jobs dropped without an attempt, by reason (`webhook_deleted`,
    /// `webhook_disabled`, `already_delivered`), each decided on a fresh read of
    /// Postgres.
    pub deliveries_skipped_total: IntCounterVec,
    /// Delivery jobs that failed before any attempt could be made (their webhook row or
    /// secret unreadable, or a fault in handling that job alone), by what became of
    /// them: `parked` (tried again after a wait) or `dead_lettered` (after
    /// `delivery.job_failure_limit` failures, alone, to `<prefix>.deliveries.dead`).
    pub delivery_jobs_failed_total: IntCounterVec,
    /// Webhook rows ingest could read only in part or not at all, by reason
    /// (`unknown_event_type`: left out of the row; `unreadable_id`: row left out), per
    /// batch that read them.
    pub webhook_rows_unreadable_total: IntCounterVec,
    /// Waits of a role holding work until a dependency comes back, by dependency
    /// (`database`, `broker`). Work is held in the process, never handed back to the
    /// broker to wait.
    pub dependency_waits_total: IntCounterVec,
    /// Delivery jobs parked in the defer queue: their webhook's circuit breaker was
    /// open, they were not served an in-flight slot within `delivery.defer_ms`, or
    /// their webhook had no `max_per_second` slot within `delivery.defer_ms`.
    pub deliveries_deferred_total: IntCounter,
    /// Delivery jobs held back by their webhook's `max_per_second` (waited for a slot,
    /// or parked when none was near).
    pub deliveries_rate_limited_total: IntCounter,
    /// Webhooks disabled after too many consecutive failures.
    pub webhooks_disabled_total: IntCounter,
    /// Deliveries being attempted right now.
    pub deliveries_in_flight: IntGauge,
    /// Delivery-log rows written per database flush.
    pub log_batch_size: Histogram,
    /// Duration of one delivery-log flush.
    pub log_flush_seconds: Histogram,
    /// 1 while the broker connection is up, else 0.
    pub broker_connected: IntGauge,
    /// 1 while the database answers, else 0.
    pub database_up: IntGauge,
    /// Broker connections re-established after a loss.
    pub broker_reconnects_total: IntCounter,
    /// 1 once shutdown has begun and the process is draining, else 0.
    pub process_draining: IntGauge,
    /// Messages on a dead-letter queue, by `queue` (`ingest`, `deliveries`): read from
    /// the broker every 15 s by the role that feeds it (`qr3_broker::dead_letters`).
    pub dead_letters: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        Self::try_new().expect("metric names, labels and buckets are static and unique")
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let metrics = Self {
            http_requests_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("qr3_http_requests_total", "API requests."),
                    &["route", "method", "status"],
                )?,
            )?,
            http_request_duration_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "qr3_http_request_duration_seconds",
                        "API request latency in seconds.",
                    ),
                    &["route", "method"],
                )?,
            )?,
            http_rate_limited_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_http_rate_limited_total",
                        "API requests refused with 429, by route and limit.",
                    ),
                    &["route", "limit"],
                )?,
            )?,
            events_ingested_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("qr3_events_ingested_total", "Events accepted by ingest."),
                    &["event_type"],
                )?,
            )?,
            events_rejected_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_events_rejected_total",
                        "Events moved to the dead-letter queue, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            events_duplicate_total: register(
                &registry,
                IntCounter::new(
                    "qr3_events_duplicate_total",
                    "Events already ingested, not fanned out again.",
                )?,
            )?,
            events_unknown_workspace_total: register(
                &registry,
                IntCounter::new(
                    "qr3_events_unknown_workspace_total",
                    "Events of a workspace that does not exist, acknowledged and not fanned out.",
                )?,
            )?,
            fanout_jobs_published_total: register(
                &registry,
                IntCounter::new(
                    "qr3_fanout_jobs_published_total",
                    "Delivery jobs published by the fan-out.",
                )?,
            )?,
            fanout_webhooks_per_event: register(
                &registry,
                histogram(
                    "qr3_fanout_webhooks_per_event",
                    "Subscribed webhooks per ingested event.",
                    WEBHOOKS_PER_EVENT_BUCKETS,
                )?,
            )?,
            delivery_attempts_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_delivery_attempts_total",
                        "Delivery attempts, by outcome and attempt number.",
                    ),
                    &["outcome", "attempt"],
                )?,
            )?,
            delivery_response_seconds: register(
                &registry,
                histogram(
                    "qr3_delivery_response_seconds",
                    "Receiver response time in seconds.",
                    RESPONSE_BUCKETS,
                )?,
            )?,
            delivery_lag_seconds: register(
                &registry,
                histogram(
                    "qr3_delivery_lag_seconds",
                    "Seconds from event creation to the delivery attempt.",
                    LAG_BUCKETS,
                )?,
            )?,
            retries_scheduled_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_retries_scheduled_total",
                        "Retries put on a delay queue, by delay in milliseconds.",
                    ),
                    &["delay_ms"],
                )?,
            )?,
            deliveries_skipped_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_deliveries_skipped_total",
                        "Delivery jobs dropped without an attempt, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            delivery_jobs_failed_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_delivery_jobs_failed_total",
                        "Delivery jobs that failed before an attempt could be made, by outcome.",
                    ),
                    &["outcome"],
                )?,
            )?,
            webhook_rows_unreadable_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_webhook_rows_unreadable_total",
                        "Webhook rows ingest could read only in part or not at all, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            dependency_waits_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "qr3_dependency_waits_total",
                        "Waits of a role holding work until a dependency comes back, by dependency.",
                    ),
                    &["dependency"],
                )?,
            )?,
            deliveries_deferred_total: register(
                &registry,
                IntCounter::new(
                    "qr3_deliveries_deferred_total",
                    "Delivery jobs parked because their webhook was at its in-flight cap or rate limit.",
                )?,
            )?,
            deliveries_rate_limited_total: register(
                &registry,
                IntCounter::new(
                    "qr3_deliveries_rate_limited_total",
                    "Delivery jobs held back by their webhook's max_per_second.",
                )?,
            )?,
            webhooks_disabled_total: register(
                &registry,
                IntCounter::new(
                    "qr3_webhooks_disabled_total",
                    "Webhooks disabled after consecutive failures.",
                )?,
            )?,
            deliveries_in_flight: register(
                &registry,
                IntGauge::new(
                    "qr3_deliveries_in_flight",
                    "Deliveries being attempted now.",
                )?,
            )?,
            log_batch_size: register(
                &registry,
                histogram(
                    "qr3_log_batch_size",
                    "Delivery-log rows written per flush.",
                    LOG_BATCH_BUCKETS,
                )?,
            )?,
            log_flush_seconds: register(
                &registry,
                histogram(
                    "qr3_log_flush_seconds",
                    "Duration of one delivery-log flush in seconds.",
                    FLUSH_BUCKETS,
                )?,
            )?,
            broker_connected: register(
                &registry,
                IntGauge::new(
                    "qr3_broker_connected",
                    "1 while the broker connection is up.",
                )?,
            )?,
            database_up: register(
                &registry,
                IntGauge::new("qr3_database_up", "1 while the database answers.")?,
            )?,
            broker_reconnects_total: register(
                &registry,
                IntCounter::new(
                    "qr3_broker_reconnects_total",
                    "Broker connections re-established after a loss.",
                )?,
            )?,
            process_draining: register(
                &registry,
                IntGauge::new(
                    "qr3_process_draining",
                    "1 once shutdown has begun and the process is draining.",
                )?,
            )?,
            dead_letters: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "qr3_dead_letters",
                        "Messages on a dead-letter queue, read from the broker every 15 s.",
                    ),
                    &["queue"],
                )?,
            )?,
            registry,
        };
        #[cfg(target_os = "linux")]
        if let Ok(pid) = prometheus::process_collector::pid_t::try_from(std::process::id()) {
            metrics.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::new(pid, "qr3"),
            ))?;
        }
        // Series whose label values are known start at 0, so they are on /metrics from
        // the first scrape and `increase()` sees their first increment.
        for reason in ["webhook_deleted", "webhook_disabled", "already_delivered"] {
            metrics
                .deliveries_skipped_total
                .with_label_values(&[reason]);
        }
        for outcome in ["parked", "dead_lettered"] {
            metrics
                .delivery_jobs_failed_total
                .with_label_values(&[outcome]);
        }
        for reason in ["unknown_event_type", "unreadable_id"] {
            metrics
                .webhook_rows_unreadable_total
                .with_label_values(&[reason]);
        }
        for dependency in ["database", "broker"] {
            metrics
                .dependency_waits_total
                .with_label_values(&[dependency]);
        }
        Ok(metrics)
    }

    /// The registry holding every metric, for callers that add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// All metrics in the Prometheus text exposition format 0.0.4
    /// ([`prometheus::TEXT_FORMAT`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Cannot fail: `gather` prunes empty families and every name is static.
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<M>(registry: &Registry, metric: M) -> prometheus::Result<M>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_rendered_with_the_qr3_prefix() {
        let metrics = Metrics::new();
        // Vectors only appear once a label set has been used.
        metrics
            .http_requests_total
            .with_label_values(&["/healthz", "GET", "200"])
            .inc();
        metrics
            .http_request_duration_seconds
            .with_label_values(&["/healthz", "GET"])
            .observe(0.01);
        metrics
            .http_rate_limited_total
            .with_label_values(&["/v1/webhooks", "api_key"])
            .inc();
        metrics
            .events_ingested_total
            .with_label_values(&["qr.scanned"])
            .inc();
        metrics
            .events_rejected_total
            .with_label_values(&["invalid_json"])
            .inc();
        metrics
            .delivery_attempts_total
            .with_label_values(&["success", "1"])
            .inc();
        metrics
            .retries_scheduled_total
            .with_label_values(&["60000"])
            .inc();
        metrics
            .deliveries_skipped_total
            .with_label_values(&["webhook_deleted"])
            .inc();
        metrics.dead_letters.with_label_values(&["ingest"]).set(0);

        let text = metrics.render();
        for name in [
            "qr3_http_requests_total",
            "qr3_http_request_duration_seconds",
            "qr3_http_rate_limited_total",
            "qr3_events_ingested_total",
            "qr3_events_rejected_total",
            "qr3_events_duplicate_total",
            "qr3_events_unknown_workspace_total",
            "qr3_fanout_jobs_published_total",
            "qr3_fanout_webhooks_per_event",
            "qr3_delivery_attempts_total",
            "qr3_delivery_response_seconds",
            "qr3_delivery_lag_seconds",
            "qr3_retries_scheduled_total",
            "qr3_deliveries_skipped_total",
            "qr3_delivery_jobs_failed_total",
            "qr3_webhook_rows_unreadable_total",
            "qr3_dependency_waits_total",
            "qr3_deliveries_deferred_total",
            "qr3_deliveries_rate_limited_total",
            "qr3_webhooks_disabled_total",
            "qr3_deliveries_in_flight",
            "qr3_log_batch_size",
            "qr3_log_flush_seconds",
            "qr3_broker_connected",
            "qr3_database_up",
            "qr3_broker_reconnects_total",
            "qr3_process_draining",
            "qr3_dead_letters",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("qr3_"), "unprefixed sample: {line}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported_under_the_prefix() {
        let text = Metrics::new().render();
        assert!(text.contains("qr3_process_cpu_seconds_total"), "{text}");
        assert!(text.contains("qr3_process_resident_memory_bytes"), "{text}");
    }

    #[test]
    fn each_value_has_its_own_registry() {
        let first = Metrics::new();
        let second = Metrics::new();
        first.events_duplicate_total.inc();
        assert_eq!(first.clone().events_duplicate_total.get(), 1);
        assert_eq!(second.events_duplicate_total.get(), 0);
    }
}
