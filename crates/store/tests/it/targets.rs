//! Delivery targets read in one query for several webhooks: one entry per webhook that
//! exists, each read on its own, so an unreadable row fails only its own entry.

use qr3_domain::{Subscriptions, TargetPolicy, WebhookId, WebhookSecret, WebhookUrl};
use qr3_store::NewWebhook;
use qr3_testkit::TestDb;

async fn webhook(db: &TestDb, workspace: &qr3_domain::WorkspaceId, n: usize) -> WebhookId {
    db.store
        .insert_webhook(
            workspace,
            NewWebhook {
                url: WebhookUrl::parse(
                    &format!("https://example.com/hook/{n}"),
                    TargetPolicy::default(),
                )
                .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::parse(format!("a-secret-of-hook-{n:04}")).unwrap(),
                max_per_second: None,
            },
        )
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn a_batch_reads_each_existing_webhook_and_fails_only_an_unreadable_row() {
    let db = TestDb::new().await.unwrap();
    let a = db.store.create_workspace("a").await.unwrap();
    let b = db.store.create_workspace("b").await.unwrap();
    let first = webhook(&db, &a.id, 1).await;
    let second = webhook(&db, &b.id, 2).await;
    let broken = webhook(&db, &a.id, 3).await;
    let unknown = WebhookId::generate();
    db.query(&format!(
        "UPDATE webhooks SET secret_ciphertext = '\\x00112233'::bytea WHERE id = '{broken}'"
    ))
    .await
    .unwrap();

    let asked = [
        first.clone(),
        unknown.clone(),
        second.clone(),
        broken.clone(),
    ];
    let read = db.store.delivery_targets(&asked).await.unwrap();
    assert_eq!(read.len(), 3, "one entry per existing webhook: {read:?}");
    let entry = |id: &WebhookId| read.iter().find(|(i, _)| i == id).map(|(_, t)| t);
    let target = entry(&first).unwrap().as_ref().unwrap();
    assert_eq!(target.url.as_str(), "https://example.com/hook/1");
    assert_eq!(target.workspace_id, a.id);
    assert_eq!(target.secret.expose(), "a-secret-of-hook-0001");
    let target = entry(&second).unwrap().as_ref().unwrap();
    assert_eq!(target.workspace_id, b.id, "whatever its workspace");
    assert!(entry(&unknown).is_none(), "an unknown id has no entry");
    let error = entry(&broken).unwrap().as_ref().unwrap_err();
    assert!(!error.is_unavailable(), "an unreadable row: {error}");

    // The single read is the same read.
    assert!(db.store.delivery_target(&unknown).await.unwrap().is_none());
    assert!(db.store.delivery_target(&broken).await.is_err());
    let alone = db.store.delivery_target(&first).await.unwrap().unwrap();
    assert_eq!(alone.url.as_str(), "https://example.com/hook/1");
    assert!(db.store.delivery_targets(&[]).await.unwrap().is_empty());
}
