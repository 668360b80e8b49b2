//! Hostile input meets a clear limit: request body size (413), URL length and number of
//! events (422 naming the field), whatever way the body is sent.

use std::time::Duration;

use qr3_domain::{Subscriptions, WebhookUrl};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

/// `https://example.com/aaa…` exactly `len` bytes long.
fn url_of_len(len: usize) -> String {
    let base = "https://example.com/";
    format!("{base}{}", "a".repeat(len - base.len()))
}

#[tokio::test]
async fn urls_longer_than_2048_characters_are_422() {
    let app = spawn_app().await;
    assert_eq!(WebhookUrl::MAX_LEN, 2048);
    app.create_webhook(&json!({"url": url_of_len(2048), "events": ["*"]}))
        .await;
    let message = assert_error(
        app.post_json(
            "/v1/webhooks",
            &json!({"url": url_of_len(2049), "events": ["*"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("url"),
    )
    .await;
    assert_eq!(message, "url must be at most 2048 characters long");
}

#[tokio::test]
async fn more_than_32_events_are_422() {
    let app = spawn_app().await;
    assert_eq!(Subscriptions::MAX, 32);
    let names = |n: usize| vec!["qr.created"; n];
    app.create_webhook(&json!({"url": "https://example.com/", "events": names(32)}))
        .await;
    let message = assert_error(
        app.post_json(
            "/v1/webhooks",
            &json!({"url": "https://example.com/", "events": names(33)}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("events"),
    )
    .await;
    assert_eq!(message, "events must list at most 32 entries");
}

/// Sends a raw HTTP/1.1 request and returns the status line and the body.
async fn raw_request(base: &str, head: &str, body: &[u8]) -> (String, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the whole body is written.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_too() {
    let app = spawn_app_with(|s| s.api.max_body_bytes = 4096).await;
    // No Content-Length: the limit is enforced while reading, not by trusting a header.
    let head = format!(
        "POST /v1/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.api_key
    );
    let chunk = format!(r#"{{"url":"https://example.com/{}"}}"#, "a".repeat(8000));
    let body = format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
    let (status, body) = raw_request(&app.base, &head, body.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    // A chunked response body: find the JSON object in it.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(json["error"]["code"], "payload_too_large");
    assert_eq!(
        json["error"]["message"],
        "request body is larger than 4096 bytes"
    );
}

#[tokio::test]
async fn a_lying_content_length_is_413_before_the_body_is_read() {
    let app = spawn_app_with(|s| s.api.max_body_bytes = 4096).await;
    let head = format!(
        "POST /v1/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n",
        app.api_key
    );
    let (status, _) = raw_request(&app.base, &head, b"{").await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let app = spawn_app().await;
    // Far deeper than serde_json's recursion limit, well inside the body limit.
    let depth = 10_000;
    let body = format!(
        r#"{{"url":"https://example.com/","events":["*"],"x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let response = app
        .request(reqwest::Method::POST, "/v1/webhooks")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status}"
    );
    // The server is still there.
    assert_eq!(app.get("/v1/webhooks").await.status(), StatusCode::OK);
}
