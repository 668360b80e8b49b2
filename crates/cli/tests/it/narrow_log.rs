//! The narrower delivery log (V8), end to end across its migration: rows a release
//! before wrote (the V7 writer's compact rows with their shared payload, and the older
//! jsonb rows, inserted here through SQL as those writers did) list, page, read, retry,
//! recover and expire through the same endpoints as the rows written after it, which go
//! to `delivery_log`.

use std::time::Duration;

use base64::Engine;
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, Trigger};
use qr3_store::{AttemptDetail, AttemptRecord, AttemptStatus, Store};
use qr3_testkit::TestDb;
use qr3_webhooks::Roles;
use serde_json::{json, Value};

use crate::helpers::{call, expected_signature, spawn_on, webhook_to_a_receiver, TestApp};

/// What the V7 writer stored for the headers of a delivery made at `seconds`: the
/// compact blob, and the headers it stands for.
fn v7_headers(event: &str, delivery: &str, body: &str, seconds: i64) -> (Vec<u8>, Value) {
    let signature = expected_signature(body.as_bytes());
    let digest = hex::decode(signature.strip_prefix("sha256=").unwrap()).unwrap();
    let standard = [7u8; 32];
    let mut blob = vec![1u8, 5];
    blob.extend_from_slice(b"0.0.9");
    blob.extend_from_slice(&digest);
    blob.extend_from_slice(&standard);
    let headers = json!({
        "content-type": "application/json",
        "user-agent": "qr3-webhooks/0.0.9",
        "x-qr3-event-id": event,
        "x-qr3-event-type": "qr.created",
        "x-qr3-delivery-id": delivery,
        "x-qr3-delivery-attempt": "1",
        "x-qr3-timestamp": seconds.to_string(),
        "x-qr3-signature": signature,
        "webhook-id": event,
        "webhook-timestamp": seconds.to_string(),
        "webhook-signature": format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(standard)
        ),
    });
    (blob, headers)
}

