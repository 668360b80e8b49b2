//! Registering, reading, updating and deleting webhooks, as the seed documents them.

use qr3_domain::Trigger;
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId};
use qr3_store::{AttemptRecord, AttemptStatus};
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, is_timestamp, json_body, spawn_app, spawn_app_with};

const SEED_REQUEST: &str = r#"{ "url": "https://example.com/webhooks/qr3",
  "events": ["qr.scanned", "qr.created"],
  "secret": "my-secret-key-min-16-chars" }"#;

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn the_seed_example_answers_the_seed_response() {
    let app = spawn_app_with(|s| {
        s.api.require_https = true;
        s.delivery.allow_private_targets = false;
    })
    .await;
    let response = app
        .request(reqwest::Method::POST, "/v1/webhooks")
        .header(header::CONTENT_TYPE, "application/json")
        .body(SEED_REQUEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let body = json_body(response, StatusCode::CREATED).await;

    assert_eq!(
        keys(&body),
        [
            "created_at",
            "disabled_at",
            "disabled_reason",
            "events",
            "id",
            "is_active",
            "max_per_second",
            "secret",
            "secret_hint",
            "secret_whsec",
            "updated_at",
            "url"
        ]
    );
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("wh_"), "{id}");
    assert!(WebhookId::parse(id).is_ok(), "{id}");
    assert_eq!(location, format!("/v1/webhooks/{id}"));
    assert_eq!(body["url"], "https://example.com/webhooks/qr3");
    assert_eq!(body["events"], json!(["qr.scanned", "qr.created"]));
    assert_eq!(body["is_active"], true);
    assert_eq!(body["secret"], "my-secret-key-min-16-chars");
    // base64.b64encode(b"my-secret-key-min-16-chars"), for the Standard Webhooks libraries.
    assert_eq!(
        body["secret_whsec"],
        "whsec_bXktc2VjcmV0LWtleS1taW4tMTYtY2hhcnM="
    );
    assert_eq!(body["secret_hint"], "my-s\u{2026}");
    let created_at = body["created_at"].as_str().unwrap();
    assert!(is_timestamp(created_at), "{created_at}");
    assert_eq!(body["updated_at"], body["created_at"]);
    assert_eq!(body["disabled_at"], Value::Null);
    assert_eq!(body["disabled_reason"], Value::Null);
    // The Part A response is a subset of ours, key for key, in the same order.
    let seed_order = [
        "id",
        "url",
        "events",
        "is_active",
        "secret",
        "secret_hint",
        "created_at",
    ];
    let ours: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| seed_order.contains(k))
        .collect();
    assert_eq!(ours, seed_order);
}

#[tokio::test]
async fn a_webhook_created_without_a_secret_gets_a_strong_one() {
    let app = spawn_app().await;
    let body = app
        .create_webhook(&json!({"url": "https://example.com/h", "events": ["*"]}))
        .await;
    let secret = body["secret"]
        .as_str()
        .expect("the generated secret is shown");
    assert!(secret.len() >= 40, "{secret}");
    let hint: String = secret.chars().take(4).chain(['\u{2026}']).collect();
    assert_eq!(body["secret_hint"], hint);

    let id = WebhookId::parse(body["id"].as_str().unwrap()).unwrap();
    let stored = app
        .db
        .store
        .webhook_secret(&app.workspace, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.expose(),
        secret,
        "the shown secret is the one signing"
    );

    let other = app
        .create_webhook(&json!({"url": "https://example.com/h", "events": ["*"], "secret": null}))
        .await;
    assert_ne!(other["secret"], body["secret"]);
}

#[tokio::test]
async fn reads_never_show_the_secret() {
    let app = spawn_app().await;
    let created = app
        .create_webhook(&serde_json::from_str(SEED_REQUEST).unwrap())
        .await;
    let id = created["id"].as_str().unwrap();

    let read = json_body(app.get(&format!("/v1/webhooks/{id}")).await, StatusCode::OK).await;
    assert!(read.get("secret").is_none(), "{read}");
    assert!(read.get("secret_whsec").is_none(), "{read}");
    assert_eq!(read["secret_hint"], "my-s\u{2026}");
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    without_secret
        .as_object_mut()
        .unwrap()
        .remove("secret_whsec");
    assert_eq!(read, without_secret, "a read shows what the create showed");

    let list = json_body(app.get("/v1/webhooks").await, StatusCode::OK).await;
    assert_eq!(list["data"], json!([without_secret]));
    assert!(!list.to_string().contains("my-secret-key"), "{list}");
    assert!(!list.to_string().contains("whsec_"), "{list}");
}

