//! `webhook_stats`: what each window counts, and what it must never count (older rows,
//! pings, another webhook's or another workspace's rows).

use chrono::Duration;
use qr3_domain::Trigger;
use qr3_domain::{
    DeliveryId, EventId, EventType, Subscriptions, TargetPolicy, Timestamp, WebhookId,
    WebhookSecret, WebhookUrl, WorkspaceId,
};
use qr3_store::{AttemptRecord, AttemptStatus, LatencyPercentiles, NewWebhook, StatsWindow, Store};
use qr3_testkit::TestDb;

async fn webhook(store: &Store, ws: &WorkspaceId) -> WebhookId {
    store
        .insert_webhook(
            ws,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/h", TargetPolicy::default()).unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::generate(),
                max_per_second: None,
            },
        )
        .await
        .unwrap()
        .id
}

/// An attempt made `age` ago, stamped (id and `created_at`) as a sender would have.
fn attempt(
    ws: &WorkspaceId,
    hook: &WebhookId,
    age: Duration,
    status: AttemptStatus,
    response_time_ms: u32,
) -> AttemptRecord {
    let created_at = Timestamp::from(chrono::Utc::now() - age);
    AttemptRecord {
        id: DeliveryId::generate_at(created_at),
        webhook_id: hook.clone(),
        workspace_id: ws.clone(),
        event_id: EventId::generate(),
        event_type: EventType::QrScanned,
        status,
        status_code: Some(match status {
            AttemptStatus::Success => 200,
            AttemptStatus::Failed => 500,
        }),
        response_time_ms,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at,
        detail: None,
    }
}

fn empty() -> StatsWindow {
    StatsWindow::default()
}

#[tokio::test]
async fn a_webhook_without_attempts_has_zeros_and_no_percentiles() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("w").await.unwrap().id;
    let hook = webhook(&db.store, &ws).await;
    let stats = db.store.webhook_stats(&ws, &hook).await.unwrap();
    assert_eq!(stats.last_hour, empty());
    assert_eq!(stats.last_day, empty());
    assert_eq!(stats.last_day.latency_ms.p50, None);
    let age = chrono::Utc::now() - stats.generated_at.as_datetime();
    assert!(
        age.num_seconds().abs() < 60,
        "generated_at is the database's now"
    );
}

#[tokio::test]
async fn windows_count_recent_traffic_only_and_never_another_webhooks_rows() {
    use AttemptStatus::{Failed, Success};
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("w").await.unwrap().id;
    let hook = webhook(&db.store, &ws).await;
    let other_hook = webhook(&db.store, &ws).await;
    let other_ws = db.store.create_workspace("other").await.unwrap().id;
    let minute = Duration::minutes(1);

    // The last hour: 10, 20, …, 100 ms; 7 successes, 3 failures, one of them a manual
    // resend (which counts like an event).
    let mut batch: Vec<AttemptRecord> = (1..=10)
        .map(|i| {
            let status = if i % 3 == 0 { Failed } else { Success };
            attempt(&ws, &hook, minute * i, status, 10 * i as u32)
        })
        .collect();
    batch[2].trigger = Trigger::Manual;
    // The rest of the day, one close to its start so a too-tight id bound would show.
    batch.push(attempt(&ws, &hook, Duration::hours(2), Failed, 200));
    batch.push(attempt(
        &ws,
        &hook,
        Duration::hours(23) + minute * 50,
        Success,
        300,
    ));

    // None of these may count.
    let noise = [
        // Older than a day, as a sender would have stamped it…
        attempt(&ws, &hook, Duration::days(2), Success, 5_000),
        attempt(&ws, &hook, Duration::hours(25), Failed, 5_000),
        // …and with a fresh id: `created_at` alone must exclude it.
        AttemptRecord {
            id: DeliveryId::generate(),
            ..attempt(&ws, &hook, Duration::hours(25), Failed, 5_000)
        },
        // A ping is a test, not traffic.
        AttemptRecord {
            trigger: Trigger::Ping,
            event_type: EventType::WebhookPing,
            ..attempt(&ws, &hook, minute, Success, 5_000)
        },
        attempt(&ws, &other_hook, minute, Failed, 5_000),
        // Another workspace's row under this webhook's id (cannot happen through the
        // senders; the repeated workspace condition must still hide it).
        attempt(&other_ws, &hook, minute, Failed, 5_000),
    ];
    batch.extend(noise);
    db.store.record_attempts(&batch, 1_000).await.unwrap();

    let stats = db.store.webhook_stats(&ws, &hook).await.unwrap();
    assert_eq!(
        stats.last_hour,
        StatsWindow {
            attempts: 10,
            succeeded: 7,
            failed: 3,
            latency_ms: LatencyPercentiles {
                p50: Some(50),
                p90: Some(90),
                p99: Some(100),
            },
        }
    );
    assert_eq!(
        stats.last_day,
        StatsWindow {
            attempts: 12,
            succeeded: 8,
            failed: 4,
            // 12 values: the 6th, the 11th and the 12th.
            latency_ms: LatencyPercentiles {
                p50: Some(60),
                p90: Some(200),
                p99: Some(300),
            },
        }
    );

    // Neither the other workspace nor the other webhook sees these rows.
    let theirs = db
        .store
        .webhook_stats(&other_ws, &other_hook)
        .await
        .unwrap();
    assert_eq!(theirs.last_day, empty());
    let cross = db.store.webhook_stats(&other_ws, &hook).await.unwrap();
    assert_eq!(cross.last_day.attempts, 1, "only its own row");
    let other = db.store.webhook_stats(&ws, &other_hook).await.unwrap();
    assert_eq!(other.last_day.attempts, 1);
    assert_eq!(other.last_day.failed, 1);
}
