//! Bad broker input is dead-lettered with its reason and never stops the workers.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn invalid_events_go_to_the_dead_letter_queue_with_their_reason() {
    let app = spawn_app().await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&receiver.url(), &["*"]).await;
    let ws = app.workspace.to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"{not json".to_vec()),
        (
            "invalid_schema",
            br#"{"type":"qr.created","data":{}}"#.to_vec(),
        ),
        (
            "unknown_type",
            format!(r#"{{"type":"qr.exploded","workspace_id":"{ws}","data":{{}}}}"#).into_bytes(),
        ),
        (
            "invalid_field",
            br#"{"type":"qr.created","workspace_id":"no pe","data":{}}"#.to_vec(),
        ),
        (
            "too_large",
            format!(
                r#"{{"type":"qr.created","workspace_id":"{ws}","data":{{"x":"{}"}}}}"#,
                "a".repeat(300_000)
            )
            .into_bytes(),
        ),
    ];
    for (_, body) in &cases {
        app.publish_raw("qr.created", body).await;
    }
    app.publish("qr.created", None, json!({"still": "working"}))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the worker keeps running");

    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reasons.len() < cases.len() && std::time::Instant::now() < deadline {
        match channel
            .basic_get(
                app.topology().ingest_dead_queue().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(message) => {
                let headers = message.delivery.properties.headers().clone().unwrap();
                let reason = match headers.inner().get("x-qr3-reason").unwrap() {
                    lapin::types::AMQPValue::LongString(s) => {
                        String::from_utf8(s.as_bytes().to_vec()).unwrap()
                    }
                    other => panic!("unexpected header {other:?}"),
                };
                reasons.push(reason);
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    reasons.sort();
    let mut expected: Vec<&str> = cases.iter().map(|(r, _)| *r).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("qr3_events_rejected_total{reason=\"invalid_json\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_stall_healthy_webhooks() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.delivery.concurrency = 8;
        s.delivery.max_in_flight_per_webhook = 2;
        s.delivery.defer_ms = 200;
        s.delivery.timeout_ms = 3000;
    })
    .await;
    let hanging = Receiver::start(Behaviour::Hang).await;
    let healthy = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&hanging.url(), &["*"]).await;
    app.webhook(&healthy.url(), &["*"]).await;
    for _ in 0..30 {
        app.publish("qr.scanned", None, json!({})).await;
    }
    // With 8 slots and no cap, the hanging receiver's 30 jobs would hold every slot
    // for the whole 3 s timeout; with a cap of 2 it holds two.
    let got = healthy.wait_for(30, Duration::from_millis(2500)).await;
    assert_eq!(
        got.len(),
        30,
        "healthy deliveries flowed while the other receiver hung"
    );
    assert!(
        hanging.received().len() <= 4,
        "the hanging receiver never had more than its cap"
    );
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains("qr3_deliveries_deferred_total 0"),
        "jobs were deferred: {metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_healthy_receiver_slower_than_a_short_wait_is_served_from_memory_never_parked() {
    // A receiver answering in 300 ms, slower than the fixed 250 ms wait after which the
    // old stall rule opened the breaker of a webhook at its cap, given a backlog at its
    // cap twice: a first burst of two rounds, then, once its answers are known, a
    // second burst of three rounds while it is still busy. Each round frees its slots within the wait bound
    // (delivery.defer_ms), so the backlog waits in memory: nothing is parked, by the
    // breaker or the bulkhead, and each event arrives exactly once.
    const CAP: usize = 4;
    let app = crate::helpers::spawn_app_with(|s| {
        s.delivery.max_in_flight_per_webhook = CAP;
        s.delivery.defer_ms = 1500;
        s.delivery.timeout_ms = 2000;
    })
    .await;
    let slow = Receiver::start(Behaviour::Delay(300)).await;
    let webhook = app.webhook(&slow.url(), &["*"]).await;
    let first: Vec<String> = (0..2 * CAP).map(|i| format!("evt_slow_a{i}")).collect();
    let second: Vec<String> = (0..3 * CAP).map(|i| format!("evt_slow_b{i}")).collect();
    app.publish_burst("qr.scanned", &first).await;
    // The first round answered (300 ms), the second in flight.
    slow.wait_for(CAP + 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.publish_burst("qr.scanned", &second).await;
    let events = first.len() + second.len();
    slow.wait_for(events, Duration::from_secs(10)).await;
    // Nothing more comes: no duplicate from a parked twin or a retry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = slow.received();
    let mut seen: Vec<&str> = got
        .iter()
        .map(|r| r.header("x-qr3-event-id").unwrap())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), events, "every event");
    assert_eq!(got.len(), events, "each exactly once");
    let attempts = app.attempts(&webhook, events).await;
    assert_eq!(attempts.len(), events);
    assert!(
        attempts
            .iter()
            .all(|a| a.status == qr3_store::AttemptStatus::Success),
        "every attempt succeeded"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("\nqr3_deliveries_deferred_total 0\n"),
        "nothing was parked, by the breaker or the bulkhead: {metrics}"
    );
    app.stop().await;
}
