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

#[tokio::test]
async fn marked_429s_are_counted_by_route_and_limit() {
    use axum::response::IntoResponse;
    use qr3_telemetry::RateLimitedBy;

    let metrics = Metrics::new();
    let app = Router::new()
        .route(
            "/v1/webhooks/{id}",
            get(|| async {
                let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
                response.extensions_mut().insert(RateLimitedBy("api_key"));
                response
            }),
        )
        .route("/unmarked", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .layer(middleware::from_fn_with_state(metrics.clone(), track_http));
    for path in ["/v1/webhooks/wh_1", "/v1/webhooks/wh_2", "/unmarked"] {
        let (response, _) = send_get(app.clone(), path).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    let limited = |route: &str, limit: &str| {
        metrics
            .http_rate_limited_total
            .with_label_values(&[route, limit])
            .get()
    };
    assert_eq!(limited("/v1/webhooks/{id}", "api_key"), 2);
    let text = metrics.render();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("qr3_http_rate_limited_total") && l.contains("/unmarked")),
        "an unmarked 429 is not a rate limit: {text}"
    );
}
