//! Tenants provisioned by the platform, end to end: a workspace created under the
//! platform's own id through `/admin/v1` gets the events published with that id; a
//! revoked key stops working on every API replica; an offboarded workspace leaves no
//! row behind, its queued jobs are skipped and its later events are counted, never
//! delivered; and the CLI's operator commands do the same on the database.

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use qr3_config::{Redacted, Settings};
use qr3_testkit::{Behaviour, Receiver, TestDb};
use qr3_webhooks::{app, cli::PublishArgs, Roles};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, spawn_roles_with, TestApp};

const TOKEN: &str = "admin-e2e-0123456789abcdefghijklmnopqr";

fn with_admin_token(s: &mut Settings) {
    s.api.admin_token = Redacted::new(vec![TOKEN.into()]);
}

fn admin(base: &str, method: Method, path: &str) -> RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN)
}

/// Creates workspace `id` through the admin API and mints its key; returns the key.
async fn provision(base: &str, id: &str) -> String {
    let created = admin(base, Method::PUT, &format!("/admin/v1/workspaces/{id}"))
        .json(&json!({"name": format!("customer {id}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let key: Value = admin(
        base,
        Method::POST,
        &format!("/admin/v1/workspaces/{id}/api-keys"),
    )
    .send()
    .await
    .unwrap()
    .error_for_status()
    .unwrap()
    .json()
    .await
    .unwrap();
    key["api_key"].as_str().unwrap().to_owned()
}

/// Registers a webhook for every event through `/v1` with `key`; returns it.
async fn register(base: &str, key: &str, url: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(key)
        .json(&json!({"url": url, "events": ["*"]}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Publishes like the platform, for workspace `workspace`.
async fn publish_for(settings: &Settings, workspace: &str, id: &str) {
    let args = PublishArgs {
        workspace: workspace.to_owned(),
        event_type: "qr.scanned".into(),
        id: Some(id.to_owned()),
        data: json!({"code_id": "qr_1"}).to_string(),
    };
    qr3_webhooks::publish::publish(settings, &args)
        .await
        .expect("publish");
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let client = app.store.pool().get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn count_is(app: &TestApp, sql: &str, n: i64) -> bool {
    count(app, sql).await == n
}

/// The value of an unlabelled series on the app's /metrics.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn metric_is(app: &TestApp, name: &str, value: f64) -> bool {
    metric(app, name).await == value
}

/// `sha256=` + hex HMAC-SHA256 of `body` with `secret`, computed here.
fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn an_event_published_with_the_platforms_id_reaches_that_workspaces_webhooks() {
    let app = spawn_app_with(with_admin_token).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let elsewhere = Receiver::start(Behaviour::Status(200)).await;
    let key = provision(&app.api, "acme-42").await;
    let webhook = register(&app.api, &key, &receiver.url()).await;
    // Another workspace's webhook gets none of acme-42's events.
    register(&app.api, &app.api_key, &elsewhere.url()).await;

    publish_for(&app.settings, "acme-42", "evt_platform_1").await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let payload = got[0].json();
    assert_eq!(payload["id"], "evt_platform_1");
    assert_eq!(payload["type"], "qr.scanned");
    assert_eq!(payload["data"], json!({"code_id": "qr_1"}));
    // Signed with the secret the webhook was registered with.
    assert_eq!(
        got[0].header("x-qr3-signature").unwrap(),
        signature(webhook["secret"].as_str().unwrap(), &got[0].body)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(elsewhere.received().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_by_every_api_replica() {
    let app = spawn_roles_with(Roles::API, with_admin_token).await;
    // A second API replica on the same database.
    let replica = app::start(app.settings.clone(), Roles::API).await.unwrap();
    let replicas = [
        app.api.clone(),
        format!("http://{}", replica.api_addr.unwrap()),
    ];
    let key = provision(&app.api, "acme").await;
    let keys: Value = admin(
        &replicas[1],
        Method::GET,
        "/admin/v1/workspaces/acme/api-keys",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let status = |base: String, key: String| async move {
        reqwest::Client::new()
            .get(format!("{base}/v1/webhooks"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status()
    };
    for base in &replicas {
        assert_eq!(status(base.clone(), key.clone()).await, StatusCode::OK);
    }
    let revoked = admin(
        &replicas[0],
        Method::DELETE,
        &format!("/admin/v1/workspaces/acme/api-keys/{key_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    // No wait: keys are checked against the database on every request.
    for base in &replicas {
        assert_eq!(
            status(base.clone(), key.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{base}"
        );
    }
    replica.stop().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn an_offboarded_workspace_leaves_no_row_and_none_of_its_events_is_delivered() {
    let roles = Roles {
        api: true,
        ingest: true,
        sender: false,
    };
    let app = spawn_roles_with(roles, with_admin_token).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let key = provision(&app.api, "gone").await;
    let webhook = register(&app.api, &key, &receiver.url()).await;
    let webhook_id = webhook["id"].as_str().unwrap().to_owned();
    reqwest::Client::new()
        .post(format!(
            "{}/v1/webhooks/{webhook_id}/rotate-secret",
            app.api
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    // One event delivered and logged.
    let sender = app::start(app.settings.clone(), Roles::SENDER)
        .await
        .unwrap();
    publish_for(&app.settings, "gone", "evt_before").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let logged = "SELECT count(*) FROM delivery_log_all WHERE workspace_id = 'gone'";
    eventually("the attempt logged", || count_is(&app, logged, 1)).await;
    sender.stop().await.unwrap();

    // Two more fanned out while no sender runs: their jobs wait in the queue.
    publish_for(&app.settings, "gone", "evt_queued_1").await;
    publish_for(&app.settings, "gone", "evt_queued_2").await;
    let fanned = "SELECT count(*) FROM ingested_events WHERE workspace_id = 'gone' \
                  AND fanned_out_at IS NOT NULL";
    eventually("both fanned out", || count_is(&app, fanned, 3)).await;

    let response = admin(&app.api, Method::DELETE, "/admin/v1/workspaces/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Gone from every table.
    let tables = [
        "SELECT count(*) FROM workspaces WHERE id = 'gone'".to_owned(),
        "SELECT count(*) FROM api_keys WHERE workspace_id = 'gone'".to_owned(),
        "SELECT count(*) FROM webhooks WHERE workspace_id = 'gone'".to_owned(),
        format!("SELECT count(*) FROM webhook_previous_secrets WHERE webhook_id = '{webhook_id}'"),
        "SELECT count(*) FROM ingested_events WHERE workspace_id = 'gone'".to_owned(),
        "SELECT count(*) FROM delivery_log_all WHERE workspace_id = 'gone'".to_owned(),
        format!("SELECT count(*) FROM delivery_log_all WHERE webhook_id = '{webhook_id}'"),
        "SELECT count(*) FROM delivery_log_payloads WHERE workspace_id = 'gone'".to_owned(),
    ];
    for sql in &tables {
        assert_eq!(count(&app, sql).await, 0, "{sql}");
    }
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/webhooks", app.api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // An event published afterwards is acknowledged and counted, not dead-lettered.
    publish_for(&app.settings, "gone", "evt_after").await;
    let unknown = "qr3_events_unknown_workspace_total";
    eventually("the late event counted", || metric_is(&app, unknown, 1.0)).await;

    // The queued jobs are skipped once a sender runs again; nothing is delivered.
    let sender = app::start(app.settings.clone(), Roles::SENDER)
        .await
        .unwrap();
    let skipped = sender
        .metrics
        .deliveries_skipped_total
        .with_label_values(&["webhook_deleted"]);
    eventually("both queued jobs skipped", || {
        std::future::ready(skipped.get() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1, "only the event before");
    assert_eq!(skipped.get(), 2, "nothing else was there to skip");
    for sql in &tables {
        assert_eq!(count(&app, sql).await, 0, "still: {sql}");
    }
    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in [
        app.topology().ingest_queue(),
        app.topology().ingest_dead_queue(),
        app.topology().deliveries_queue(),
    ] {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap();
        assert!(message.is_none(), "{queue} is empty");
    }
    sender.stop().await.unwrap();
    app.stop().await;
}

fn bin(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"));
    cmd.env_remove("RUST_LOG")
        .env("QR3__DATABASE__URL", &db.url)
        .env("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true");
    cmd
}

/// Runs the binary with `args`; its stdout as JSON when it succeeds, else its stderr.
fn run(db: &TestDb, args: &[&str]) -> Result<Value, String> {
    let out = bin(db).args(args).output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("one JSON object"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_cli_provisions_rotates_and_offboards_like_the_admin_api() {
    let db = TestDb::new().await.unwrap();
    for args in [
        &["api-key", "--help"][..],
        &["api-key", "revoke", "--help"],
        &["workspace", "delete", "--help"],
    ] {
        assert!(
            bin(&db).args(args).output().unwrap().status.success(),
            "{args:?}"
        );
    }
    let created = run(
        &db,
        &["workspace", "create", "Acme GmbH", "--id", "acme-42"],
    )
    .unwrap();
    assert_eq!(created["workspace_id"], "acme-42");
    let first = created["api_key"].as_str().unwrap().to_owned();
    let error = run(&db, &["workspace", "create", "Again", "--id", "acme-42"]).unwrap_err();
    assert!(
        error.contains("workspace acme-42 already exists"),
        "{error}"
    );
    let error = run(&db, &["workspace", "create", "Bad", "--id", "not.valid"]).unwrap_err();
    assert!(error.contains("invalid --id"), "{error}");

    let second = run(&db, &["api-key", "create", "--workspace", "acme-42"]).unwrap();
    let second_key = second["api_key"].as_str().unwrap().to_owned();
    let listed = run(&db, &["api-key", "list", "--workspace", "acme-42"]).unwrap();
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], second["id"], "newest first");
    assert!(!listed.to_string().contains("qr3k_"), "no secrets listed");
    let first_id = data[1]["id"].as_str().unwrap().to_owned();
    let revoked = run(
        &db,
        &["api-key", "revoke", "--workspace", "acme-42", &first_id],
    )
    .unwrap();
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(db.store.authenticate(&first).await.unwrap(), None);
    assert_eq!(
        db.store
            .authenticate(&second_key)
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        "acme-42"
    );

    let deleted = run(&db, &["workspace", "delete", "acme-42"]).unwrap();
    assert_eq!(
        deleted,
        json!({"workspace_id": "acme-42", "deleted": {"webhooks": 0, "api_keys": 2, "events": 0, "deliveries": 0}})
    );
    assert_eq!(db.store.authenticate(&second_key).await.unwrap(), None);
    let error = run(&db, &["workspace", "delete", "acme-42"]).unwrap_err();
    assert!(error.contains("no workspace acme-42"), "{error}");
    let error = run(&db, &["api-key", "list", "--workspace", "acme-42"]).unwrap_err();
    assert!(error.contains("no workspace acme-42"), "{error}");
}
