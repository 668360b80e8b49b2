//! `POST /v1/webhooks/{id}/ping` through the real pipeline.

use std::time::Duration;

use qr3_testkit::{Behaviour, Receiver};
use serde_json::Value;

use crate::helpers::{expected_signature, spawn_app_with};

#[tokio::test]
async fn ping_is_delivered_signed_and_its_outcome_returned() {
    let app = spawn_app_with(|s| s.delivery.disable_after_failures = 1).await;
    let ok = Receiver::start(Behaviour::Status(200)).await;
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let good = app.webhook(&ok.url(), &["qr.created"]).await;
    let bad = app.webhook(&failing.url(), &["qr.created"]).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{}/v1/webhooks/{}/ping", app.api, good.id))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["delivery"]["status"], "success");
    assert_eq!(body["delivery"]["status_code"], 200);
    assert_eq!(body["delivery"]["trigger"], "ping");
    assert_eq!(body["delivery"]["event_type"], "webhook.ping");
    let got = ok.wait_for(1, Duration::from_secs(5)).await;
    let payload = got[0].json();
    assert_eq!(payload["type"], "webhook.ping");
    assert_eq!(payload["id"], body["event_id"]);
    assert_eq!(payload["data"]["webhook_id"], good.id.as_str());
    assert_eq!(
        got[0].header("x-qr3-signature").unwrap(),
        expected_signature(&got[0].body)
    );

    // A failing ping: one attempt, no retry, and it does not count towards disabling
    // (the threshold here is 1).
    let response = client
        .post(format!("{}/v1/webhooks/{}/ping", app.api, bad.id))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["delivery"]["status"], "failed");
    assert_eq!(body["delivery"]["status_code"], 500);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(failing.received().len(), 1, "no retry for a ping");
    let w = app
        .store
        .get_webhook(&app.workspace, &bad.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        w.is_active && w.consecutive_failures == 0,
        "pings never count towards disabling"
    );

    // Another workspace's key cannot ping it.
    let other = app.store.create_workspace("other").await.unwrap();
    let response = client
        .post(format!("{}/v1/webhooks/{}/ping", app.api, good.id))
        .bearer_auth(other.api_key.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_slow_ping_answers_202_with_the_event_id() {
    let app = spawn_app_with(|s| {
        s.api.ping_wait_ms = 200;
        s.delivery.timeout_ms = 5000;
    })
    .await;
    let slow = Receiver::start(Behaviour::Delay(1500)).await;
    let hook = app.webhook(&slow.url(), &["*"]).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/{}/ping", app.api, hook.id))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert!(body["event_id"].as_str().unwrap().starts_with("evt_"));
    assert!(body["delivery"].is_null());
    let log = app.attempts(&hook, 1).await;
    assert_eq!(
        log[0].event_id.as_str(),
        body["event_id"].as_str().unwrap(),
        "it still lands in the log"
    );
    app.stop().await;
}
