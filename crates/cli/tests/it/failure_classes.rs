//! Failure classes that once lost or looped (docs/reliability.md, "Failure classes"):
//! a stale negative cache, an unreadable webhook row, a job that cannot be attempted in
//! a bundle, a refused publish, an outage under a low broker delivery limit, the same
//! failure logged twice, and a dying internal task. Each test fails on the code before
//! these classes were closed.

use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use qr3_broker::{Outgoing, PublishError, Publisher};
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::{spawn_app_with, TestApp};

/// A header of a consumed message, as text.
fn text_header(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// Every message on `queue` (taken off it).
async fn drain(app: &TestApp, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        messages.push(message);
    }
    messages
}

async fn sql(app: &TestApp, statement: &str) {
    let client = app.store.pool().get().await.unwrap();
    client.batch_execute(statement).await.unwrap();
}

async fn consecutive_failures(app: &TestApp, webhook: &str) -> (i32, bool) {
    let client = app.store.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT consecutive_failures, is_active FROM webhooks WHERE id = $1",
            &[&webhook],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Class 1: a job is skipped only on a fresh answer. The sender saw the webhook
/// disabled (a ping reads it, and pings go to disabled webhooks too), the customer
/// re-enabled it, and the next event must be delivered, however long the sender's cache.
#[tokio::test]
async fn a_re_enabled_webhook_gets_the_next_event_whatever_the_cache() {
    let app = spawn_app_with(|s| s.delivery.webhook_cache_ms = 60_000).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["qr.scanned"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/webhooks/{}", app.api, hook.id);
    let patch = |active: bool| {
        http.patch(&url)
            .bearer_auth(&app.api_key)
            .json(&json!({ "is_active": active }))
            .send()
    };
    assert_eq!(patch(false).await.unwrap().status(), 200);
    let ping = http
        .post(format!("{url}/ping"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200, "the ping reached the disabled webhook");
    assert_eq!(patch(true).await.unwrap().status(), 200);

    let event = app.publish("qr.scanned", None, json!({"n": 1})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "the ping, then the event");
    assert_eq!(got[1].json()["id"], event.as_str());
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("qr3_deliveries_skipped_total{reason=\"webhook_disabled\"} 0"),
        "nothing was skipped: {metrics}"
    );
    app.stop().await;
}

/// Class 2: a webhook row this build cannot fully read (a type from a newer release)
/// affects that webhook only: it still gets the types it knows, and another
/// workspace's events in the same batches are delivered.
#[tokio::test]
async fn an_unreadable_webhook_row_affects_only_that_webhook() {
    let app = spawn_app_with(|_| {}).await;
    let odd = Receiver::start(Behaviour::Status(200)).await;
    let other = Receiver::start(Behaviour::Status(200)).await;
    let odd_hook = app.webhook(&odd.url(), &["qr.scanned"]).await;
    sql(
        &app,
        &format!(
            "UPDATE webhooks SET events = ARRAY['qr.scanned', 'qr.teleported'] WHERE id = '{}'",
            odd_hook.id
        ),
    )
    .await;
    let second = app.store.create_workspace("second").await.unwrap();
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/webhooks", app.api))
        .bearer_auth(second.api_key.token())
        .json(&json!({"url": other.url(), "events": ["*"], "secret": "another-secret-0123456789"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created["id"].is_string(), "{created}");

    // Interleaved, in one burst, so the two workspaces share ingest batches.
    let publisher = qr3_broker::SharedPublisher::new(app.settings.amqp.url.expose().clone(), "t");
    let messages: Vec<Outgoing> = (0..20)
        .map(|i| {
            let workspace = if i % 2 == 0 {
                app.workspace.to_string()
            } else {
                second.id.to_string()
            };
            Outgoing {
                exchange: app.settings.amqp.events_exchange.clone(),
                routing_key: "qr.scanned".into(),
                properties: lapin::BasicProperties::default().with_delivery_mode(2),
                body: json!({"id": format!("evt_row{i}"), "type": "qr.scanned", "workspace_id": workspace, "data": {}})
                    .to_string()
                    .into_bytes(),
            }
        })
        .collect();
    publisher.publish_all(&messages).await.unwrap();
    assert_eq!(odd.wait_for(10, Duration::from_secs(10)).await.len(), 10);
    assert_eq!(other.wait_for(10, Duration::from_secs(10)).await.len(), 10);
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains("qr3_webhook_rows_unreadable_total{reason=\"unknown_event_type\"} 0"),
        "the row was counted: {metrics}"
    );
    app.stop().await;
}

/// Class 3: one job that cannot be attempted (its webhook's secret does not decrypt)
/// fails alone: it is parked with backoff and then dead-lettered by itself, while its
/// bundle-mates are attempted once each (a failing one gets exactly its three
/// attempts, and is not disabled), and a previous secret that does not decrypt only
/// drops its own signature.
#[tokio::test]
async fn a_job_that_cannot_be_attempted_fails_alone() {
    let app = spawn_app_with(|s| {
        s.delivery.defer_ms = 100;
        s.delivery.job_failure_limit = 3;
        s.delivery.retry_delays_ms = vec![200, 400];
        s.delivery.disable_after_failures = 10;
    })
    .await;
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let broken = Receiver::start(Behaviour::Status(200)).await;
    let healthy = Receiver::start(Behaviour::Status(200)).await;
    let failing_hook = app.webhook(&failing.url(), &["*"]).await;
    let broken_hook = app.webhook(&broken.url(), &["*"]).await;
    let healthy_hook = app.webhook(&healthy.url(), &["*"]).await;
    sql(
        &app,
        &format!(
            "UPDATE webhooks SET secret_ciphertext = '\\x00112233'::bytea WHERE id = '{}';
             INSERT INTO webhook_previous_secrets (webhook_id, secret_ciphertext, rotated_at, expires_at)
             VALUES ('{}', '\\x00112233'::bytea, now(), now() + interval '1 hour')",
            broken_hook.id, healthy_hook.id
        ),
    )
    .await;

    let event = app.publish("qr.scanned", None, json!({"n": 1})).await;
    assert_eq!(healthy.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    assert_eq!(failing.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    let dead_queue = app.topology().deliveries_dead_queue();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dead = Vec::new();
    while dead.is_empty() && Instant::now() < deadline {
        dead = drain(&app, &dead_queue).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settle: nothing more may come.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        healthy.received().len(),
        1,
        "the healthy bundle-mate got it once"
    );
    assert_eq!(
        failing.received().len(),
        3,
        "the failing bundle-mate got its three attempts, no more"
    );
    assert!(broken.received().is_empty());
    assert_eq!(
        consecutive_failures(&app, failing_hook.id.as_str()).await,
        (3, true),
        "one event did not disable it"
    );
    assert_eq!(dead.len(), 1, "the broken job alone was dead-lettered");
    let properties = &dead[0].delivery.properties;
    assert_eq!(
        text_header(properties, "x-qr3-reason").as_deref(),
        Some("job_failed")
    );
    assert_eq!(
        text_header(properties, "x-qr3-webhook-id").as_deref(),
        Some(broken_hook.id.as_str())
    );
    assert_eq!(
        text_header(properties, "x-qr3-event-id").as_deref(),
        Some(event.as_str())
    );
    assert_eq!(
        text_header(properties, "x-qr3-queue"),
        Some(app.topology().deliveries_queue())
    );
    let error = text_header(properties, "x-qr3-error").unwrap();
    assert!(error.contains("does not decrypt"), "{error}");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("qr3_delivery_jobs_failed_total{outcome=\"dead_lettered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qr3_delivery_jobs_failed_total{outcome=\"parked\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

/// A job for a webhook that does not exist: the sender skips it.
fn filler(app: &TestApp, queue: String) -> Outgoing {
    let job = qr3_broker::DeliveryJob {
        webhook_id: qr3_domain::WebhookId::generate(),
        workspace_id: app.workspace.clone(),
        event_id: qr3_domain::EventId::generate(),
        event_type: qr3_domain::EventType::QrScanned,
        event_created: qr3_domain::Timestamp::now(),
        attempt: 2,
        trigger: qr3_broker::Trigger::Event,
        body: b"{}".to_vec(),
    };
    Outgoing {
        exchange: String::new(),
        routing_key: queue,
        properties: job.properties(),
        body: job.body,
    }
}

/// Makes `queue` refuse publishes for about its delay: a policy caps it at 0 messages
/// (RabbitMQ then refuses publishes while the queue holds any) and a filler job holds
/// it. Returns the policy's name once a publish is refused.
async fn refuse(app: &TestApp, queue: String) -> String {
    let policy = format!("{queue}-refuse");
    let status = std::process::Command::new("rabbitmqctl")
        .args([
            "set_policy",
            "-q",
            "--apply-to",
            "queues",
            "--priority",
            "10",
            &policy,
            &format!("^{}$", queue.replace('.', "\\.")),
            r#"{"max-length": 0}"#,
        ])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success());
    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test-probe")
        .await
        .unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match publisher.publish_all(&[filler(app, queue.clone())]).await {
            Err(PublishError::Nacked(_)) => break,
            other => {
                assert!(Instant::now() < deadline, "policy never applied: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    policy
}

fn clear_policy(policy: &str) {
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["clear_policy", "-q", policy])
        .status();
}

/// Class 4: while the retry queue refuses publishes, the failed job is held (no second
/// attempt 1, no loop, the webhook not disabled); once the queue takes publishes
/// again, the retries follow as scheduled. (Before, the job was requeued and attempted
/// again at once, over and over.)
#[tokio::test]
async fn a_refused_retry_publish_holds_the_job_instead_of_looping() {
    let app = spawn_app_with(|s| {
        s.delivery.retry_delays_ms = vec![2500, 300];
        s.delivery.disable_after_failures = 5;
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let hook = app.webhook(&receiver.url(), &["*"]).await;
    let policy = refuse(&app, app.topology().retry_queue(2500)).await;
    app.publish("qr.scanned", None, json!({"n": 1})).await;
    assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    // The retry is refused until the filler expires (2.5 s after it was queued).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("x-qr3-delivery-attempt").unwrap_or("?").to_owned())
        .collect();
    clear_policy(&policy);
    assert_eq!(
        during,
        ["1"],
        "one attempt while the retry could not be queued"
    );
    assert_eq!(
        consecutive_failures(&app, hook.id.as_str()).await,
        (1, true)
    );
    let got = receiver.wait_for(3, Duration::from_secs(15)).await;
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("x-qr3-delivery-attempt").unwrap().to_owned())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3, "no attempt after the last");
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains("qr3_dependency_waits_total{dependency=\"broker\"} 0"),
        "the wait was counted: {metrics}"
    );
    app.stop().await;
}

/// Class 5: an outage is waited out in the process, never by handing messages back to
/// the broker, so even a delivery limit of 2 dead-letters nothing and nothing is lost.
#[tokio::test]
async fn a_database_outage_under_a_low_delivery_limit_dead_letters_nothing() {
    let app = spawn_app_with(|s| {
        s.amqp.delivery_limit = 2;
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&receiver.url(), &["*"]).await;
    let before: Vec<String> = (0..10).map(|i| format!("evt_before{i}")).collect();
    app.publish_burst("qr.scanned", &before).await;
    assert_eq!(
        receiver.wait_for(10, Duration::from_secs(10)).await.len(),
        10
    );

    let database = qr3_store::database_name(app.settings.database.url.expose()).unwrap();
    let admin = |statement: String| async move {
        let client = qr3_store::connect_once(&qr3_testkit::database_server_url())
            .await
            .unwrap();
        client.batch_execute(&statement).await.unwrap();
    };
    admin(format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    ))
    .await;
    let during: Vec<String> = (0..10).map(|i| format!("evt_during{i}")).collect();
    app.publish_burst("qr.scanned", &during).await;
    // Long enough for several requeues under the old behaviour (one a second at most).
    tokio::time::sleep(Duration::from_secs(5)).await;
    admin(format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"
    ))
    .await;

    let got = receiver.wait_for(20, Duration::from_secs(20)).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every event delivered after the outage");
    for queue in [
        app.topology().ingest_dead_queue(),
        app.topology().deliveries_dead_queue(),
    ] {
        assert!(drain(&app, &queue).await.is_empty(), "{queue} is empty");
    }
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains("qr3_dependency_waits_total{dependency=\"database\"} 0"),
        "{metrics}"
    );
    app.stop().await;
}

/// Class 6: the same failed (event, attempt) logged twice counts once towards
/// disabling.
#[tokio::test]
async fn the_same_failed_attempt_logged_twice_counts_once() {
    use qr3_domain::Trigger;
    use qr3_store::{AttemptRecord, AttemptStatus};
    let app = spawn_app_with(|_| {}).await;
    let hook = app.webhook("http://127.0.0.1:9/none", &["*"]).await;
    let event = qr3_domain::EventId::generate();
    let row = |attempt: u16| AttemptRecord {
        id: qr3_domain::DeliveryId::generate(),
        webhook_id: hook.id.clone(),
        workspace_id: app.workspace.clone(),
        event_id: event.clone(),
        event_type: qr3_domain::EventType::QrScanned,
        status: AttemptStatus::Failed,
        status_code: Some(500),
        response_time_ms: 1,
        attempt,
        trigger: Trigger::Event,
        error: None,
        created_at: qr3_domain::Timestamp::now(),
        detail: None,
    };
    for _ in 0..3 {
        app.store.record_attempts(&[row(1)], 2).await.unwrap();
    }
    assert_eq!(
        consecutive_failures(&app, hook.id.as_str()).await,
        (1, true),
        "attempt 1 three times is one failure"
    );
    let recorded = app
        .store
        .record_attempts(&[row(2), row(2)], 2)
        .await
        .unwrap();
    assert_eq!(recorded.disabled, std::slice::from_ref(&hook.id));
    assert_eq!(
        consecutive_failures(&app, hook.id.as_str()).await,
        (2, false)
    );
    app.stop().await;
}

/// Class 7: when a task the sender's consumer relies on dies (here the log writer,
/// through a fault-injection point), the sender role ends with an error promptly, and
/// with it the process, instead of holding its prefetch window forever.
#[tokio::test]
async fn a_dead_log_writer_ends_the_process() {
    let mut app = spawn_app_with(|_| {}).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&receiver.url(), &["*"]).await;
    let point = format!("{}/sender-log-writer", app.settings.amqp.prefix);
    fail::cfg(&point, "panic").unwrap();
    app.publish("qr.scanned", None, json!({"n": 1})).await;
    let running = app.running.take().expect("running");
    let noticed = tokio::time::timeout(Duration::from_secs(10), running.failed()).await;
    fail::remove(&point);
    noticed.expect("the process noticed its sender ended");
    let error = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("the other roles drained")
        .expect_err("the process ends with an error");
    let error = format!("{error:#}");
    assert!(
        error.contains("sender") && error.contains("stopped"),
        "{error}"
    );
    assert_eq!(receiver.received().len(), 1, "the attempt was made");
    crate::helpers::delete_broker_objects(&app.settings).await;
}
