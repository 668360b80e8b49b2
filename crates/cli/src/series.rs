//! Every labelled series whose label values are known, created at 0 when a process
//! starts, so each metric of docs/metrics.md is on `/metrics` from the first scrape and
//! `increase()` sees a series' first increment (a series born at 1 has no increase).
//!
//! Known values come from where they are defined: event types from the domain, reject
//! reasons from the broker, attempt numbers and retry delays from the settings, API
//! routes, methods and statuses from the OpenAPI document. Series whose values are
//! not known in advance (an undocumented status) still appear on first use.

use qr3_broker::{DeadQueue, Rejection};
use qr3_config::Settings;
use qr3_domain::EventType;
use qr3_telemetry::Metrics;

use crate::Roles;

/// Creates the known series of `metrics` at 0.
pub fn initialise(metrics: &Metrics, settings: &Settings, roles: Roles) {
    for event_type in EventType::ALL.iter().filter(|t| t.is_publishable()) {
        metrics
            .events_ingested_total
            .with_label_values(&[event_type.as_str()]);
    }
    for reason in Rejection::REASONS {
        metrics.events_rejected_total.with_label_values(&[reason]);
    }
    let attempts = (1..=settings.delivery.max_attempts())
        .map(|n| n.to_string())
        .chain(["ping".to_owned(), "manual".to_owned()]);
    for attempt in attempts {
        for outcome in ["success", "failed"] {
            metrics
                .delivery_attempts_total
                .with_label_values(&[outcome, &attempt]);
        }
    }
    for delay in &settings.delivery.retry_delays_ms {
        metrics
            .retries_scheduled_total
            .with_label_values(&[&delay.to_string()]);
    }
    api_routes(metrics);
    // A depth is known once read: each worker reads its own queue's at start, so its
    // series starts at 0 only in the process that keeps it up to date.
    for (runs, queue) in [
        (roles.ingest, DeadQueue::Ingest),
        (roles.sender, DeadQueue::Deliveries),
    ] {
        if runs {
            metrics.dead_letters.with_label_values(&[queue.label()]);
        }
    }
}

/// Every route template and method the API documents, with each status it documents;
/// the API key's rate limit on every `/v1` route.
fn api_routes(metrics: &Metrics) {
    for (route, item) in qr3_api::openapi_document().paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            metrics
                .http_request_duration_seconds
                .with_label_values(&[&route, method]);
            for status in operation.responses.responses.keys() {
                if status.parse::<u16>().is_ok() {
                    metrics
                        .http_requests_total
                        .with_label_values(&[&route, method, status]);
                }
            }
            if route.starts_with("/v1/") {
                metrics
                    .http_rate_limited_total
                    .with_label_values(&[&route, "api_key"]);
            }
        }
    }
}
