//! Request metrics of the API middleware.

use axum::{http::StatusCode, middleware, routing::get, Router};
use qr3_telemetry::{track_http, Metrics};

use crate::get as send_get;

fn app(metrics: &Metrics) -> Router {
    Router::new()
        .route("/v1/webhooks/{id}", get(|| async { "found" }))
        .layer(middleware::from_fn_with_state(metrics.clone(), track_http))
}

#[tokio::test]
async fn records_the_route_template_not_the_path() {
    let metrics = Metrics::new();
    let (response, _) = send_get(app(&metrics), "/v1/webhooks/wh_01J9ZQ").await;
    assert_eq!(response.status(), StatusCode::OK);

    let requests =
        metrics
            .http_requests_total
            .with_label_values(&["/v1/webhooks/{id}", "GET", "200"]);
    assert_eq!(requests.get(), 1);
    let durations = metrics
        .http_request_duration_seconds
        .with_label_values(&["/v1/webhooks/{id}", "GET"]);
    assert_eq!(durations.get_sample_count(), 1);
    assert!(!metrics.render().contains("wh_01J9ZQ"));
}

#[tokio::test]
async fn unmatched_requests_share_one_label() {
    let metrics = Metrics::new();
    let (response, _) = send_get(app(&metrics), "/v1/nothing/here").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let requests = metrics
        .http_requests_total
        .with_label_values(&["unmatched", "GET", "404"]);
    assert_eq!(requests.get(), 1);
    assert!(!metrics.render().contains("/v1/nothing/here"));
}
