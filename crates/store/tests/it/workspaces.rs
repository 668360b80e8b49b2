//! Workspaces, API keys and secrets at rest.

use qr3_domain::{Subscriptions, TargetPolicy, WebhookSecret, WebhookUrl};
use qr3_store::NewWebhook;
use qr3_testkit::TestDb;

#[tokio::test]
async fn api_keys_authenticate_only_their_workspace() {
    let db = TestDb::new().await.unwrap();
    let a = db.store.create_workspace("a").await.unwrap();
    let b = db.store.create_workspace("b").await.unwrap();
    assert_eq!(
        db.store.authenticate(a.api_key.token()).await.unwrap(),
        Some(a.id.clone())
    );
    assert_eq!(
        db.store.authenticate(b.api_key.token()).await.unwrap(),
        Some(b.id.clone())
    );
    let mut forged = a.api_key.token().to_owned();
    forged.pop();
    forged.push('x');
    assert_eq!(db.store.authenticate(&forged).await.unwrap(), None);
    assert_eq!(db.store.authenticate("nonsense").await.unwrap(), None);
    let rows = db
        .query("SELECT secret_sha256 FROM api_keys")
        .await
        .unwrap();
    for row in rows {
        let hash: Vec<u8> = row.get(0);
        assert_eq!(hash.len(), 32, "only a hash is stored");
    }
}

#[tokio::test]
async fn webhook_secrets_are_encrypted_at_rest() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap();
    let secret = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
    let hook = db
        .store
        .insert_webhook(
            &ws.id,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/hook", TargetPolicy::default())
                    .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: secret.clone(),
                max_per_second: None,
            },
        )
        .await
        .unwrap();
    let rows = db
        .query("SELECT secret_ciphertext::text, secret_hint FROM webhooks")
        .await
        .unwrap();
    let raw: String = rows[0].get(0);
    assert!(
        !raw.contains(&hex_of(b"my-secret")),
        "the secret is not stored in clear"
    );
    assert_eq!(rows[0].get::<_, String>(1), "my-s\u{2026}");
    assert_eq!(
        db.store.webhook_secret(&ws.id, &hook.id).await.unwrap(),
        Some(secret)
    );
    let other = db.store.create_workspace("b").await.unwrap();
    assert!(db
        .store
        .get_webhook(&other.id, &hook.id)
        .await
        .unwrap()
        .is_none());
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