/// Inserts one failed attempt as the V7 writer did: the payload once in
/// `event_payloads`, the attempt with `request_body` NULL and compact headers. Returns
/// its id and the headers its detail must show.
async fn insert_v7(
    store: &Store,
    hook: &str,
    workspace: &str,
    event: &str,
    body: &str,
    days_ago: i64,
) -> (DeliveryId, Value) {
    let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
    let at = Timestamp::from(at);
    let delivery = DeliveryId::generate_at(at);
    let (blob, headers) = v7_headers(event, delivery.as_str(), body, at.unix_seconds());
    let client = store.pool().get().await.unwrap();
    client
        .execute(
            "INSERT INTO event_payloads (workspace_id, event_id, created_at, body)
             VALUES ($1, $2, date_trunc('day', $3::timestamptz, 'UTC'), $4) ON CONFLICT DO NOTHING",
            &[&workspace, &event, &at.as_datetime(), &body],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO delivery_attempts (id, webhook_id, workspace_id, event_id, event_type,
                status, status_code, response_time_ms, attempt, trigger, error, created_at,
                request_headers, request_body, response_body, sent_headers)
             VALUES ($1, $2, $3, $4, 'qr.created', 'failed', 503, 7, 1, 'event', NULL, $5,
                NULL, NULL, 'try later', $6)",
            &[
                &delivery.as_str(),
                &hook,
                &workspace,
                &event,
                &at.as_datetime(),
                &blob,
            ],
        )
        .await
        .unwrap();
    (delivery, headers)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.store
        .pool()
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn rows_from_before_v8_read_retry_recover_and_expire_beside_new_ones() {
    // The database as the V7 release left it, with its rows: a compact one (the
    // payload shared), an older jsonb one, and one of a day that has expired.
    let db = TestDb::empty().await.unwrap();
    qr3_store::migrate_to(db.store.pool(), 7).await.unwrap();
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 40, 1)")
        .await
        .unwrap();
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 1, 3)")
        .await
        .unwrap();
    let (created, receiver, hook) = webhook_to_a_receiver(&db).await;
    let (hook_id, ws) = (hook.id.to_string(), created.id.to_string());
    let started = Timestamp::from(chrono::Utc::now() - chrono::Duration::seconds(5));
    let v7_body = r#"{"id":"evt_v7_retried","n":1}"#;
    let (v7, v7_expected) = insert_v7(&db.store, &hook_id, &ws, "evt_v7_retried", v7_body, 0).await;
    let jsonb_body = r#"{"id":"evt_old_recovered","n":2}"#;
    let jsonb = DeliveryId::generate();
    db.query(&format!(
        "INSERT INTO delivery_attempts (id, webhook_id, workspace_id, event_id, event_type,
            status, status_code, response_time_ms, attempt, trigger, error, created_at,
            request_headers, request_body, response_body)
         VALUES ('{jsonb}', '{hook_id}', '{ws}', 'evt_old_recovered', 'qr.created', 'failed', 500, 9, 1,
            'event', 'boom', now(), '{{\"x-old\": \"1\"}}'::jsonb, '{jsonb_body}', NULL)"
    ))
    .await
    .unwrap();
    // The new release migrates the live database and starts on it.
    qr3_store::migrate(db.store.pool(), 30).await.unwrap();
    let app = spawn_on(db, created, Roles::ALL, |s| {
        s.delivery.disable_after_failures = 100
    })
    .await;
    // A new event through the whole pipeline: written to the new table.
    app.publish("qr.created", Some("evt_new_1"), json!({"n": 3}))
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    let all = app.attempts(&hook, 3).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM delivery_log").await,
        1,
        "the new attempt is in the new table"
    );

    // The list pages through both tables newest first, one row a page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/webhooks/{hook_id}/deliveries?limit=1");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = call(&app, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for row in page["data"].as_array().unwrap() {
            seen.push(row["id"].as_str().unwrap().to_owned());
        }
        if page["has_more"] != true {
            break;
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    let mut expected: Vec<String> = all.iter().map(|a| a.id.to_string()).collect();
    expected.reverse();
    assert_eq!(seen, expected, "every row once, newest first");
    let (_, failed) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{hook_id}/deliveries?status=failed"),
        None,
    )
    .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 2, "{failed}");

    // The V7 row's detail: its headers rebuilt, its body its event's payload.
    let (status, detail) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{hook_id}/deliveries/{v7}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["request"]["headers"], v7_expected);
    assert_eq!(detail["request"]["body"], v7_body);
    assert_eq!(detail["response_body"], "try later");

    // Retrying it re-sends that body; the manual attempt goes to the new table.
    let (status, retried) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/webhooks/{hook_id}/deliveries/{v7}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["delivery"]["attempt"], 2);
    assert_eq!(retried["delivery"]["status"], "success");
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(&got[1].body[..], v7_body.as_bytes());
    // Delivered now (the success is in the new table): a second retry is refused.
    let (status, again) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/webhooks/{hook_id}/deliveries/{v7}/retry"),
        None,
    )
    .await;
    assert_ne!(status, 200, "{again}");

    // Recover finds the old jsonb row's event (the V7 one is delivered now).
    let (status, recovered) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/webhooks/{hook_id}/recover"),
        Some(json!({"since": started.to_string()})),
    )
    .await;
    assert_eq!(status, 202, "{recovered}");
    assert_eq!(recovered["event_ids"], json!(["evt_old_recovered"]));
    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(&got[2].body[..], jsonb_body.as_bytes());
    let manual = app
        .attempts(&hook, 6)
        .await
        .into_iter()
        .filter(|a| a.trigger == Trigger::Manual)
        .count();
    assert_eq!(manual, 2);
    assert_eq!(
        count(&app, "SELECT count(*) FROM delivery_log WHERE trigger = 3").await,
        2
    );

    // A day past retention with rows in both tables: one a sender of the previous
    // release wrote, one written in the new shape. Retention drops the day in every
    // log table; today stays.
    app.store
        .pool()
        .get()
        .await
        .unwrap()
        .execute(
            "SELECT qr3_ensure_delivery_partitions(current_date - 40, 1)",
            &[],
        )
        .await
        .unwrap();
    let (expired_old, _) = insert_v7(
        &app.store,
        &hook_id,
        &ws,
        "evt_v7_expired",
        r#"{"id":"evt_v7_expired"}"#,
        40,
    )
    .await;
    let old_at = Timestamp::from(chrono::Utc::now() - chrono::Duration::days(40));
    let expired_new = AttemptRecord {
        id: DeliveryId::generate_at(old_at),
        webhook_id: hook.id.clone(),
        workspace_id: app.workspace.clone(),
        event_id: EventId::parse("evt_new_expired").unwrap(),
        event_type: EventType::QrCreated,
        status: AttemptStatus::Success,
        status_code: Some(200),
        response_time_ms: 5,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at: old_at,
        detail: Some(AttemptDetail {
            request_headers: Vec::new(),
            request_body: "{}".into(),
            response_body: None,
        }),
    };
    app.store
        .record_attempts(std::slice::from_ref(&expired_new), 100)
        .await
        .unwrap();
    let before: Vec<DeliveryId> = app
        .attempts(&hook, 7)
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(before.len(), 7);
    assert!(before.contains(&expired_old) && before.contains(&expired_new.id));
    qr3_store::run_retention(app.store.pool(), 30)
        .await
        .unwrap();
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM pg_class WHERE relname IN (
                'delivery_attempts_p' || to_char(current_date - 40, 'YYYYMMDD'),
                'event_payloads_p' || to_char(current_date - 40, 'YYYYMMDD'),
                'delivery_log_p' || to_char(current_date - 40, 'YYYYMMDD'),
                'delivery_log_payloads_p' || to_char(current_date - 40, 'YYYYMMDD'))"
        )
        .await,
        0
    );
    let left: Vec<DeliveryId> = app
        .attempts(&hook, 5)
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(!left.contains(&expired_old) && !left.contains(&expired_new.id));
    assert!(left.contains(&v7) && left.contains(&jsonb));
    app.stop().await;
}

#[tokio::test]
async fn a_new_day_of_the_new_table_expires_like_the_old_ones() {
    let db = TestDb::new().await.unwrap();
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 40, 1)")
        .await
        .unwrap();
    let client = db.store.pool().get().await.unwrap();
    let parts: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN (
                'delivery_log_p' || to_char(current_date - 40, 'YYYYMMDD'),
                'delivery_log_payloads_p' || to_char(current_date - 40, 'YYYYMMDD'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 2, "the partition helper covers the new tables");
    let dropped: i32 = client
        .query_one(
            "SELECT qr3_drop_delivery_partitions_before(current_date - 30)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dropped, 2, "the old and the new attempts' partitions");
}
