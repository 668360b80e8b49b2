//! Every error a client can provoke answers JSON `{"error": {...}}` with the right status.

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_body, spawn_app, spawn_app_with, TestApp};

async fn post_raw(app: &TestApp, content_type: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = app
        .request(Method::POST, "/v1/webhooks")
        .body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    request.send().await.unwrap()
}

/// POSTs `body` to `/v1/webhooks` and asserts a 422 naming `field`; returns the message.
async fn invalid(app: &TestApp, body: Value, field: &str) -> String {
    assert_error(
        app.post_json("/v1/webhooks", &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some(field),
    )
    .await
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let app = spawn_app().await;
    for body in [
        "{",
        "",
        r#"{"url": "https://example.com", "events": ["*"],}"#,
        r#"{"event": ["qr.created""#,
        "[]",
        "\"https://example.com\"",
        r#"{"url": "https://example.com", "events": ["*"]} {}"#,
    ] {
        let message = assert_error(
            post_raw(&app, Some("application/json"), body).await,
            StatusCode::BAD_REQUEST,
            "malformed_request",
            None,
        )
        .await;
        assert!(message.contains("JSON"), "{body:?} answered {message:?}");
    }
}

#[tokio::test]
async fn bodies_not_sent_as_json_are_400() {
    let app = spawn_app().await;
    let body = r#"{"url": "https://example.com", "events": ["*"]}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let message = assert_error(
            post_raw(&app, content_type, body).await,
            StatusCode::BAD_REQUEST,
            "malformed_request",
            None,
        )
        .await;
        assert_eq!(message, "Content-Type must be application/json");
    }
    // A charset parameter is fine.
    let response = post_raw(&app, Some("application/json; charset=utf-8"), body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn fields_of_the_wrong_type_are_named() {
    let app = spawn_app().await;
    let message = invalid(&app, json!({"url": 5, "events": ["*"]}), "url").await;
    assert!(message.contains("invalid type"), "{message}");
    invalid(
        &app,
        json!({"url": "https://example.com", "events": "qr.created"}),
        "events",
    )
    .await;
    let message = invalid(
        &app,
        json!({"url": "https://example.com", "events": ["qr.created", 7]}),
        "events",
    )
    .await;
    assert!(message.starts_with("events[1]:"), "{message}");
    invalid(
        &app,
        json!({"url": "https://example.com", "events": ["*"], "secret": 1234567890123456_u64}),
        "secret",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_field_is_named_so_typos_are_caught() {
    let app = spawn_app().await;
    let message = invalid(
        &app,
        json!({"url": "https://example.com", "event": ["qr.created"]}),
        "event",
    )
    .await;
    assert!(message.contains("unknown field `event`"), "{message}");
    assert!(
        message.contains("`events`"),
        "suggests the known fields: {message}"
    );
}

#[tokio::test]
async fn missing_required_fields_are_named() {
    let app = spawn_app().await;
    let message = invalid(&app, json!({"events": ["*"]}), "url").await;
    assert_eq!(message, "missing field `url`");
    invalid(&app, json!({"url": "https://example.com"}), "events").await;
}

#[tokio::test]
async fn a_short_secret_is_refused() {
    let app = spawn_app().await;
    let message = invalid(
        &app,
        json!({"url": "https://example.com", "events": ["*"], "secret": "fifteen-chars.."}),
        "secret",
    )
    .await;
    assert_eq!(message, "secret must be at least 16 characters long");
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let app = spawn_app().await;
    for url in [
        "not a url",
        "/relative/path",
        "ftp://example.com/",
        "https://u:p@example.com/",
    ] {
        invalid(&app, json!({"url": url, "events": ["*"]}), "url").await;
    }
}

#[tokio::test]
async fn http_urls_are_refused_when_https_is_required() {
    let app = spawn_app_with(|s| s.api.require_https = true).await;
    let message = invalid(
        &app,
        json!({"url": "http://example.com/hook", "events": ["*"]}),
        "url",
    )
    .await;
    assert_eq!(message, "url scheme must be https");
    // The same request passes where http is allowed (the test default).
    let lax = spawn_app().await;
    lax.create_webhook(&json!({"url": "http://example.com/hook", "events": ["*"]}))
        .await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let app = spawn_app_with(|s| s.delivery.allow_private_targets = false).await;
    for url in [
        "https://127.0.0.1/hook",
        "http://localhost:8080/",
        "https://[::1]/",
        "https://10.0.0.1/",
    ] {
        let message = invalid(&app, json!({"url": url, "events": ["*"]}), "url").await;
        assert_eq!(
            message, "url points at a private, loopback or otherwise internal address",
            "{url}"
        );
    }
    // Also when a PATCH tries it.
    let created = app.create_simple_webhook(1).await;
    assert_error(
        app.patch_json(
            &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
            &json!({"url": "https://127.0.0.1/hook"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("url"),
    )
    .await;
}

#[tokio::test]
async fn event_lists_must_be_known_and_non_empty() {
    let app = spawn_app().await;
    let message = invalid(
        &app,
        json!({"url": "https://example.com", "events": ["qr.created", "qr.exploded"]}),
        "events",
    )
    .await;
    assert_eq!(message, "unknown event type `qr.exploded`");
    let message = invalid(
        &app,
        json!({"url": "https://example.com", "events": []}),
        "events",
    )
    .await;
    assert_eq!(message, "events must not be empty");
}

#[tokio::test]
async fn patch_needs_a_field_and_refuses_null() {
    let app = spawn_app().await;
    let created = app.create_simple_webhook(1).await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());
    let message = assert_error(
        app.patch_json(&path, &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        None,
    )
    .await;
    assert!(message.contains("at least one of"), "{message}");
    for field in ["url", "events", "is_active", "secret"] {
        assert_error(
            app.patch_json(&path, &json!({ field: null })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        )
        .await;
    }
    for (body, field) in [
        (json!({"is_active": "no"}), "is_active"),
        (json!({"events": []}), "events"),
        (json!({"secret": "short"}), "secret"),
        (json!({"url": "nope"}), "url"),
        (json!({"active": false}), "active"),
    ] {
        assert_error(
            app.patch_json(&path, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        )
        .await;
    }
    let unchanged = json_body(app.get(&path).await, StatusCode::OK).await;
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("secret");
    expected.as_object_mut().unwrap().remove("secret_whsec");
    assert_eq!(unchanged, expected, "refused PATCHes change nothing");
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let app = spawn_app_with(|s| s.api.max_body_bytes = 4096).await;
    let body = json!({"url": "https://example.com", "events": ["*"], "secret": "x".repeat(5000)});
    let message = assert_error(
        app.post_json("/v1/webhooks", &body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
    assert_eq!(message, "request body is larger than 4096 bytes");

    // The default limit (64 KiB) applies to PATCH too.
    let app = spawn_app().await;
    let created = app.create_simple_webhook(1).await;
    let body = json!({"url": format!("https://example.com/{}", "a".repeat(70_000))});
    assert_error(
        app.patch_json(
            &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
            &body,
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_everywhere() {
    let app = spawn_app().await;
    let unknown = qr3_domain::WebhookId::generate().to_string();
    for id in [
        unknown.as_str(),
        "wh_abc123",
        "not-an-id",
        "whd_01kmnd4e2x7r4h1v3f5s8q0c9b",
        "%FF",
    ] {
        let path = format!("/v1/webhooks/{id}");
        let message = assert_error(
            app.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_eq!(message, "webhook not found");
        assert_error(
            app.patch_json(&path, &json!({"is_active": false})).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_error(
            app.delete(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_error(
            app.get(&format!("{path}/deliveries")).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/v1",
        "/v1/webhook",
        "/v2/webhooks",
        "/v1/webhooks/a/b/c",
    ] {
        let message = assert_error(
            app.get(path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert!(message.starts_with("no route for GET "), "{message}");
    }
    let response = app
        .request(Method::PUT, "/v1/webhooks")
        .send()
        .await
        .unwrap();
    let allow = response.headers()[header::ALLOW]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let message = assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    assert_eq!(message, "PUT is not allowed on this route");
    let id = qr3_domain::WebhookId::generate();
    assert_error(
        app.request(Method::POST, &format!("/v1/webhooks/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    assert_error(
        app.request(Method::DELETE, "/v1/openapi.json")
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
}

#[tokio::test]
async fn internal_errors_are_opaque() {
    let app = spawn_app().await;
    // The database going away is what a 500 looks like from outside.
    app.db.store.pool().close();
    let body = assert_error(
        app.get("/v1/webhooks").await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        None,
    )
    .await;
    assert_eq!(body, "unexpected error");
}
