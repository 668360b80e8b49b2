//! `/healthz`, `/readyz` and `/metrics`.

use axum::http::{header, StatusCode};
use qr3_telemetry::{ops_router, ready_check, Metrics, ReadyCheck, Startup};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::get;

fn ready() -> ReadyCheck {
    ready_check(|| async { Ok(()) })
}

/// A process whose start-up is over.
fn started() -> Startup {
    let startup = Startup::new();
    startup.finish();
    startup
}

#[tokio::test]
async fn healthz_answers_ok() {
    let router = ops_router(Metrics::new(), started(), ready(), CancellationToken::new());
    let (response, body) = get(router, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_answers_ready_when_the_check_passes() {
    let router = ops_router(Metrics::new(), started(), ready(), CancellationToken::new());
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
    let router = ops_router(Metrics::new(), started(), failing, CancellationToken::new());
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
    let router = ops_router(Metrics::new(), started(), hanging, CancellationToken::new());
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
    let router = ops_router(metrics.clone(), started(), ready(), draining.clone());
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
    let router = ops_router(metrics, started(), ready(), CancellationToken::new());

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

#[tokio::test]
async fn while_starting_healthz_is_ok_and_readyz_says_what_it_waits_for() {
    let startup = Startup::new();
    // The regular check would pass: start-up decides until it is over.
    let router = ops_router(
        Metrics::new(),
        startup.clone(),
        ready(),
        CancellationToken::new(),
    );

    let (response, _) = get(router.clone(), "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let (response, body) = get(router.clone(), "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "not_ready", "reason": "starting", "waiting_for": []})
    );

    startup.waiting("database", "connection refused");
    startup.waiting("broker", "connection refused");
    let (response, body) = get(router.clone(), "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({
            "status": "not_ready",
            "reason": "starting: waiting for the broker (connection refused); waiting for the database (connection refused)",
            "waiting_for": ["broker", "database"],
        })
    );

    startup.reached("database");
    let (_, body) = get(router.clone(), "/readyz").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["waiting_for"],
        json!(["broker"])
    );

    startup.reached("broker");
    startup.finish();
    let (response, body) = get(router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::OK, "{body}");
}

#[tokio::test]
async fn draining_wins_over_starting() {
    let startup = Startup::new();
    startup.waiting("database", "connection refused");
    let draining = CancellationToken::new();
    let router = ops_router(Metrics::new(), startup, ready(), draining.clone());
    draining.cancel();
    let (response, body) = get(router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "not_ready", "reason": "draining"})
    );
}
