//! Start-up that waits for its dependencies: every role started while Postgres or
//! RabbitMQ is away stays up, answers `/healthz`, reports on `/readyz` what it waits
//! for, and delivers within seconds of the dependency coming back. A role waits for the
//! schema the migration Job brings instead of running against an older one, and only
//! creating a missing database needs the `postgres` maintenance database.
//!
//! "Away" is a closed [`TcpProxy`]: the process's connections to it are closed as soon
//! as they are accepted. Opening the proxy brings the real service back for that process
//! only, so the shared servers the other tests use are never touched.

use std::time::{Duration, Instant};

use qr3_config::{MigrateOnStart, Redacted, Settings};
use qr3_domain::{Subscriptions, TargetPolicy, WebhookSecret, WebhookUrl, WorkspaceId};
use qr3_store::{NewWebhook, Store};
use qr3_testkit::proxy::postgres_startup_database;
use qr3_testkit::{host_port, url_via, Behaviour, Receiver, TcpProxy, TestDb};
use qr3_webhooks::cli::PublishArgs;
use qr3_webhooks::{app, Roles, Running};
use serde_json::{json, Value};

use crate::helpers::{delete_broker_objects, SECRET};

/// How long a role may take to deliver once its dependency is back: seconds, where
/// Kubernetes' CrashLoopBackOff would take minutes.
const BACK_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Away {
    Postgres,
    RabbitMq,
}

