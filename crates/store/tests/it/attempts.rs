//! The delivery log's batch write: rows, failure counting, disabling.

use qr3_domain::Trigger;
use qr3_domain::{
    DeliveryId, EventId, EventType, Subscriptions, TargetPolicy, Timestamp, WebhookId,
    WebhookSecret, WebhookUrl, WorkspaceId,
};
use qr3_store::{AttemptFilter, AttemptRecord, AttemptStatus, NewWebhook, Store, WebhookPatch};
use qr3_testkit::TestDb;

async fn webhook(store: &Store) -> (WorkspaceId, WebhookId) {
    let ws = store.create_workspace("w").await.unwrap();
    let hook = store
        .insert_webhook(
            &ws.id,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/h", TargetPolicy::default()).unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::generate(),
                max_per_second: None,
            },
        )
        .await
        .unwrap();
    (ws.id, hook.id)
}

fn attempt(ws: &WorkspaceId, hook: &WebhookId, status: AttemptStatus) -> AttemptRecord {
    AttemptRecord {
        id: DeliveryId::generate(),
        webhook_id: hook.clone(),
        workspace_id: ws.clone(),
        event_id: EventId::generate(),
        event_type: EventType::QrScanned,
        status,
        status_code: Some(if status == AttemptStatus::Success {
            200
        } else {
            500
        }),
        response_time_ms: 3,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at: Timestamp::now(),
        detail: None,
    }
}

#[tokio::test]
async fn tenth_consecutive_failure_disables_and_success_resets() {
    let db = TestDb::new().await.unwrap();
    let (ws, hook) = webhook(&db.store).await;
    let failures: Vec<_> = (0..9)
        .map(|_| attempt(&ws, &hook, AttemptStatus::Failed))
        .collect();
    assert!(db
        .store
        .record_attempts(&failures, 10)
        .await
        .unwrap()
        .disabled
        .is_empty());
    db.store
        .record_attempts(&[attempt(&ws, &hook, AttemptStatus::Success)], 10)
        .await
        .unwrap();
    let w = db.store.get_webhook(&ws, &hook).await.unwrap().unwrap();
    assert_eq!(w.consecutive_failures, 0, "a success resets the count");

    for i in 1..=10 {
        let batch = db
            .store
            .record_attempts(&[attempt(&ws, &hook, AttemptStatus::Failed)], 10)
            .await
            .unwrap();
        assert_eq!(batch.disabled.len(), usize::from(i == 10), "attempt {i}");
    }
    let w = db.store.get_webhook(&ws, &hook).await.unwrap().unwrap();
    assert!(!w.is_active);
    assert!(w.disabled_at.is_some() && w.disabled_reason.is_some());

    let w = db
        .store
        .update_webhook(
            &ws,
            &hook,
            WebhookPatch {
                is_active: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(w.is_active && w.consecutive_failures == 0 && w.disabled_at.is_none());
}

#[tokio::test]
async fn attempts_page_newest_first_with_filters() {
    let db = TestDb::new().await.unwrap();
    let (ws, hook) = webhook(&db.store).await;
    let batch: Vec<_> = (0..5)
        .map(|i| {
            attempt(
                &ws,
                &hook,
                if i % 2 == 0 {
                    AttemptStatus::Success
                } else {
                    AttemptStatus::Failed
                },
            )
        })
        .collect();
    db.store.record_attempts(&batch, 10).await.unwrap();
    let all = db
        .store
        .list_attempts(&ws, &hook, &AttemptFilter::default(), None, 20)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let failed = AttemptFilter {
        status: Some(AttemptStatus::Failed),
        ..Default::default()
    };
    assert_eq!(
        db.store
            .list_attempts(&ws, &hook, &failed, None, 20)
            .await
            .unwrap()
            .len(),
        2
    );
    let page = db
        .store
        .list_attempts(&ws, &hook, &AttemptFilter::default(), Some(&all[1].id), 20)
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    let other = WorkspaceId::generate();
    assert!(db
        .store
        .list_attempts(&other, &hook, &AttemptFilter::default(), None, 20)
        .await
        .unwrap()
        .is_empty());
}
