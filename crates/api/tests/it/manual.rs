//! The API side of the features beyond the public doc: `max_per_second` on webhooks,
//! one delivery in detail, and the validation, scoping and rate limit of manual retries
//! and recoveries. (What reaches a receiver is tested end to end in the CLI crate.)

use qr3_domain::Trigger;
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId};
use qr3_store::{AttemptDetail, AttemptRecord, AttemptStatus};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, json_body, spawn_app, spawn_app_with, TestApp};

fn id_of(body: &serde_json::Value) -> WebhookId {
    WebhookId::parse(body["id"].as_str().unwrap()).unwrap()
}

/// Logs one failed event attempt of `webhook`, with or without its detail.
async fn log_attempt(app: &TestApp, webhook: &WebhookId, detail: bool) -> AttemptRecord {
    let record = AttemptRecord {
        id: DeliveryId::generate(),
        webhook_id: webhook.clone(),
        workspace_id: app.workspace.clone(),
        event_id: EventId::generate(),
        event_type: EventType::QrCreated,
        status: AttemptStatus::Failed,
        status_code: Some(503),
        response_time_ms: 12,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at: Timestamp::now(),
        detail: detail.then(|| AttemptDetail {
            request_headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-qr3-signature".into(), "sha256=00".into()),
            ],
            request_body: r#"{"id":"evt_1","type":"qr.created","created":"2026-03-15T10:00:00.000Z","data":{}}"#.into(),
            response_body: Some("try later".into()),
        }),
    };
    app.db
        .store
        .record_attempts(std::slice::from_ref(&record), 10)
        .await
        .unwrap();
    record
}