impl Away {
    /// The name `/readyz` gives it.
    fn dependency(self) -> &'static str {
        match self {
            Away::Postgres => "database",
            Away::RabbitMq => "broker",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_started_while_postgres_is_away() {
    waits_out(Roles::API, Away::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_started_while_rabbitmq_is_away() {
    waits_out(Roles::API, Away::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_started_while_postgres_is_away() {
    waits_out(Roles::INGEST, Away::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_started_while_rabbitmq_is_away() {
    waits_out(Roles::INGEST, Away::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_started_while_postgres_is_away() {
    waits_out(Roles::SENDER, Away::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_started_while_rabbitmq_is_away() {
    waits_out(Roles::SENDER, Away::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_started_while_postgres_is_away() {
    waits_out(Roles::ALL, Away::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_started_while_rabbitmq_is_away() {
    waits_out(Roles::ALL, Away::RabbitMq).await;
}

/// `roles` started while `away` is unreachable, the other roles running normally in a
/// process of their own, the schema and topology in place (the migration Job ran).
async fn waits_out(roles: Roles, away: Away) {
    let db = TestDb::new().await.unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    app::migrate(&settings).await.unwrap();
    let (proxy, waiting_settings) = behind_proxy(&settings, away).await;
    let others = Roles {
        api: !roles.api,
        ingest: !roles.ingest,
        sender: !roles.sender,
    };
    let healthy = match others.api || others.ingest || others.sender {
        true => Some(app::start(settings.clone(), others).await.unwrap()),
        false => None,
    };
    let workspace = db.store.create_workspace("w").await.unwrap();
    let api_key = workspace.api_key.token().to_owned();
    let receiver = Receiver::start(Behaviour::Status(200)).await;

    let waiting = app::launch(waiting_settings, roles).await.unwrap();
    let ops = ops_url(&waiting);

    // Up, not ready, saying what it waits for, its gauges at 0.
    let not_ready = readyz_waiting_for(&ops, away.dependency()).await;
    assert_eq!(not_ready["waiting_for"], json!([away.dependency()]));
    assert_eq!(get(&format!("{ops}/healthz")).await.0, 200);
    let metrics = get(&format!("{ops}/metrics")).await.1;
    assert!(metrics.contains("\nqr3_broker_connected 0\n"), "{metrics}");
    if away == Away::Postgres {
        assert!(metrics.contains("\nqr3_database_up 0\n"), "{metrics}");
    }
    if roles.api {
        let (status, body) = authed_get(&format!("{ops}/v1/webhooks"), &api_key).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
            "service_unavailable"
        );
    }

    // A worker's event is published during the outage and waits in the broker.
    let event_id = if roles.api {
        None
    } else {
        insert_webhook(&db.store, &workspace.id, &receiver.url()).await;
        Some(publish(&settings, &workspace.id).await)
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&format!("{ops}/healthz")).await.0, 200, "still up");
    assert_eq!(get(&format!("{ops}/readyz")).await.0, 503, "still waiting");
    assert!(receiver.received().is_empty(), "nothing delivered yet");

    proxy.open();
    let back = Instant::now();
    wait_until_ready(&ops).await;
    match event_id {
        Some(event_id) => {
            let got = receiver.wait_for(1, BACK_WITHIN).await;
            assert_eq!(got.len(), 1, "the event waiting in the broker is delivered");
            assert_eq!(got[0].header("x-qr3-event-id"), Some(event_id.as_str()));
        }
        None => {
            // The API works again: registers a webhook and pings it.
            let client = reqwest::Client::new();
            let created: Value = client
                .post(format!("{ops}/v1/webhooks"))
                .bearer_auth(&api_key)
                .json(&json!({"url": receiver.url(), "events": ["*"], "secret": SECRET}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ping = client
                .post(format!(
                    "{ops}/v1/webhooks/{}/ping",
                    created["id"].as_str().unwrap()
                ))
                .bearer_auth(&api_key)
                .send()
                .await
                .unwrap();
            assert_eq!(ping.status(), 200);
            let ping: Value = ping.json().await.unwrap();
            assert_eq!(ping["delivery"]["status"], "success");
            assert_eq!(receiver.received().len(), 1);
        }
    }
    assert!(
        back.elapsed() < BACK_WITHIN,
        "delivered {:?} after the {} came back",
        back.elapsed(),
        away.dependency()
    );
    let metrics = get(&format!("{ops}/metrics")).await.1;
    assert!(metrics.contains("\nqr3_database_up 1\n"), "{metrics}");
    assert!(metrics.contains("\nqr3_broker_connected 1\n"), "{metrics}");

    waiting.stop().await.unwrap();
    if let Some(healthy) = healthy {
        healthy.stop().await.unwrap();
    }
    delete_broker_objects(&settings).await;
}

#[test]
fn sigterm_while_waiting_for_postgres_exits_at_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deployment = crate::helpers::deployment(runtime.block_on(TestDb::new()).unwrap());
    let url = deployment.database_url();
    let proxy = runtime
        .block_on(TcpProxy::closed(&host_port(url, 5432)))
        .unwrap();
    let away = url_via(url, proxy.addr());
    let mut child = deployment
        .spawn_with(
            "sender",
            "sender",
            &[
                ("QR3__DATABASE__URL", away.as_str()),
                // Far longer than the test allows: stopping must not wait for it.
                ("QR3__SHUTDOWN__GRACE_PERIOD_MS", "20000"),
            ],
        )
        .unwrap();

    runtime.block_on(async {
        child
            .listening_within(Duration::from_secs(20))
            .await
            .unwrap();
        let ops = child.url();
        let not_ready = readyz_waiting_for(&ops, "database").await;
        assert_eq!(not_ready["waiting_for"], json!(["database"]));
        assert_eq!(get(&format!("{ops}/healthz")).await.0, 200);
        let metrics = get(&format!("{ops}/metrics")).await.1;
        assert!(metrics.contains("\nqr3_database_up 0\n"), "{metrics}");
        assert!(metrics.contains("\nqr3_broker_connected 0\n"), "{metrics}");
    });

    child.signal_stop();
    let sent = Instant::now();
    let exit = loop {
        if let Some(exit) = child.exited() {
            break exit;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the sender is still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "exited {:?} after SIGTERM",
        sent.elapsed()
    );
    let logs = child.log();
    assert!(logs.contains("waiting for the database"), "{logs}");
    assert!(!logs.contains("sender consuming"), "{logs}");
}

#[tokio::test]
async fn a_separate_role_waits_for_the_migration_job() {
    let db = TestDb::empty().await.unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    let sender = app::launch(settings.clone(), Roles::SENDER).await.unwrap();
    let ops = ops_url(&sender);

    let not_ready = readyz_waiting_for(&ops, "database").await;
    let reason = not_ready["reason"].as_str().unwrap();
    assert!(reason.contains("has no schema yet"), "{reason}");
    assert!(reason.contains("qr3-webhooks migrate"), "{reason}");
    let metrics = get(&format!("{ops}/metrics")).await.1;
    assert!(
        metrics.contains("\nqr3_database_up 1\n"),
        "the database answers: {metrics}"
    );
    let tables = db
        .query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .await
        .unwrap();
    assert_eq!(tables[0].get::<_, i64>(0), 0, "the sender did not migrate");

    // What the Kubernetes Job runs.
    app::migrate(&settings).await.unwrap();
    let migrated = Instant::now();
    wait_until_ready(&ops).await;
    let ingest = app::start(settings.clone(), Roles::INGEST).await.unwrap();
    let workspace = db.store.create_workspace("w").await.unwrap();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    insert_webhook(&db.store, &workspace.id, &receiver.url()).await;
    let event_id = publish(&settings, &workspace.id).await;
    let got = receiver.wait_for(1, BACK_WITHIN).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-qr3-event-id"), Some(event_id.as_str()));
    assert!(migrated.elapsed() < BACK_WITHIN);

    ingest.stop().await.unwrap();
    sender.stop().await.unwrap();
    delete_broker_objects(&settings).await;
}

#[tokio::test]
async fn an_api_on_an_older_schema_serves_nothing_until_it_is_migrated() {
    let db = TestDb::empty().await.unwrap();
    let required = qr3_store::required_schema_version();
    qr3_store::migrate_to(db.store.pool(), required - 1)
        .await
        .unwrap();
    // The version before the newest (migration numbers may have gaps).
    let Ok(qr3_store::SchemaCheck::Behind {
        applied: Some(older),
        ..
    }) = qr3_store::check_schema(db.store.pool()).await
    else {
        panic!("the schema is behind after migrate_to");
    };
    let workspace = db.store.create_workspace("w").await.unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    let api = app::launch(settings.clone(), Roles::API).await.unwrap();
    let ops = ops_url(&api);

    let not_ready = readyz_waiting_for(&ops, "database").await;
    let reason = not_ready["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "is at version {older} and this release needs {required}"
        )),
        "{reason}"
    );
    let (status, _) = authed_get(&format!("{ops}/v1/webhooks"), workspace.api_key.token()).await;
    assert_eq!(status, 503, "no request runs against the older schema");

    app::migrate(&settings).await.unwrap();
    wait_until_ready(&ops).await;
    let (status, body) = authed_get(&format!("{ops}/v1/webhooks"), workspace.api_key.token()).await;
    assert_eq!(status, 200, "{body}");

    api.stop().await.unwrap();
    delete_broker_objects(&settings).await;
}

#[tokio::test]
async fn a_separate_role_does_not_create_a_missing_database() {
    let db = TestDb::missing().unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    let ingest = app::launch(settings.clone(), Roles::INGEST).await.unwrap();
    let ops = ops_url(&ingest);

    let not_ready = readyz_waiting_for(&ops, "database").await;
    let reason = not_ready["reason"].as_str().unwrap();
    assert!(reason.contains("does not exist"), "{reason}");
    assert!(reason.contains("qr3-webhooks migrate"), "{reason}");
    assert!(!db.exists().await.unwrap());

    ingest.stop().await.unwrap();
    delete_broker_objects(&settings).await;
}

#[tokio::test]
async fn all_creates_and_migrates_its_database() {
    let db = TestDb::missing().unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    assert_eq!(settings.database.migrate_on_start, MigrateOnStart::Auto);
    let all = app::start(settings.clone(), Roles::ALL).await.unwrap();

    assert!(db.exists().await.unwrap());
    assert!(matches!(
        qr3_store::check_schema(db.store.pool()).await.unwrap(),
        qr3_store::SchemaCheck::UpToDate { .. }
    ));
    wait_until_ready(&format!("http://{}", all.api_addr.unwrap())).await;

    all.stop().await.unwrap();
    delete_broker_objects(&settings).await;
}

#[tokio::test]
async fn a_role_that_migrates_an_existing_database_needs_no_maintenance_database() {
    let db = TestDb::empty().await.unwrap();
    let mut settings = qr3_testkit::test_settings(&db.url);
    let server = host_port(&db.url, 5432);
    let gate = TcpProxy::closed(&server)
        .await
        .unwrap()
        .refusing(|first| postgres_startup_database(first).as_deref() == Some("postgres"));
    gate.open();
    settings.database.url = Redacted::new(url_via(&db.url, gate.addr()));
    settings.database.migrate_on_start = MigrateOnStart::Always;

    let sender = app::start(settings.clone(), Roles::SENDER).await.unwrap();
    wait_until_ready(&ops_url(&sender)).await;
    assert!(matches!(
        qr3_store::check_schema(db.store.pool()).await.unwrap(),
        qr3_store::SchemaCheck::UpToDate { .. }
    ));
    app::migrate(&settings).await.unwrap();
    assert_eq!(
        gate.refused(),
        0,
        "nothing asked for the maintenance database"
    );

    sender.stop().await.unwrap();
    delete_broker_objects(&settings).await;
}

/// A closed proxy to the service `away` names, and `settings` pointing at it.
async fn behind_proxy(settings: &Settings, away: Away) -> (TcpProxy, Settings) {
    let mut waiting = settings.clone();
    let proxy = match away {
        Away::Postgres => {
            let url = settings.database.url.expose();
            let proxy = TcpProxy::closed(&host_port(url, 5432)).await.unwrap();
            waiting.database.url = Redacted::new(url_via(url, proxy.addr()));
            proxy
        }
        Away::RabbitMq => {
            let url = settings.amqp.url.expose();
            let proxy = TcpProxy::closed(&host_port(url, 5672)).await.unwrap();
            waiting.amqp.url = Redacted::new(url_via(url, proxy.addr()));
            proxy
        }
    };
    (proxy, waiting)
}

fn ops_url(running: &Running) -> String {
    format!(
        "http://{}",
        running
            .api_addr
            .or(running.ops_addr)
            .expect("every process serves its ops endpoints")
    )
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn authed_get(url: &str, api_key: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(api_key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The `/readyz` body once it reports a failed try of `dependency` (503 throughout).
async fn readyz_waiting_for(ops: &str, dependency: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&format!("{ops}/readyz")).await;
        assert_eq!(status, 503, "not ready while waiting: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let reason = body["reason"].as_str().unwrap_or_default();
        if reason.contains(&format!("waiting for the {dependency} ("))
            && !reason.contains("not tried yet")
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never waited for the {dependency}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_ready(ops: &str) {
    let deadline = Instant::now() + BACK_WITHIN;
    loop {
        let (status, body) = get(&format!("{ops}/readyz")).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "not ready in time: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn insert_webhook(store: &Store, workspace: &WorkspaceId, url: &str) {
    let policy = TargetPolicy {
        require_https: false,
        allow_private: true,
    };
    store
        .insert_webhook(
            workspace,
            NewWebhook {
                url: WebhookUrl::parse(url, policy).unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::parse(SECRET).unwrap(),
                max_per_second: None,
            },
        )
        .await
        .unwrap();
}

/// Publishes one `qr.scanned` event as the platform does; its id.
async fn publish(settings: &Settings, workspace: &WorkspaceId) -> String {
    let args = PublishArgs {
        workspace: workspace.to_string(),
        event_type: "qr.scanned".into(),
        id: None,
        data: json!({"code_id": "qr_1"}).to_string(),
    };
    qr3_webhooks::publish::publish(settings, &args)
        .await
        .unwrap()
}
