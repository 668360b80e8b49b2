//! Secret rotation: the previous secret signs until its grace period ends, then is
//! dropped from delivery targets and, by retention, from the database.

use std::time::Duration;

use qr3_domain::{Subscriptions, TargetPolicy, Timestamp, WebhookSecret, WebhookUrl};
use qr3_store::NewWebhook;
use qr3_testkit::TestDb;

fn secret(s: &str) -> WebhookSecret {
    WebhookSecret::parse(s).unwrap()
}

#[tokio::test]
async fn a_previous_secret_signs_until_its_grace_period_ends() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap();
    let hook = db
        .store
        .insert_webhook(
            &ws.id,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/hook", TargetPolicy::default())
                    .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: secret("the-first-secret-000"),
                max_per_second: None,
            },
        )
        .await
        .unwrap();

    let rotated = db
        .store
        .rotate_webhook_secret(
            &ws.id,
            &hook.id,
            &secret("the-second-secret-00"),
            Duration::from_millis(300),
        )
        .await
        .unwrap()
        .expect("the webhook exists");
    assert_eq!(rotated.webhook.secret_hint, "the-\u{2026}");
    let target = db.store.delivery_target(&hook.id).await.unwrap().unwrap();
    assert_eq!(target.secret.expose(), "the-second-secret-00");
    let now = Timestamp::now();
    let signing: Vec<&str> = target.signing_secrets(now).map(|s| s.expose()).collect();
    assert_eq!(signing, ["the-second-secret-00", "the-first-secret-000"]);
    // A cached target stops using the old secret once it expires, without a re-read.
    let signing: Vec<&str> = target
        .signing_secrets(rotated.previous_expires_at)
        .map(|s| s.expose())
        .collect();
    assert_eq!(signing, ["the-second-secret-00"]);

    // Another workspace cannot rotate it.
    let other = db.store.create_workspace("b").await.unwrap();
    assert!(db
        .store
        .rotate_webhook_secret(
            &other.id,
            &hook.id,
            &secret("an-intruders-secret-0"),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .is_none());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let target = db.store.delivery_target(&hook.id).await.unwrap().unwrap();
    assert_eq!(target.secrets.len(), 1, "the expired secret is not read");
    let rows = db
        .query("SELECT count(*) FROM webhook_previous_secrets")
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1, "still stored until retention");
    qr3_store::run_retention(db.store.pool(), 30).await.unwrap();
    let rows = db
        .query("SELECT count(*) FROM webhook_previous_secrets")
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0, "retention forgets it");

    // Deleting the webhook deletes its previous secrets.
    db.store
        .rotate_webhook_secret(
            &ws.id,
            &hook.id,
            &secret("the-third-secret-000"),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(db.store.delete_webhook(&ws.id, &hook.id).await.unwrap());
    let rows = db
        .query("SELECT count(*) FROM webhook_previous_secrets")
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
}
