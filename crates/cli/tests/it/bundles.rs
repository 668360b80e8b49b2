//! Ingest packs a batch's jobs into bundles (`ingest.jobs_per_message`): every (event,
//! webhook) pair travels exactly once, no message holds more jobs than configured, and
//! the sender still makes, signs, logs and retries each job on its own. A bundle handed
//! back to the broker after its jobs were delivered, or a parked twin of a delivered
//! job, delivers nothing twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use qr3_broker::read_jobs;
use qr3_testkit::{Behaviour, Receiver};
use qr3_webhooks::{app, Roles};

use crate::helpers::{expected_signature, spawn_roles_with};

const EVENTS: usize = 20;
const PER_MESSAGE: usize = 4;

/// Every message in `queue`, read without taking it: closing the channel hands them
/// back (marked redelivered).
async fn peek_all(
    connection: &lapin::Connection,
    queue: &str,
) -> Vec<(lapin::BasicProperties, Vec<u8>)> {
    let channel = connection.create_channel().await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        messages.push((message.delivery.properties, message.delivery.data));
    }
    channel.close(200, "peeked".into()).await.unwrap();
    messages
}

/// Puts one message on `queue`, confirmed.
async fn publish(
    connection: &lapin::Connection,
    queue: &str,
    properties: lapin::BasicProperties,
    body: Vec<u8>,
) {
    qr3_broker::Publisher::open(connection)
        .await
        .unwrap()
        .publish_all(&[qr3_broker::Outgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            properties,
            body,
        }])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fans_out_in_bundles_and_each_job_is_delivered_on_its_own() {
    let roles = Roles {
        api: true,
        ingest: true,
        sender: false,
    };
    let app = spawn_roles_with(roles, |s| {
        s.ingest.jobs_per_message = PER_MESSAGE;
        s.delivery.disable_after_failures = 1000;
    })
    .await;
    let ok = [
        Receiver::start(Behaviour::Status(200)).await,
        Receiver::start(Behaviour::Status(204)).await,
    ];
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let mut hooks = HashMap::new();
    for receiver in ok.iter().chain([&failing]) {
        let hook = app.webhook(&receiver.url(), &["*"]).await;
        hooks.insert(hook.id.to_string(), receiver.url());
    }
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("evt_bundle_{i}")).collect();
    app.publish_burst("qr.scanned", &ids).await;

    // No sender yet: the jobs wait in the delivery queue, packed.
    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let queue = app.topology().deliveries_queue();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (messages, pairs) = loop {
        let messages = peek_all(&connection, &queue).await;
        let mut pairs: HashMap<(String, String), usize> = HashMap::new();
        for (properties, body) in &messages {
            let jobs = read_jobs(properties, body).unwrap();
            assert!(
                jobs.len() <= PER_MESSAGE,
                "{} jobs in one message",
                jobs.len()
            );
            for job in jobs {
                assert_eq!(job.attempt, 1);
                let payload: serde_json::Value = serde_json::from_slice(&job.body).unwrap();
                assert_eq!(
                    payload["id"],
                    job.event_id.as_str(),
                    "each job has its own payload"
                );
                *pairs
                    .entry((job.event_id.to_string(), job.webhook_id.to_string()))
                    .or_default() += 1;
            }
        }
        if pairs.len() == EVENTS * hooks.len() || Instant::now() > deadline {
            break (messages, pairs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        pairs.len(),
        EVENTS * hooks.len(),
        "every (event, webhook) pair is queued"
    );
    assert!(
        pairs.values().all(|n| *n == 1),
        "and queued once: {pairs:?}"
    );
    assert!(
        messages.len() < pairs.len(),
        "{} messages for {} jobs: jobs travel in bundles",
        messages.len(),
        pairs.len()
    );
    let bundle = messages
        .iter()
        .find(|(p, b)| read_jobs(p, b).unwrap().len() > 1)
        .cloned()
        .expect("at least one bundle");

    // A sender delivers each job once, signed; the failing webhook's jobs are retried
    // on their own (attempts 1, 2 and 3).
    let sender = app::start(app.settings.clone(), Roles::SENDER)
        .await
        .unwrap();
    for receiver in &ok {
        let got = receiver.wait_for(EVENTS, Duration::from_secs(20)).await;
        assert_eq!(got.len(), EVENTS);
        let mut seen: Vec<&str> = got
            .iter()
            .map(|r| {
                assert_eq!(
                    r.header("x-qr3-signature").unwrap(),
                    expected_signature(&r.body)
                );
                assert_eq!(r.header("x-qr3-delivery-attempt"), Some("1"));
                assert_eq!(r.json()["id"].as_str(), r.header("x-qr3-event-id"));
                r.header("x-qr3-event-id").unwrap()
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), EVENTS, "each event once");
    }
    let got = failing.wait_for(EVENTS * 3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), EVENTS * 3);
    let mut attempts: HashMap<(String, String), usize> = HashMap::new();
    for r in &got {
        let key = (
            r.header("x-qr3-event-id").unwrap().to_owned(),
            r.header("x-qr3-delivery-attempt").unwrap().to_owned(),
        );
        *attempts.entry(key).or_default() += 1;
    }
    assert_eq!(
        attempts.len(),
        EVENTS * 3,
        "attempts 1, 2, 3 of every event"
    );
    assert!(attempts.values().all(|n| *n == 1));

    // The same bundle comes back, redelivered (as after a sender died before its ack):
    // the jobs already delivered are not sent again; the failed one is tried again.
    sender.stop().await.unwrap();
    publish(&connection, &queue, bundle.0.clone(), bundle.1.clone()).await;
    // Taken once and handed back, so the next sender sees it redelivered.
    assert_eq!(peek_all(&connection, &queue).await.len(), 1);
    let again = read_jobs(&bundle.0, &bundle.1)
        .unwrap()
        .iter()
        .filter(|j| hooks[j.webhook_id.as_str()] == failing.url())
        .count();
    let sender = app::start(app.settings.clone(), Roles::SENDER)
        .await
        .unwrap();
    let got = failing
        .wait_for(EVENTS * 3 + again, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), EVENTS * 3 + again);
    // A delivered job coming back from a defer queue (the twin a requeued bundle leaves
    // of a job it had parked) is not sent again either.
    let twin = read_jobs(&bundle.0, &bundle.1)
        .unwrap()
        .into_iter()
        .find(|j| hooks[j.webhook_id.as_str()] != failing.url())
        .expect("the bundle has a job for a healthy webhook");
    let properties = qr3_broker::with_deferrals(&twin.properties(), 1);
    publish(&connection, &queue, properties, twin.body.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for receiver in &ok {
        assert_eq!(receiver.received().len(), EVENTS, "nothing delivered twice");
    }
    sender.stop().await.unwrap();
    app.stop().await;
}
