//! Each payload stored once: a fan-out's attempts share their event's payload and keep
//! their headers compactly, read back exactly as sent; rows logged before the change
//! read as they were; retention drops payloads with their attempts.

use chrono::Utc;
use qr3_domain::Trigger;
use qr3_domain::{
    signature, DeliveryId, EventId, EventType, Subscriptions, TargetPolicy, Timestamp, WebhookId,
    WebhookSecret, WebhookUrl, WorkspaceId,
};
use qr3_store::{AttemptDetail, AttemptRecord, AttemptStatus, NewWebhook, Store};
use qr3_testkit::TestDb;

const BODY: &str = r#"{"id":"evt_1","type":"qr.scanned","created":"2026-03-15T10:00:00.000Z","data":{"code_id":"qr_abc123","country":"AT"}}"#;

async fn webhooks(store: &Store, n: usize) -> (WorkspaceId, Vec<WebhookId>) {
    let ws = store.create_workspace("w").await.unwrap();
    let mut hooks = Vec::new();
    for _ in 0..n {
        let hook = store
            .insert_webhook(
                &ws.id,
                NewWebhook {
                    url: WebhookUrl::parse("https://example.com/h", TargetPolicy::default())
                        .unwrap(),
                    events: Subscriptions::parse(&["*"]).unwrap(),
                    secret: WebhookSecret::generate(),
                    max_per_second: None,
                },
            )
            .await
            .unwrap();
        hooks.push(hook.id);
    }
    (ws.id, hooks)
}

/// An attempt as the sender logs it: every header it sets, in its order, signed with
/// `secrets` (newest first).
fn sent(
    ws: &WorkspaceId,
    hook: &WebhookId,
    event: &EventId,
    attempt: u16,
    at: Timestamp,
    body: &str,
    secrets: &[WebhookSecret],
) -> AttemptRecord {
    let id = DeliveryId::generate();
    let seconds = at.unix_seconds().to_string();
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("user-agent", "qr3-webhooks/0.1.0".to_owned()),
        ("x-qr3-event-id", event.to_string()),
        ("x-qr3-event-type", "qr.scanned".to_owned()),
        ("x-qr3-delivery-id", id.to_string()),
        ("x-qr3-delivery-attempt", attempt.to_string()),
        ("x-qr3-timestamp", seconds.clone()),
        (
            "x-qr3-signature",
            signature::sign(&secrets[0], body.as_bytes()),
        ),
        ("webhook-id", event.to_string()),
        ("webhook-timestamp", seconds),
        (
            "webhook-signature",
            signature::standard_webhooks::header(
                secrets,
                event.as_str(),
                at.unix_seconds(),
                body.as_bytes(),
            ),
        ),
    ];
    AttemptRecord {
        id,
        webhook_id: hook.clone(),
        workspace_id: ws.clone(),
        event_id: event.clone(),
        event_type: EventType::QrScanned,
        status: AttemptStatus::Failed,
        status_code: Some(503),
        response_time_ms: 4,
        attempt,
        trigger: Trigger::Event,
        error: None,
        created_at: at,
        detail: Some(AttemptDetail {
            request_headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect(),
            request_body: body.to_owned(),
            response_body: Some("busy\u{fffd}".to_owned()),
        }),
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.query(sql).await.unwrap()[0].get(0)
}

async fn assert_reads_back(store: &Store, record: &AttemptRecord) {
    let read = store
        .get_attempt(&record.workspace_id, &record.webhook_id, &record.id)
        .await
        .unwrap()
        .expect("the attempt");
    // jsonb orders an object's keys its own way, so headers compare as the API shows
    // them: by name.
    let sorted = |detail: &Option<AttemptDetail>| {
        detail.clone().map(|mut d| {
            d.request_headers.sort();
            d
        })
    };
    assert_eq!(
        sorted(&read.detail),
        sorted(&record.detail),
        "the detail exactly as logged"
    );
    assert_eq!(read.attempt, record.attempt);
    assert_eq!(read.created_at, record.created_at);
}

#[tokio::test]
async fn a_fan_out_stores_its_payload_once_and_reads_back_exactly() {
    let db = TestDb::new().await.unwrap();
    let (ws, hooks) = webhooks(&db.store, 10).await;
    let event = EventId::generate();
    let now = Timestamp::now();
    let secrets = [WebhookSecret::generate()];
    let batch: Vec<AttemptRecord> = hooks
        .iter()
        .map(|hook| sent(&ws, hook, &event, 1, now, BODY, &secrets))
        .collect();
    db.store.record_attempts(&batch, 100).await.unwrap();
    // A retry, in a later batch, and one signed during a rotation (two secrets).
    let rotated = [WebhookSecret::generate(), WebhookSecret::generate()];
    let retry = sent(&ws, &hooks[0], &event, 2, Timestamp::now(), BODY, &rotated);
    db.store
        .record_attempts(std::slice::from_ref(&retry), 100)
        .await
        .unwrap();

    assert_eq!(
        count(&db, "SELECT count(*) FROM delivery_log_payloads").await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM delivery_log
             WHERE request_body IS NULL AND request_headers IS NULL AND sent_headers IS NOT NULL"
        )
        .await,
        11,
        "no attempt stores the payload or jsonb headers"
    );
    let widest: i32 = db
        .query("SELECT max(octet_length(sent_headers)) FROM delivery_log")
        .await
        .unwrap()[0]
        .get(0);
    assert!(widest <= 2 + 5 + 3 * 32, "{widest} bytes of headers");
    for record in batch.iter().chain([&retry]) {
        assert_reads_back(&db.store, record).await;
    }
}