#[tokio::test]
async fn patch_changes_each_field() {
    let app = spawn_app().await;
    let created = app
        .create_webhook(&serde_json::from_str(SEED_REQUEST).unwrap())
        .await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());

    let patched = json_body(
        app.patch_json(&path, &json!({"url": "http://127.0.0.1:9/elsewhere"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["url"], "http://127.0.0.1:9/elsewhere");
    assert_eq!(
        patched["events"], created["events"],
        "other fields unchanged"
    );
    assert!(patched.get("secret").is_none(), "secret not set, not shown");
    assert!(patched.get("secret_whsec").is_none());
    assert!(patched["updated_at"].as_str() >= created["updated_at"].as_str());
    assert_eq!(patched["created_at"], created["created_at"]);

    let patched = json_body(
        app.patch_json(&path, &json!({"events": ["*", "webhook.ping"]}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["events"], json!(["*", "webhook.ping"]));
    assert_eq!(patched["url"], "http://127.0.0.1:9/elsewhere");

    let response = app
        .patch_json(&path, &json!({"secret": "another-secret-of-length"}))
        .await;
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let patched = json_body(response, StatusCode::OK).await;
    assert_eq!(patched["secret"], "another-secret-of-length");
    assert_eq!(
        patched["secret_whsec"],
        "whsec_YW5vdGhlci1zZWNyZXQtb2YtbGVuZ3Ro"
    );
    assert_eq!(patched["secret_hint"], "anot\u{2026}");
    let read = json_body(app.get(&path).await, StatusCode::OK).await;
    assert!(read.get("secret").is_none());
    assert!(read.get("secret_whsec").is_none());
    assert_eq!(read["secret_hint"], "anot\u{2026}");
    let id = WebhookId::parse(created["id"].as_str().unwrap()).unwrap();
    let stored = app
        .db
        .store
        .webhook_secret(&app.workspace, &id)
        .await
        .unwrap();
    assert_eq!(stored.unwrap().expose(), "another-secret-of-length");

    // Several fields at once.
    let patched = json_body(
        app.patch_json(
            &path,
            &json!({"url": "https://example.org/x", "events": ["qr.deleted"], "is_active": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["url"], "https://example.org/x");
    assert_eq!(patched["events"], json!(["qr.deleted"]));
    assert_eq!(patched["is_active"], true);
}

#[tokio::test]
async fn disabling_shows_when_and_why_and_re_enabling_clears_it() {
    let app = spawn_app().await;
    let created = app.create_simple_webhook(1).await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());

    let disabled = json_body(
        app.patch_json(&path, &json!({"is_active": false})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(disabled["is_active"], false);
    assert!(is_timestamp(disabled["disabled_at"].as_str().unwrap()));
    assert_eq!(disabled["disabled_reason"], "disabled through the API");
    let read = json_body(app.get(&path).await, StatusCode::OK).await;
    assert_eq!(read["disabled_at"], disabled["disabled_at"]);

    // Disabling again keeps the original time and reason.
    let again = json_body(
        app.patch_json(&path, &json!({"is_active": false})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["disabled_at"], disabled["disabled_at"]);

    let enabled = json_body(
        app.patch_json(&path, &json!({"is_active": true})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(enabled["is_active"], true);
    assert_eq!(enabled["disabled_at"], Value::Null);
    assert_eq!(enabled["disabled_reason"], Value::Null);
}

#[tokio::test]
async fn re_enabling_a_webhook_disabled_by_failures_resets_its_count() {
    let app = spawn_app().await;
    let created = app.create_simple_webhook(1).await;
    let id = WebhookId::parse(created["id"].as_str().unwrap()).unwrap();
    let failures: Vec<AttemptRecord> = (0..10)
        .map(|_| AttemptRecord {
            id: DeliveryId::generate(),
            webhook_id: id.clone(),
            workspace_id: app.workspace.clone(),
            event_id: EventId::generate(),
            event_type: EventType::QrScanned,
            status: AttemptStatus::Failed,
            status_code: Some(500),
            response_time_ms: 12,
            attempt: 1,
            trigger: Trigger::Event,
            error: None,
            created_at: Timestamp::now(),
            detail: None,
        })
        .collect();
    app.db.store.record_attempts(&failures, 10).await.unwrap();

    let path = format!("/v1/webhooks/{id}");
    let read = json_body(app.get(&path).await, StatusCode::OK).await;
    assert_eq!(read["is_active"], false);
    assert!(is_timestamp(read["disabled_at"].as_str().unwrap()));
    assert_eq!(
        read["disabled_reason"],
        "10 consecutive failed delivery attempts"
    );

    let enabled = json_body(
        app.patch_json(&path, &json!({"is_active": true})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(enabled["is_active"], true);
    assert_eq!(enabled["disabled_at"], Value::Null);
    let stored = app
        .db
        .store
        .get_webhook(&app.workspace, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.consecutive_failures, 0);
}

#[tokio::test]
async fn a_deleted_webhook_is_gone() {
    let app = spawn_app().await;
    let created = app.create_simple_webhook(1).await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());

    let response = app.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.headers().get(header::CONTENT_TYPE).is_none());
    assert!(response.bytes().await.unwrap().is_empty());

    assert_error(
        app.get(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert_error(
        app.delete(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert_error(
        app.get(&format!("{path}/deliveries")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let list = json_body(app.get("/v1/webhooks").await, StatusCode::OK).await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn secrets_are_stored_encrypted() {
    let app = spawn_app().await;
    let created = app
        .create_webhook(&serde_json::from_str(SEED_REQUEST).unwrap())
        .await;
    let rows = app
        .db
        .query(
            "SELECT id, secret_ciphertext, secret_hint, row_to_json(webhooks)::text FROM webhooks",
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let id: &str = rows[0].get(0);
    assert_eq!(id, created["id"]);
    let ciphertext: &[u8] = rows[0].get(1);
    let secret = b"my-secret-key-min-16-chars";
    assert!(
        ciphertext.len() > secret.len(),
        "nonce and tag are stored too"
    );
    assert!(
        !ciphertext.windows(secret.len()).any(|w| w == secret),
        "the secret is not stored in clear"
    );
    let hint: &str = rows[0].get(2);
    assert_eq!(hint, "my-s\u{2026}");
    let whole_row: &str = rows[0].get(3);
    assert!(!whole_row.contains("my-secret-key"), "{whole_row}");
}
