//! SIGTERM to a sender in the middle of a burst loses nothing, and its logs never show a
//! secret; its /metrics move while it works.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use qr3_store::AttemptStatus;
use qr3_testkit::{Behaviour, Receiver, TestDb};
use qr3_webhooks::{app, Roles};
use serde_json::json;

use crate::helpers::SECRET;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_loses_no_delivery_and_logs_no_secret() {
    let mut deployment = crate::helpers::deployment(TestDb::new().await.unwrap());
    deployment
        .set("QR3__DELIVERY__RETRY_DELAYS_MS", "100,200")
        .set("QR3__DELIVERY__CONCURRENCY", "16")
        .set("QR3__SHUTDOWN__GRACE_PERIOD_MS", "10000");
    let db = deployment.db();
    let settings = deployment.settings.clone();
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

    let mut child = deployment.spawn("sender", "sender").unwrap();

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
    // Scrape the child's /metrics while it works.
    child
        .listening_within(Duration::from_secs(20))
        .await
        .unwrap();
    let ops = child.addr;
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

    child.signal_stop();
    let started = Instant::now();
    // Poll rather than block: the receiver runs on this runtime and must keep answering.
    let exit = loop {
        if let Some(exit) = child.exited() {
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

    let logs = child.log();
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
}

/// SIGTERM to a process running every role, idle or having just delivered, logs no
/// ERROR line: the sessions close their channels before their connections (lapin logs
/// "invalid channel state: Closing" when a dropped channel's background close races the
/// connection's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_logs_no_error() {
    let mut deployment = crate::helpers::deployment(TestDb::new().await.unwrap());
    deployment.set("QR3__DELIVERY__RETRY_DELAYS_MS", "100,200");
    let db = deployment.db();
    let settings = deployment.settings.clone();
    let workspace = db.store.create_workspace("w").await.unwrap();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    for (round, deliver) in [(0, false), (1, true)] {
        let mut child = deployment.spawn("all", &format!("all-{round}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !["ingest consuming", "sender consuming"]
            .iter()
            .all(|m| child.log().contains(m))
        {
            assert!(Instant::now() < deadline, "{}", child.log());
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
        child.signal_stop();
        let exit = loop {
            if let Some(exit) = child.exited() {
                break exit;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(exit.success(), "round {round}: {exit:?}");
        let logs = child.log();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "round {round}: {errors:#?}");
        assert!(logs.contains("shut"), "round {round}: {logs}");
    }
}
