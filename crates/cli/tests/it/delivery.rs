//! Events reach every subscribed webhook, signed, in the payload format of SPEC Part A.

use std::time::Duration;

use qr3_domain::EventType;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::{expected_signature, spawn_app};

#[tokio::test]
async fn every_event_type_is_delivered_signed_in_the_documented_format() {
    let app = spawn_app().await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["*"]).await;
    let data = json!({"code_id": "qr_abc123", "short_code": "r7f3Kx", "country": "AT", "city": "Zürich 東京 😀", "n": 1.50, "big": 1e21});
    let types: Vec<EventType> = EventType::ALL
        .into_iter()
        .filter(|t| t.is_publishable())
        .collect();
    for t in &types {
        app.publish(t.as_str(), None, data.clone()).await;
    }
    let got = receiver
        .wait_for(types.len(), Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), types.len());
    let mut seen: Vec<String> = Vec::new();
    for r in &got {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("x-qr3-signature").unwrap(),
            expected_signature(&r.body)
        );
        let payload = r.json();
        let keys: Vec<&str> = payload
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["id", "type", "created", "data"]);
        assert_eq!(payload["data"]["city"], "Zürich 東京 😀");
        assert_eq!(
            r.header("x-qr3-event-id").unwrap(),
            payload["id"].as_str().unwrap()
        );
        assert_eq!(
            r.header("x-qr3-event-type").unwrap(),
            payload["type"].as_str().unwrap()
        );
        assert_eq!(r.header("x-qr3-delivery-attempt"), Some("1"));
        let body = std::str::from_utf8(&r.body).unwrap();
        assert!(
            body.contains(r#""n":1.5,"big":1e+21"#),
            "numbers as JavaScript writes them: {body}"
        );
        seen.push(payload["type"].as_str().unwrap().to_owned());
    }
    seen.sort();
    let mut expected: Vec<String> = types.iter().map(|t| t.as_str().to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let log = app.attempts(&hook, types.len()).await;
    assert!(log
        .iter()
        .all(|a| a.status_code == Some(200) && a.attempt == 1));
    app.stop().await;
}

#[tokio::test]
async fn alias_and_specific_subscriptions_match_once_per_event() {
    let app = spawn_app().await;
    let scans = Receiver::start(Behaviour::Status(200)).await;
    let created = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&scans.url(), &["scan.created", "qr.scanned"])
        .await;
    app.webhook(&created.url(), &["qr.created"]).await;
    app.publish("qr.scanned", None, json!({})).await;
    app.publish("scan.created", None, json!({})).await;
    app.publish("qr.created", None, json!({})).await;
    let got = scans.wait_for(2, Duration::from_secs(10)).await;
    let mut types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["qr.scanned", "scan.created"],
        "the payload type is the published name"
    );
    assert_eq!(created.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(scans.received().len(), 2, "once per event");
    assert_eq!(created.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_duplicate_event_id_is_fanned_out_once() {
    let app = spawn_app().await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&receiver.url(), &["qr.created"]).await;
    for _ in 0..3 {
        app.publish(
            "qr.created",
            Some("evt_duplicate_1"),
            json!({"code_id": "qr_1"}),
        )
        .await;
    }
    receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}
