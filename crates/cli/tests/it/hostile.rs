//! Hostile event messages: an event's size is capped by `ingest.max_event_bytes`, and a
//! message built to hurt (a huge field, deep nesting, bytes that are not UTF-8) is
//! dead-lettered with a short reason, never retried forever, never stops ingest.

use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::spawn_app_with;

/// The `x-qr3-reason` and `x-qr3-error` headers of up to `n` dead-lettered events.
async fn dead_letters(app: &crate::helpers::TestApp, n: usize) -> Vec<(String, String)> {
    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let header = |headers: &lapin::types::FieldTable, name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    };
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while found.len() < n && Instant::now() < deadline {
        let got = channel
            .basic_get(
                app.topology().ingest_dead_queue().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        match got {
            Some(message) => {
                let headers = message.delivery.properties.headers().clone().unwrap();
                found.push((
                    header(&headers, "x-qr3-reason"),
                    header(&headers, "x-qr3-error"),
                ));
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    found
}

#[tokio::test]
async fn events_built_to_hurt_are_dead_lettered_with_a_short_reason() {
    // Room for fields of 200 KB, four times the default limit.
    let app = spawn_app_with(|s| s.ingest.max_event_bytes = 262_144).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&receiver.url(), &["*"]).await;
    let ws = app.workspace.to_string();
    let max = app.settings.ingest.max_event_bytes;
    let huge = "x".repeat(200_000);
    assert!(huge.len() < max, "each case is under the size limit");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid_schema",
            json!({"type": "qr.created", "workspace_id": ws, "data": huge})
                .to_string()
                .into_bytes(),
        ),
        (
            "invalid_field",
            json!({"type": "qr.created", "workspace_id": huge, "data": {}})
                .to_string()
                .into_bytes(),
        ),
        (
            "invalid_field",
            json!({"id": huge, "type": "qr.created", "workspace_id": ws, "data": {}})
                .to_string()
                .into_bytes(),
        ),
        (
            "invalid_field",
            json!({"type": "qr.created", "workspace_id": ws, "created": huge, "data": {}})
                .to_string()
                .into_bytes(),
        ),
        (
            "unknown_type",
            json!({"type": huge, "workspace_id": ws, "data": {}})
                .to_string()
                .into_bytes(),
        ),
        (
            "invalid_json",
            format!(
                r#"{{"type":"qr.created","workspace_id":"{ws}","data":{{"a":{}{}}}}}"#,
                "[".repeat(50_000),
                "]".repeat(50_000)
            )
            .into_bytes(),
        ),
        (
            "invalid_json",
            [
                &br#"{"type":"qr.created","workspace_id":""#[..],
                &[0xff, 0xfe],
                b"\"}",
            ]
            .concat(),
        ),
    ];
    for (_, body) in &cases {
        app.publish_raw("qr.created", body).await;
    }
    let mut found = dead_letters(&app, cases.len()).await;
    found.sort();
    let mut expected: Vec<&str> = cases.iter().map(|(reason, _)| *reason).collect();
    expected.sort();
    assert_eq!(
        found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        expected
    );
    for (reason, error) in &found {
        assert!(
            error.len() <= 300,
            "{reason}: the error header is short, not an echo of the input ({} bytes)",
            error.len()
        );
    }

    // Ingest still works, and an event just under the limit is delivered whole.
    let data = json!({ "blob": "y".repeat(max - 1000) });
    app.publish("qr.created", None, data.clone()).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the worker keeps running");
    assert_eq!(got[0].json()["data"], data);
    app.stop().await;
}
