//! Request metrics for the public API, labelled by route template rather than raw path.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};

use crate::Metrics;

/// The mark a rate-limited (429) response carries in its extensions, naming the limit
/// that refused it (a fixed label value such as `api_key`, never an id). [`track_http`]
/// counts such responses in `qr3_http_rate_limited_total` by route and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitedBy(pub &'static str);

/// Axum middleware recording `qr3_http_requests_total`,
/// `qr3_http_request_duration_seconds` and, for responses marked [`RateLimitedBy`],
/// `qr3_http_rate_limited_total`.
///
/// The route label is the matched template (`/v1/webhooks/{id}`), or `unmatched`, so
/// ids never become label values. Install it with `Router::layer` (not `route_layer`,
/// which would skip unmatched requests):
/// `router.layer(axum::middleware::from_fn_with_state(metrics, track_http))`.
pub async fn track_http(
    State(metrics): State<Metrics>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .http_request_duration_seconds
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests_total
        .with_label_values(&[route, method, response.status().as_str()])
        .inc();
    if let Some(RateLimitedBy(limit)) = response.extensions().get::<RateLimitedBy>() {
        metrics
            .http_rate_limited_total
            .with_label_values(&[route, limit])
            .inc();
    }
    response
}

/// Standard methods by name; any extension method is `other`, keeping the label bounded.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
