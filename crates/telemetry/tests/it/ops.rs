//! `/healthz`, `/readyz` and `/metrics`.

use axum::http::{header, StatusCode};
use qr3_telemetry::{ops_router, ready_check, Metrics, ReadyCheck};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::get;

fn ready() -> ReadyCheck {
    ready_check(|| async { Ok(()) })
}

#[tokio::test]
async fn healthz_answers_ok() {
    let router = ops_router(Metrics::new(), ready(), CancellationToken::new());
    let (response, body) = get(router, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_answers_ready_when_the_check_passes() {
    let router = ops_router(Metrics::new(), ready(), CancellationToken::new());
    let (response, body) = get(router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test]
async fn readyz_reports_the_failing_check() {
    let failing = ready_check(|| async { Err("database unreachable".to_owned()) });
    let router = ops_router(Metrics::new(), failing, CancellationToken::new());
    let (response, body) = get(router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "not_ready", "reason": "database unreachable"})
    );
}

#[tokio::test(start_paused = true)]
async fn readyz_fails_when_the_check_hangs() {
    let hanging = ready_check(std::future::pending);
    let router = ops_router(Metrics::new(), hanging, CancellationToken::new());
    let (response, body) = get(router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "not_ready", "reason": "readiness check timed out"})
    );
}

#[tokio::test]
async fn readyz_answers_draining_once_shutdown_began() {
    let metrics = Metrics::new();
    let draining = CancellationToken::new();
    let router = ops_router(metrics.clone(), ready(), draining.clone());
    draining.cancel();

    let (response, body) = get(router.clone(), "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "not_ready", "reason": "draining"})
    );

    let (_, metrics_body) = get(router, "/metrics").await;
    assert!(
        metrics_body.contains("\nqr3_process_draining 1\n"),
        "{metrics_body}"
    );
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let metrics = Metrics::new();
    metrics.events_duplicate_total.inc();
    metrics
        .delivery_attempts_total
        .with_label_values(&["failed", "2"])
        .inc();
    let router = ops_router(metrics, ready(), CancellationToken::new());

    let (response, body) = get(router, "/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    for name in [
        "qr3_events_duplicate_total 1",
        "qr3_delivery_attempts_total{attempt=\"2\",outcome=\"failed\"} 1",
        "qr3_delivery_response_seconds_bucket",
        "qr3_delivery_lag_seconds_bucket",
        "qr3_broker_connected 0",
        "qr3_database_up 0",
        "qr3_process_draining 0",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
}