#[tokio::test]
async fn an_attempt_that_sent_something_else_keeps_its_own() {
    let db = TestDb::new().await.unwrap();
    let (ws, hooks) = webhooks(&db.store, 2).await;
    let event = EventId::generate();
    let secrets = [WebhookSecret::generate()];
    let first = sent(&ws, &hooks[0], &event, 1, Timestamp::now(), BODY, &secrets);
    let other_body = sent(&ws, &hooks[1], &event, 1, Timestamp::now(), "{}", &secrets);
    let mut odd_headers = sent(&ws, &hooks[1], &event, 2, Timestamp::now(), BODY, &secrets);
    if let Some(detail) = odd_headers.detail.as_mut() {
        detail.request_headers[6].1 = "not the row's time".into();
        detail.response_body = None;
    }
    let mut no_headers = sent(&ws, &hooks[0], &event, 2, Timestamp::now(), BODY, &secrets);
    if let Some(detail) = no_headers.detail.as_mut() {
        detail.request_headers.clear();
    }
    let batch = [first, other_body, odd_headers, no_headers];
    db.store.record_attempts(&batch, 100).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM delivery_log WHERE request_body IS NOT NULL"
        )
        .await,
        1,
        "only the attempt whose body differs from the payload keeps one"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM delivery_log WHERE request_headers IS NOT NULL"
        )
        .await,
        2,
        "headers the compact form cannot rebuild stay jsonb"
    );
    for record in &batch {
        assert_reads_back(&db.store, record).await;
    }
}

/// Rows as a release before this change wrote them, through SQL.
async fn insert_old_rows(db: &TestDb, ws: &WorkspaceId, hook: &WebhookId) -> Vec<AttemptRecord> {
    let secrets = [WebhookSecret::generate()];
    let with_detail = sent(
        ws,
        hook,
        &EventId::generate(),
        1,
        Timestamp::now(),
        BODY,
        &secrets,
    );
    let mut without = sent(
        ws,
        hook,
        &EventId::generate(),
        1,
        Timestamp::now(),
        BODY,
        &secrets,
    );
    without.detail = None;
    let client = db.store.pool().get().await.unwrap();
    for r in [&with_detail, &without] {
        let headers = r.detail.as_ref().map(|d| {
            serde_json::Value::Object(
                d.request_headers
                    .iter()
                    .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        });
        client
            .execute(
                "INSERT INTO delivery_attempts (id, webhook_id, workspace_id, event_id, event_type,
                    status, status_code, response_time_ms, attempt, trigger, error, created_at,
                    request_headers, request_body, response_body)
                 VALUES ($1, $2, $3, $4, 'qr.scanned', 'failed', 503, 4, 1, 'event', NULL, $5, $6, $7, $8)",
                &[
                    &r.id.as_str(),
                    &r.webhook_id.as_str(),
                    &r.workspace_id.as_str(),
                    &r.event_id.as_str(),
                    &r.created_at.as_datetime(),
                    &headers,
                    &r.detail.as_ref().map(|d| d.request_body.as_str()),
                    &r.detail.as_ref().and_then(|d| d.response_body.as_deref()),
                ],
            )
            .await
            .unwrap();
    }
    vec![with_detail, without]
}

#[tokio::test]
async fn rows_of_the_old_shape_read_as_before_after_the_migration() {
    let db = TestDb::empty().await.unwrap();
    qr3_store::migrate_to(db.store.pool(), 4).await.unwrap();
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 1, 3)")
        .await
        .unwrap();
    let (ws, hooks) = webhooks(&db.store, 1).await;
    let old = insert_old_rows(&db, &ws, &hooks[0]).await;

    qr3_store::migrate(db.store.pool(), 30).await.unwrap();
    for record in &old {
        assert_reads_back(&db.store, record).await;
    }
    let since = Timestamp::from(Utc::now() - chrono::Duration::hours(1));
    let recoverable = db
        .store
        .recoverable_events(&ws, &hooks[0], since, None, 10)
        .await
        .unwrap();
    assert_eq!(
        recoverable.len(),
        1,
        "the old row without a body cannot be re-sent"
    );
    assert_eq!(recoverable[0].event_id, old[0].event_id);
    assert_eq!(recoverable[0].body, BODY);

    // A new-shape attempt of the same event beside them: the log reads both.
    let secrets = [WebhookSecret::generate()];
    let new = sent(
        &ws,
        &hooks[0],
        &old[0].event_id,
        2,
        Timestamp::now(),
        BODY,
        &secrets,
    );
    db.store
        .record_attempts(std::slice::from_ref(&new), 100)
        .await
        .unwrap();
    assert_reads_back(&db.store, &new).await;
    assert_reads_back(&db.store, &old[0]).await;
    let recoverable = db
        .store
        .recoverable_events(&ws, &hooks[0], since, None, 10)
        .await
        .unwrap();
    assert_eq!(recoverable[0].body, BODY, "from the payload now");
    assert_eq!(recoverable[0].next_attempt, 3);
}

