//! SSRF at send time: a webhook whose stored URL reaches an internal address (written
//! before the rule, or by a path that skipped the API's check) is never delivered while
//! `delivery.allow_private_targets` is false; each attempt is logged as failed with the
//! reason and nothing reaches the address. With the setting on, the same rows deliver.

use std::time::Duration;

use qr3_store::AttemptStatus;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::spawn_app_with;

/// The same loopback receiver spelled as a name, an IPv4 literal, an IPv4-mapped IPv6
/// literal and a decimal number.
fn spellings(receiver: &Receiver) -> Vec<String> {
    let port = receiver.addr.port();
    vec![
        format!("http://localhost:{port}/webhooks/qr3"),
        format!("http://127.0.0.1:{port}/webhooks/qr3"),
        format!("http://[::ffff:127.0.0.1]:{port}/webhooks/qr3"),
        format!("http://2130706433:{port}/webhooks/qr3"),
    ]
}

#[tokio::test]
async fn stored_internal_targets_are_refused_at_send_time() {
    let app = spawn_app_with(|s| {
        s.delivery.allow_private_targets = false;
        s.delivery.retry_delays_ms = vec![20];
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut hooks = Vec::new();
    for url in spellings(&receiver) {
        // Inserted through the store: the API would refuse these URLs.
        hooks.push(app.webhook(&url, &["qr.created"]).await);
    }
    app.publish("qr.created", None, json!({"n": 1})).await;

    for hook in &hooks {
        let attempts = app.attempts(hook, 2).await;
        assert_eq!(attempts.len(), 2, "{}: attempt 1 and its retry", hook.url);
        for attempt in &attempts {
            assert_eq!(attempt.status, AttemptStatus::Failed, "{}", hook.url);
            assert_eq!(attempt.status_code, None);
            assert_eq!(
                attempt.error.as_deref(),
                Some("url points at a private, loopback or otherwise internal address"),
                "{}",
                hook.url
            );
        }
    }

    // A ping is refused the same way, and the API reports it.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/{}/ping", app.api, hooks[0].id))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["delivery"]["status"], "failed", "{body}");
    assert_eq!(body["delivery"]["status_code"], serde_json::Value::Null);

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        receiver.received().is_empty(),
        "nothing reached the internal address"
    );
    app.stop().await;
}

#[tokio::test]
async fn allow_private_targets_lets_the_same_rows_deliver() {
    let app = spawn_app_with(|s| s.delivery.allow_private_targets = true).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let urls = spellings(&receiver);
    let mut hooks = Vec::new();
    for url in &urls {
        hooks.push(app.webhook(url, &["qr.created"]).await);
    }
    app.publish("qr.created", None, json!({"n": 1})).await;
    let got = receiver.wait_for(urls.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), urls.len(), "one delivery per spelling");
    for hook in &hooks {
        let attempts = app.attempts(hook, 1).await;
        assert_eq!(attempts[0].status, AttemptStatus::Success, "{}", hook.url);
    }
    app.stop().await;
}
