//! SIGTERM to a sender in the middle of a burst loses nothing, and its logs never show a
//! secret; its /metrics move while it works.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use qr3_config::Settings;
use qr3_store::AttemptStatus;
use qr3_testkit::{Behaviour, Receiver, TestDb};
use qr3_webhooks::{app, Roles};
use serde_json::json;

use crate::helpers::SECRET;

fn child_env(settings: &Settings) -> Vec<(String, String)> {
    crate::helpers::child_env(
        settings,
        &[
            ("QR3__DELIVERY__RETRY_DELAYS_MS", "100,200"),
            ("QR3__DELIVERY__CONCURRENCY", "16"),
            ("QR3__SHUTDOWN__GRACE_PERIOD_MS", "10000"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_loses_no_delivery_and_logs_no_secret() {
    let db = TestDb::new().await.unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    // API and ingest in-process; the sender as a real child process.
    let running = app::start(
        settings.clone(),
        Roles {
            api: true,
            ingest: true,
            sender: false,
        },
    )
    .await
    .unwrap();
    let workspace = db.store.create_workspace("w").await.unwrap();
    let receiver = Receiver::start(Behaviour::Delay(20)).await;
    let api = format!("http://{}", running.api_addr.unwrap());
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{api}/v1/webhooks"))
        .bearer_auth(workspace.api_key.token())
        .json(&json!({"url": receiver.url(), "events": ["*"], "secret": SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hook = qr3_domain::WebhookId::parse(created["id"].as_str().unwrap()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"))
        .arg("sender")
        .envs(child_env(&settings))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
        }
    });

    const EVENTS: usize = 300;
    let published: HashSet<String> = (0..EVENTS).map(|i| format!("evt_burst_{i}")).collect();
    let messages: Vec<qr3_broker::Outgoing> = published
        .iter()
        .map(|id| qr3_broker::Outgoing {
            exchange: settings.amqp.events_exchange.clone(),
            routing_key: "qr.scanned".into(),
            properties: lapin::BasicProperties::default().with_delivery_mode(2),
            body: json!({"id": id, "type": "qr.scanned", "workspace_id": workspace.id, "data": {"n": 1}}).to_string().into_bytes(),
        })
        .collect();
    qr3_broker::SharedPublisher::new(settings.amqp.url.expose().clone(), "test")
        .publish_all(&messages)
        .await
        .unwrap();
    // Scrape the child's /metrics while it works: find its port in its JSON logs.
    let ops = wait_for_ops_addr(&logs).await;
    receiver.wait_for(40, Duration::from_secs(20)).await;
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("qr3_delivery_attempts_total{attempt=\"1\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("http://{ops}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    // Poll rather than block: the receiver runs on this runtime and must keep answering.
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        exit.success(),
        "the sender exits cleanly on SIGTERM: {exit:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the grace period"
    );
    reader.join().unwrap();

    // Everything the receiver got was logged, and whatever was not delivered is still
    // in the broker.
    let logged: HashSet<String> = db
        .query(&format!(
            "SELECT DISTINCT event_id FROM delivery_log_all WHERE webhook_id = '{hook}'"
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let received: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("x-qr3-event-id").unwrap().to_owned())
        .collect();
    assert!(
        received.is_subset(&logged),
        "every delivery made before the stop was logged"
    );
    let connection = qr3_broker::connect(settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    assert!(
        logged.len() < EVENTS,
        "SIGTERM came mid-burst ({} of {EVENTS} done)",
        logged.len()
    );
    // Jobs travel in bundles: count the jobs of every queued message, without taking
    // them (closing the channel hands them back, marked redelivered).
    let channel = connection.create_channel().await.unwrap();
    let queue = qr3_broker::Topology::from_settings(&settings).deliveries_queue();
    let mut queued = HashSet::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        for job in qr3_broker::read_jobs(&delivery.properties, &delivery.data).unwrap() {
            queued.insert(job.event_id.to_string());
        }
    }
    channel.close(200, "peeked".into()).await.unwrap();
    let covered: HashSet<String> = logged.union(&queued).cloned().collect();
    assert_eq!(
        covered.len(),
        EVENTS,
        "{} logged, {} queued: some events are neither",
        logged.len(),
        queued.len()
    );

    // A new sender finishes the rest: every event ends up delivered successfully.
    let sender = app::start(settings.clone(), Roles::SENDER).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = db
            .query(&format!(
                "SELECT count(DISTINCT event_id) FROM delivery_log_all WHERE webhook_id = '{hook}' AND status = 'success'"
            ))
            .await
            .unwrap()[0]
            .get(0);
        if done as usize == EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {EVENTS} delivered after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("x-qr3-event-id").unwrap().to_owned())
        .collect();
    assert_eq!(got, published);

    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("sender consuming"),
        "the child logged: {logs}"
    );
    assert!(
        !logs.contains(SECRET),
        "a webhook secret appeared in the logs"
    );
    assert!(
        !logs.contains(workspace.api_key.token()),
        "an API key appeared in the logs"
    );
    assert!(
        !logs.contains("guest:guest"),
        "broker credentials appeared in the logs"
    );
    let _ = AttemptStatus::Success;

    sender.stop().await.unwrap();
    running.stop().await.unwrap();
    cleanup(&settings).await;
}

pub async fn wait_for_ops_addr(logs: &Arc<Mutex<String>>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = logs.lock().unwrap().clone();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("serving /healthz"))
            {
                return v["fields"]["addr"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sender never logged its ops address: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cleanup(settings: &Settings) {
    let connection = qr3_broker::connect(settings.amqp.url.expose(), "test-cleanup")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in qr3_broker::Topology::from_settings(settings).queues() {
        let _ = channel.queue_delete(queue.into(), Default::default()).await;
    }
    for exchange in qr3_broker::Topology::from_settings(settings).exchanges() {
        let _ = channel
            .exchange_delete(exchange.into(), Default::default())
            .await;
    }
}

/// SIGTERM to a process running every role, idle or having just delivered, logs no
/// ERROR line: the sessions close their channels before their connections (lapin logs
/// "invalid channel state: Closing" when a dropped channel's background close races the
/// connection's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_logs_no_error() {
    let db = TestDb::new().await.unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    let workspace = db.store.create_workspace("w").await.unwrap();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    for (round, deliver) in [(0, false), (1, true)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"))
            .arg("all")
            .envs(crate::helpers::child_env(
                &settings,
                &[
                    ("QR3__API__LISTEN", "127.0.0.1:0"),
                    ("QR3__DELIVERY__RETRY_DELAYS_MS", "100,200"),
                ],
            ))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !["ingest consuming", "sender consuming"]
            .iter()
            .all(|m| logs.lock().unwrap().contains(m))
        {
            assert!(Instant::now() < deadline, "{}", logs.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if deliver {
            let url = qr3_domain::WebhookUrl::parse(
                &receiver.url(),
                qr3_domain::TargetPolicy {
                    require_https: false,
                    allow_private: true,
                },
            )
            .unwrap();
            db.store
                .insert_webhook(
                    &workspace.id,
                    qr3_store::NewWebhook {
                        url,
                        events: qr3_domain::Subscriptions::parse(&["*"]).unwrap(),
                        secret: qr3_domain::WebhookSecret::parse(SECRET).unwrap(),
                        max_per_second: None,
                    },
                )
                .await
                .unwrap();
            let message = qr3_broker::Outgoing {
                exchange: settings.amqp.events_exchange.clone(),
                routing_key: "qr.scanned".into(),
                properties: lapin::BasicProperties::default().with_delivery_mode(2),
                body: json!({"id": "evt_shutdown", "type": "qr.scanned", "workspace_id": workspace.id, "data": {}})
                    .to_string()
                    .into_bytes(),
            };
            qr3_broker::SharedPublisher::new(settings.amqp.url.expose().clone(), "test")
                .publish_all(&[message])
                .await
                .unwrap();
            assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).await.len(), 1);
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(exit.success(), "round {round}: {exit:?}");
        reader.join().unwrap();
        let logs = logs.lock().unwrap().clone();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "round {round}: {errors:#?}");
        assert!(logs.contains("shut"), "round {round}: {logs}");
    }
    cleanup(&settings).await;
}
