//! The per-key rate limit: a key that bursts beyond `api.rate_limit_burst` gets 429 with
//! `Retry-After` and the JSON error body, other keys are served meanwhile, and the ops
//! endpoints are never limited.

use std::time::{Duration, Instant};

use qr3_telemetry::{ops_router, ready_check, track_http, Metrics};
use reqwest::{header, Method, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::helpers::{assert_error, spawn_app_with, spawn_app_wrapped, TestApp};

const RATE: u32 = 2;
const BURST: u32 = 5;

async fn limited_app() -> TestApp {
    spawn_app_with(|s| {
        s.api.rate_limit_per_second = RATE;
        s.api.rate_limit_burst = BURST;
    })
    .await
}

/// Sends `GET /v1/webhooks` with `key` until the first 429 (at most 100 requests);
/// returns how many were served before it, and the 429.
async fn burst_until_refused(app: &TestApp, key: &str) -> (u32, Response) {
    let started = Instant::now();
    for served in 0..100 {
        let response = app
            .request_as(key, Method::GET, "/v1/webhooks")
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            // The bucket holds BURST, refilled at RATE a second while we were sending.
            let refilled = (started.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u32;
            assert!(
                (BURST..=BURST + refilled).contains(&served),
                "{served} served before the first 429 (burst {BURST}, {refilled} refilled)"
            );
            return (served, response);
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    panic!("100 requests in a row were served: no rate limit");
}

fn retry_after(response: &Response) -> u64 {
    response
        .headers()
        .get(header::RETRY_AFTER)
        .expect("a 429 says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

#[tokio::test]
async fn a_burst_beyond_the_limit_gets_429_with_retry_after_and_other_keys_are_unaffected() {
    let app = limited_app().await;
    let second_key = app
        .db
        .store
        .create_api_key(&app.workspace)
        .await
        .unwrap()
        .expect("the workspace exists");
    let (_, other_workspace_key) = app.other_workspace().await;

    let (_, refused) = burst_until_refused(&app, &app.api_key).await;
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    let message = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    assert!(message.contains("API key"), "{message}");
    // Writes count against the same bucket.
    let create = app
        .post_json(
            "/v1/webhooks",
            &serde_json::json!({"url": "https://example.com/x", "events": ["*"]}),
        )
        .await;
    assert_eq!(create.status(), StatusCode::TOO_MANY_REQUESTS);

    // Another key of the same workspace, and another workspace's key, have their own
    // buckets: a whole burst each.
    for key in [second_key.token(), other_workspace_key.as_str()] {
        burst_until_refused(&app, key).await;
    }

    // A client that waits as told is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(app.get("/v1/webhooks").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn only_authenticated_requests_spend_the_bucket() {
    let app = limited_app().await;
    // A wrong secret under the key's id is 401, however often, and spends nothing:
    // nobody can exhaust another's key without its secret.
    // `qr3k_<26-character ulid>_<secret>`: the same id, another secret.
    let forged = format!("{}_{}", &app.api_key[..31], "A".repeat(43));
    assert_ne!(forged, app.api_key);
    for _ in 0..(BURST * 3) {
        let response = app
            .request_as(&forged, Method::GET, "/v1/webhooks")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The unauthenticated OpenAPI document is not limited either.
    for _ in 0..(BURST * 3) {
        let response = app.get("/v1/openapi.json").await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let (served, _) = burst_until_refused(&app, &app.api_key).await;
    assert!(served >= BURST);
}

#[tokio::test]
async fn health_readiness_and_metrics_are_never_limited_and_429s_are_counted() {
    let metrics = Metrics::new();
    let app = spawn_app_wrapped(
        |s| {
            s.api.rate_limit_per_second = 1;
            s.api.rate_limit_burst = 1;
        },
        |router| {
            let startup = qr3_telemetry::Startup::new();
            startup.finish();
            let ops = ops_router(
                metrics.clone(),
                startup,
                ready_check(|| async { Ok(()) }),
                CancellationToken::new(),
            );
            // As the binary assembles it (crates/cli/src/app.rs).
            router
                .merge(ops)
                .layer(axum::middleware::from_fn_with_state(
                    metrics.clone(),
                    track_http,
                ))
        },
    )
    .await;

    let mut refused = 0;
    for _ in 0..5 {
        if app.get("/v1/webhooks").await.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(refused >= 3, "{refused} of 5 refused at 1 request/s");

    // The same key, on the ops endpoints: never refused.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..20 {
            let response = app.get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }

    let text = app.get("/metrics").await.text().await.unwrap();
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("qr3_http_rate_limited_total{")
                && l.contains(r#"limit="api_key""#)
                && l.contains(r#"route="/v1/webhooks""#)
        })
        .unwrap_or_else(|| panic!("no rate-limited count for /v1/webhooks:\n{text}"));
    assert!(counted.ends_with(&format!(" {refused}")), "{counted}");
}

#[tokio::test]
async fn the_openapi_document_declares_the_429_on_every_authenticated_operation() {
    let app = limited_app().await;
    let doc: serde_json::Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    let mut authenticated = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = &operation["responses"];
            assert!(responses.get("408").is_some(), "{method} {path}: no 408");
            // Operations authenticated with a workspace API key; the admin API
            // (`admin_token`) is the operator's and has no per-key limit.
            let with_api_key = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if !with_api_key {
                continue;
            }
            authenticated += 1;
            let limited = &responses["429"];
            assert_eq!(
                limited["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
            assert!(
                limited["headers"]["Retry-After"].is_object(),
                "{method} {path}"
            );
            assert!(
                limited["description"]
                    .as_str()
                    .unwrap()
                    .contains("with this API key"),
                "{method} {path}"
            );
        }
    }
    assert!(authenticated >= 12, "{authenticated}");
}