#[tokio::test]
async fn retention_drops_payloads_with_their_attempts() {
    let db = TestDb::new().await.unwrap();
    let (ws, hooks) = webhooks(&db.store, 1).await;
    let secrets = [WebhookSecret::generate()];
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 40, 1)")
        .await
        .unwrap();
    let day = |days: i64| Timestamp::from(Utc::now() - chrono::Duration::days(days));
    // One in an old day's partitions, one in the default partitions (no partition for
    // its day), one today.
    let old = sent(
        &ws,
        &hooks[0],
        &EventId::generate(),
        1,
        day(40),
        BODY,
        &secrets,
    );
    let unpartitioned = sent(
        &ws,
        &hooks[0],
        &EventId::generate(),
        1,
        day(50),
        BODY,
        &secrets,
    );
    let today = sent(
        &ws,
        &hooks[0],
        &EventId::generate(),
        1,
        day(0),
        BODY,
        &secrets,
    );
    db.store
        .record_attempts(&[old, unpartitioned, today.clone()], 100)
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM delivery_log_payloads").await,
        3
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM delivery_log_payloads_default").await,
        1
    );

    qr3_store::run_retention(db.store.pool(), 30).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_class WHERE relname IN (
                'delivery_attempts_p' || to_char(current_date - 40, 'YYYYMMDD'), 'delivery_log_p' || to_char(current_date - 40, 'YYYYMMDD'),
                'event_payloads_p' || to_char(current_date - 40, 'YYYYMMDD'), 'delivery_log_payloads_p' || to_char(current_date - 40, 'YYYYMMDD'))"
        )
        .await,
        0,
        "both partitions of the old day are dropped"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM delivery_log_payloads").await,
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM delivery_log").await, 1);
    assert_reads_back(&db.store, &today).await;
}

#[tokio::test]
async fn erasing_a_workspace_erases_its_payloads_and_no_other() {
    let db = TestDb::new().await.unwrap();
    let (gone, gone_hooks) = webhooks(&db.store, 2).await;
    let (kept, kept_hooks) = webhooks(&db.store, 1).await;
    let secrets = [WebhookSecret::generate()];
    let event = EventId::generate();
    let batch = [
        sent(
            &gone,
            &gone_hooks[0],
            &event,
            1,
            Timestamp::now(),
            BODY,
            &secrets,
        ),
        sent(
            &gone,
            &gone_hooks[1],
            &event,
            1,
            Timestamp::now(),
            BODY,
            &secrets,
        ),
        sent(
            &kept,
            &kept_hooks[0],
            &event,
            1,
            Timestamp::now(),
            BODY,
            &secrets,
        ),
    ];
    db.store.record_attempts(&batch, 100).await.unwrap();
    let erased = db.store.erase_workspace(&gone).await.unwrap().unwrap();
    assert_eq!(
        erased.deliveries, 2,
        "payloads are not counted as deliveries"
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM delivery_log_payloads WHERE workspace_id = '{gone}'")
        )
        .await,
        0
    );
    assert_reads_back(&db.store, &batch[2]).await;
}

#[tokio::test]
async fn the_writer_keys_payloads_as_the_database_does() {
    let db = TestDb::new().await.unwrap();
    let (ws, hooks) = webhooks(&db.store, 2).await;
    let secrets = [WebhookSecret::generate()];
    let batch: Vec<AttemptRecord> = ["evt_platform-id_1", "evt_2"]
        .iter()
        .flat_map(|event| {
            let event = EventId::parse(event).unwrap();
            hooks
                .iter()
                .map(|hook| AttemptRecord {
                    status: AttemptStatus::Success,
                    ..sent(&ws, hook, &event, 1, Timestamp::now(), BODY, &secrets)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    db.store.record_attempts(&batch, 100).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM delivery_log_payloads
             WHERE event = qr3_payload_key(workspace_id, event_id)"
        )
        .await,
        2,
        "the key the writer computed is the one readers look up"
    );
    for record in &batch {
        assert!(db
            .store
            .event_delivered(&record.webhook_id, &record.event_id)
            .await
            .unwrap());
    }
}
