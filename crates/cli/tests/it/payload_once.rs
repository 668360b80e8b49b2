//! Each payload stored once, end to end across the migration that introduced it: rows
//! a release before wrote (inserted here through SQL before migrating) read, retry and
//! recover exactly as before; rows written after it keep the payload once and show the
//! exact request the receiver got.

use std::time::Duration;

use qr3_domain::EventId;
use qr3_testkit::TestDb;
use qr3_webhooks::Roles;
use serde_json::{json, Value};

use crate::helpers::{call, expected_signature, spawn_on, webhook_to_a_receiver};

/// The headers a sender of the previous release logged with an attempt.
fn old_headers(event: &str, delivery: &str, body: &str) -> Value {
    json!({
        "content-type": "application/json",
        "user-agent": "qr3-webhooks/0.0.9",
        "x-qr3-event-id": event,
        "x-qr3-event-type": "qr.created",
        "x-qr3-delivery-id": delivery,
        "x-qr3-delivery-attempt": "1",
        "x-qr3-timestamp": "1773568800",
        "x-qr3-signature": expected_signature(body.as_bytes()),
        "webhook-id": event,
        "webhook-timestamp": "1773568800",
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    })
}

#[tokio::test]
async fn the_log_reads_retries_and_recovers_rows_from_before_the_migration() {
    // The database as the previous release left it, with its rows.
    let db = TestDb::empty().await.unwrap();
    qr3_store::migrate_to(db.store.pool(), 4).await.unwrap();
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 1, 3)")
        .await
        .unwrap();
    let (created, receiver, hook) = webhook_to_a_receiver(&db).await;
    let started = qr3_domain::Timestamp::now();
    let mut old = Vec::new();
    for (event, body) in [
        ("evt_old_retried", r#"{"id":"evt_old_retried","n":1}"#),
        ("evt_old_recovered", r#"{"id":"evt_old_recovered","n":2}"#),
    ] {
        let delivery = qr3_domain::DeliveryId::generate();
        db.query(&format!(
            "INSERT INTO delivery_attempts (id, webhook_id, workspace_id, event_id, event_type,
                status, status_code, response_time_ms, attempt, trigger, error, created_at,
                request_headers, request_body, response_body)
             VALUES ('{delivery}', '{}', '{}', '{event}', 'qr.created', 'failed', 503, 7, 1,
                'event', NULL, now(), '{}'::jsonb, '{body}', 'try later')",
            hook.id,
            created.id,
            old_headers(event, delivery.as_str(), body),
        ))
        .await
        .unwrap();
        old.push((event, delivery, body));
    }

    // The new release migrates the live database and starts on it.
    qr3_store::migrate(db.store.pool(), 30).await.unwrap();
    let app = spawn_on(db, created, Roles::ALL, |s| {
        s.delivery.disable_after_failures = 100
    })
    .await;

    let (event, delivery, body) = &old[0];
    let (status, detail) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{}/deliveries/{delivery}", hook.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(
        detail["request"]["headers"],
        old_headers(event, delivery.as_str(), body)
    );
    assert_eq!(detail["request"]["body"], *body);
    assert_eq!(detail["response_body"], "try later");
    assert_eq!(detail["attempt"], 1);

    let (status, retried) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/webhooks/{}/deliveries/{delivery}/retry", hook.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["delivery"]["status"], "success");
    assert_eq!(retried["delivery"]["attempt"], 2);
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        &got[0].body[..],
        body.as_bytes(),
        "the old body, byte for byte"
    );

    let (status, recovered) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/webhooks/{}/recover", hook.id),
        Some(json!({"since": started.to_string()})),
    )
    .await;
    assert_eq!(status, 202, "{recovered}");
    assert_eq!(recovered["event_ids"], json!([old[1].0]));
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(&got[1].body[..], old[1].2.as_bytes());

    // The manual attempts were written in the new shape: the payload once, the headers
    // compact, and the detail still the exact request received.
    let mut attempts = app.attempts(&hook, 4).await;
    let manual = attempts.pop().unwrap();
    let (status, detail) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{}/deliveries/{}", hook.id, manual.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    let sent = got
        .iter()
        .find(|r| r.header("x-qr3-delivery-id") == Some(manual.id.as_str()))
        .expect("the manual attempt's request");
    assert_eq!(
        detail["request"]["body"].as_str().unwrap().as_bytes(),
        &sent.body[..]
    );
    let headers = detail["request"]["headers"].as_object().unwrap();
    assert_eq!(headers.len(), 11, "{headers:?}");
    for (name, value) in headers {
        assert_eq!(
            Some(value.as_str().unwrap()),
            sent.header(name),
            "header {name}"
        );
    }
    let rows = app
        .store
        .pool()
        .get()
        .await
        .unwrap()
        .query(
            "SELECT request_body IS NULL AND request_headers IS NULL AND sent_headers IS NOT NULL
             FROM delivery_log WHERE trigger = 3",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "new rows in the new shape"
    );
    let payloads: i64 = app
        .store
        .pool()
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM delivery_log_payloads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payloads, 2, "one per event re-sent");

    // A new event through the whole pipeline.
    let id = app
        .publish("qr.created", Some("evt_new_1"), json!({"n": 3}))
        .await;
    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    let new = app
        .attempts(&hook, 5)
        .await
        .into_iter()
        .find(|a| a.event_id == EventId::parse(&id).unwrap())
        .expect("the new event's attempt");
    let (_, detail) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{}/deliveries/{}", hook.id, new.id),
        None,
    )
    .await;
    assert_eq!(
        detail["request"]["body"].as_str().unwrap().as_bytes(),
        &got[2].body[..]
    );
    for (name, value) in detail["request"]["headers"].as_object().unwrap() {
        assert_eq!(
            Some(value.as_str().unwrap()),
            got[2].header(name),
            "header {name}"
        );
    }
    app.stop().await;
}
