//! API keys: 401 without a valid one, and a key sees only its own workspace (404, never
//! 403, for another workspace's webhooks).

use reqwest::{header, Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_error, json_body, spawn_app};

#[tokio::test]
async fn requests_without_a_valid_key_are_401() {
    let app = spawn_app().await;
    let unknown_key = format!("qr3k_{}_{}", "0".repeat(26), "x".repeat(43));
    let mut wrong_secret = app.api_key.clone();
    wrong_secret.pop();
    wrong_secret.push(if app.api_key.ends_with('A') { 'B' } else { 'A' });

    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing API key"),
        (
            Some("Basic dXNlcjpwYXNz".into()),
            "malformed Authorization header",
        ),
        (Some("Bearer".into()), "malformed Authorization header"),
        (Some("Bearer ".into()), "malformed Authorization header"),
        (Some(app.api_key.clone()), "malformed Authorization header"),
        (Some("Bearer not-a-key".into()), "invalid API key"),
        (Some(format!("Bearer {unknown_key}")), "invalid API key"),
        (Some(format!("Bearer {wrong_secret}")), "invalid API key"),
    ];
    for (authorization, expected) in cases {
        for (method, path) in [
            (Method::GET, "/v1/webhooks"),
            (Method::POST, "/v1/webhooks"),
            (
                Method::GET,
                "/v1/webhooks/wh_01kmnd4e2x7r4h1v3f5s8q0c9b/deliveries",
            ),
        ] {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .json(&json!({"url": "https://example.com", "events": ["*"]}));
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                "Bearer"
            );
            let message =
                assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
            assert!(
                message.starts_with(expected),
                "{authorization:?} {path}: {message}"
            );
        }
    }
    // Nothing was created by the refused POSTs.
    let list = json_body(app.get("/v1/webhooks").await, StatusCode::OK).await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/v1/webhooks"))
        .header(header::AUTHORIZATION, format!("bearer {}", app.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_workspaces_webhooks_are_404() {
    let app = spawn_app().await;
    let mine = app.create_simple_webhook(1).await;
    let (_, other_key) = app.other_workspace().await;
    let path = format!("/v1/webhooks/{}", mine["id"].as_str().unwrap());

    let as_other = |method: Method, path: &str| app.request_as(&other_key, method, path);
    for request in [
        as_other(Method::GET, &path),
        as_other(Method::PATCH, &path).json(&json!({"is_active": false})),
        as_other(Method::PATCH, &path).json(&json!({"secret": "taken-over-secret-value"})),
        as_other(Method::DELETE, &path),
        as_other(Method::GET, &format!("{path}/deliveries")),
    ] {
        let message = assert_error(
            request.send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_eq!(message, "webhook not found");
    }
    let list = json_body(
        as_other(Method::GET, "/v1/webhooks").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["data"], json!([]));

    // Untouched for its owner.
    let read = json_body(app.get(&path).await, StatusCode::OK).await;
    assert_eq!(read["is_active"], true);
    assert_eq!(read["secret_hint"], mine["secret_hint"]);
}

#[tokio::test]
async fn the_openapi_document_needs_no_key() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    let body = json_body(response, StatusCode::OK).await;
    assert!(body["openapi"].as_str().unwrap().starts_with("3."));
}
