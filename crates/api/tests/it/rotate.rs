//! `POST /v1/webhooks/{id}/rotate-secret`: a new secret shown once, the previous one kept
//! (encrypted) for the grace period, scoped to the workspace like every route.

use qr3_domain::{Timestamp, WebhookId};
use reqwest::{header, Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_error, is_timestamp, json_body, spawn_app, spawn_app_with};

const OLD: &str = "my-secret-key-min-16-chars";

#[tokio::test]
async fn rotating_shows_a_new_secret_once_and_keeps_the_old_one_signing() {
    let app = spawn_app_with(|s| s.secrets.rotation_grace_ms = 3_600_000).await;
    let created = app
        .create_webhook(&json!({"url": "https://example.com/h", "events": ["*"], "secret": OLD}))
        .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}/rotate-secret");

    let before = Timestamp::now();
    let response = app.request(Method::POST, &path).send().await.unwrap();
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let rotated = json_body(response, StatusCode::OK).await;
    let secret = rotated["secret"].as_str().expect("the new secret is shown");
    assert_ne!(secret, OLD);
    assert!(secret.len() >= 40, "a generated secret: {secret}");
    let whsec = rotated["secret_whsec"].as_str().unwrap();
    let decoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(whsec.strip_prefix("whsec_").expect("whsec_ prefix"))
            .unwrap()
    };
    assert_eq!(decoded, secret.as_bytes(), "secret_whsec is the same key");
    let hint: String = secret.chars().take(4).chain(['\u{2026}']).collect();
    assert_eq!(rotated["secret_hint"], hint);
    assert_eq!(rotated["id"], created["id"]);
    assert_eq!(rotated["url"], created["url"]);
    assert!(rotated["updated_at"].as_str() >= created["updated_at"].as_str());
    let expires = rotated["previous_secret_expires_at"].as_str().unwrap();
    assert!(is_timestamp(expires), "{expires}");
    let expires = Timestamp::parse(expires).unwrap();
    let grace = expires.unix_millis() - before.unix_millis();
    assert!(
        (3_600_000..3_610_000).contains(&grace),
        "expires after the configured grace: {grace} ms"
    );

    // Reads show the new hint only.
    let read = json_body(app.get(&format!("/v1/webhooks/{id}")).await, StatusCode::OK).await;
    for hidden in ["secret", "secret_whsec", "previous_secret_expires_at"] {
        assert!(read.get(hidden).is_none(), "{hidden} in {read}");
    }
    assert_eq!(read["secret_hint"], hint);

    // The sender signs X-QR3-Signature with the new secret and webhook-signature with both.
    let webhook = WebhookId::parse(id).unwrap();
    let target = app
        .db
        .store
        .delivery_target(&webhook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target.secret.expose(), secret);
    let signing: Vec<&str> = target
        .signing_secrets(Timestamp::now())
        .map(|s| s.expose())
        .collect();
    assert_eq!(signing, [secret, OLD], "newest first");

    // The previous secret is stored encrypted, like the current one.
    let rows = app
        .db
        .query("SELECT secret_ciphertext, row_to_json(p)::text FROM webhook_previous_secrets p")
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let ciphertext: &[u8] = rows[0].get(0);
    assert!(!ciphertext.windows(OLD.len()).any(|w| w == OLD.as_bytes()));
    let whole_row: &str = rows[0].get(1);
    assert!(!whole_row.contains("my-secret-key"), "{whole_row}");
}

#[tokio::test]
async fn a_patched_secret_replaces_every_secret_at_once() {
    let app = spawn_app().await;
    let created = app
        .create_webhook(&json!({"url": "https://example.com/h", "events": ["*"], "secret": OLD}))
        .await;
    let id = created["id"].as_str().unwrap();
    let rotated = json_body(
        app.request(Method::POST, &format!("/v1/webhooks/{id}/rotate-secret"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let patched = json_body(
        app.patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"secret": "replaced-at-once-0123"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(
        patched.get("previous_secret_expires_at").is_none(),
        "{patched}"
    );
    let target = app
        .db
        .store
        .delivery_target(&WebhookId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let signing: Vec<&str> = target
        .signing_secrets(Timestamp::now())
        .map(|s| s.expose())
        .collect();
    assert_eq!(
        signing,
        ["replaced-at-once-0123"],
        "neither {OLD} nor {} signs any more",
        rotated["secret"]
    );
}

#[tokio::test]
async fn only_the_newest_previous_secrets_are_kept() {
    let app = spawn_app().await;
    let created = app
        .create_webhook(&json!({"url": "https://example.com/h", "events": ["*"], "secret": OLD}))
        .await;
    let id = created["id"].as_str().unwrap();
    let mut secrets = vec![OLD.to_owned()];
    for _ in 0..7 {
        let rotated = json_body(
            app.request(Method::POST, &format!("/v1/webhooks/{id}/rotate-secret"))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    }
    let target = app
        .db
        .store
        .delivery_target(&WebhookId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let signing: Vec<&str> = target
        .signing_secrets(Timestamp::now())
        .map(|s| s.expose())
        .collect();
    let keep = 1 + qr3_store::MAX_PREVIOUS_SECRETS as usize;
    let expected: Vec<&str> = secrets
        .iter()
        .rev()
        .take(keep)
        .map(String::as_str)
        .collect();
    assert_eq!(signing, expected);
}

#[tokio::test]
async fn rotation_is_scoped_to_the_workspace() {
    let app = spawn_app().await;
    let created = app.create_simple_webhook(1).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}/rotate-secret");
    let (_, other_key) = app.other_workspace().await;

    assert_error(
        app.request_as(&other_key, Method::POST, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    for unknown in ["wh_01kmnd4e2x7r4h1v3f5s8q0c9b", "not-an-id"] {
        assert_error(
            app.request(
                Method::POST,
                &format!("/v1/webhooks/{unknown}/rotate-secret"),
            )
            .send()
            .await
            .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    assert_error(
        app.client.post(app.url(&path)).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    assert_error(
        app.get(&path).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;

    // Nothing changed for the webhook.
    let rows = app
        .db
        .query("SELECT count(*) FROM webhook_previous_secrets")
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
    let read = json_body(app.get(&format!("/v1/webhooks/{id}")).await, StatusCode::OK).await;
    assert_eq!(read["secret_hint"], created["secret_hint"]);
}