#[tokio::test]
async fn max_per_second_is_set_validated_and_removed() {
    let app = spawn_app().await;
    let created = app
        .create_webhook(
            &json!({"url": "https://example.com/a", "events": ["*"], "max_per_second": 25}),
        )
        .await;
    assert_eq!(created["max_per_second"], 25);
    let plain = app.create_simple_webhook(2).await;
    assert!(plain["max_per_second"].is_null(), "no cap unless asked");

    for bad in [json!(0), json!(10_001), json!(-1), json!("5"), json!(1.5)] {
        let response = app
            .post_json(
                "/v1/webhooks",
                &json!({"url": "https://example.com/b", "events": ["*"], "max_per_second": bad}),
            )
            .await;
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("max_per_second"),
        )
        .await;
    }

    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());
    let patched = json_body(
        app.patch_json(&path, &json!({"max_per_second": 3})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["max_per_second"], 3);
    let unchanged = json_body(
        app.patch_json(&path, &json!({"events": ["qr.created"]}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unchanged["max_per_second"], 3, "absent leaves it as it is");
    let removed = json_body(
        app.patch_json(&path, &json!({"max_per_second": null}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(removed["max_per_second"].is_null(), "null removes the cap");
    let read = json_body(app.get(&path).await, StatusCode::OK).await;
    assert!(read["max_per_second"].is_null());
}

#[tokio::test]
async fn one_delivery_is_shown_in_detail_to_its_workspace_only() {
    let app = spawn_app().await;
    let webhook = id_of(&app.create_simple_webhook(1).await);
    let with = log_attempt(&app, &webhook, true).await;
    let without = log_attempt(&app, &webhook, false).await;

    let path = format!("/v1/webhooks/{webhook}/deliveries/{}", with.id);
    let body = json_body(app.get(&path).await, StatusCode::OK).await;
    assert_eq!(body["id"], with.id.as_str());
    assert_eq!(body["status"], "failed");
    assert_eq!(body["status_code"], 503);
    assert_eq!(
        body["request"]["headers"],
        json!({"content-type": "application/json", "x-qr3-signature": "sha256=00"})
    );
    assert_eq!(
        body["request"]["body"],
        with.detail.as_ref().unwrap().request_body
    );
    assert_eq!(body["response_body"], "try later");

    let old = json_body(
        app.get(&format!("/v1/webhooks/{webhook}/deliveries/{}", without.id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(old["request"].is_null() && old["response_body"].is_null());

    for missing in [
        format!(
            "/v1/webhooks/{webhook}/deliveries/{}",
            DeliveryId::generate()
        ),
        format!("/v1/webhooks/{webhook}/deliveries/not-an-id"),
        format!(
            "/v1/webhooks/{}/deliveries/{}",
            WebhookId::generate(),
            with.id
        ),
    ] {
        assert_error(
            app.get(&missing).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    // Another workspace cannot read it, nor guess it through its own webhook.
    let (_, other_key) = app.other_workspace().await;
    let response = app
        .request_as(&other_key, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
}

#[tokio::test]
async fn retry_refuses_what_cannot_or_need_not_be_resent() {
    let app = spawn_app().await;
    let webhook = id_of(&app.create_simple_webhook(1).await);
    let without = log_attempt(&app, &webhook, false).await;
    let retry = |id: &DeliveryId| format!("/v1/webhooks/{webhook}/deliveries/{id}/retry");

    let response = app.post_json(&retry(&without.id), &json!({})).await;
    let message = assert_error(response, StatusCode::CONFLICT, "conflict", None).await;
    assert!(message.contains("without its body"), "{message}");

    let mut ping = log_attempt(&app, &webhook, true).await;
    ping.id = DeliveryId::generate();
    ping.trigger = Trigger::Ping;
    app.db
        .store
        .record_attempts(std::slice::from_ref(&ping), 10)
        .await
        .unwrap();
    let response = app.post_json(&retry(&ping.id), &json!({})).await;
    assert_error(response, StatusCode::CONFLICT, "conflict", None).await;

    let mut delivered = log_attempt(&app, &webhook, true).await;
    delivered.id = DeliveryId::generate();
    delivered.status = AttemptStatus::Success;
    app.db
        .store
        .record_attempts(std::slice::from_ref(&delivered), 10)
        .await
        .unwrap();
    let response = app.post_json(&retry(&delivered.id), &json!({})).await;
    let message = assert_error(response, StatusCode::CONFLICT, "conflict", None).await;
    assert!(message.contains("already delivered"), "{message}");

    assert_error(
        app.post_json(&retry(&DeliveryId::generate()), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;

    // A disabled webhook is re-enabled first.
    app.patch_json(
        &format!("/v1/webhooks/{webhook}"),
        &json!({"is_active": false}),
    )
    .await;
    let failed = log_attempt(&app, &webhook, true).await;
    let response = app.post_json(&retry(&failed.id), &json!({})).await;
    let message = assert_error(response, StatusCode::CONFLICT, "conflict", None).await;
    assert!(message.contains("disabled"), "{message}");
}

#[tokio::test]
async fn recover_validates_since_and_is_rate_limited_per_webhook() {
    let app = spawn_app_with(|s| s.api.manual_requests_per_minute = 2).await;
    let webhook = id_of(&app.create_simple_webhook(1).await);
    let other = id_of(&app.create_simple_webhook(2).await);
    let recover = |id: &WebhookId| format!("/v1/webhooks/{id}/recover");

    for (body, field) in [
        (json!({}), "since"),
        (json!({"since": "yesterday"}), "since"),
        (json!({"since": "2999-01-01T00:00:00Z"}), "since"),
        (json!({"since": 5}), "since"),
        (
            json!({"since": "2026-01-01T00:00:00Z", "until": "x"}),
            "until",
        ),
    ] {
        let response = app.post_json(&recover(&webhook), &body).await;
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        )
        .await;
    }

    // Nothing failed yet: nothing to queue (and no broker needed for it).
    let since = json!({"since": "2026-01-01T00:00:00Z"});
    for _ in 0..2 {
        let body = json_body(
            app.post_json(&recover(&webhook), &since).await,
            StatusCode::ACCEPTED,
        )
        .await;
        assert_eq!(
            body,
            json!({"queued": 0, "event_ids": [], "has_more": false})
        );
    }
    let response = app.post_json(&recover(&webhook), &since).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
    // The budget is per webhook.
    json_body(
        app.post_json(&recover(&other), &since).await,
        StatusCode::ACCEPTED,
    )
    .await;

    let (_, other_key) = app.other_workspace().await;
    let response = app
        .request_as(&other_key, reqwest::Method::POST, &recover(&webhook))
        .json(&since)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
}
