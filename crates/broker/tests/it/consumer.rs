//! `Consumer`: deliveries settled in order, dead letters with their verdict, sessions
//! that start over after a broken publishing channel, and a fatal end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use prometheus::{IntCounter, IntGauge};
use qr3_broker::dead_letters::{ERROR, REASON, ROUTING_KEY};
use qr3_broker::{Consumer, DeadQueue, Fatal, Topology, Verdict};
use qr3_config::Settings;
use tokio_util::sync::CancellationToken;

/// Removes a test's queues and exchanges when the test ends, passed or failed.
struct Teardown(Settings);

impl Drop for Teardown {
    fn drop(&mut self) {
        qr3_testkit::deployment::remove_topology_now(&self.0);
    }
}

/// Settings with a namespace of this test's own, its topology declared, and what
/// removes it again.
async fn namespace() -> (Settings, Topology, lapin::Channel, Teardown) {
    let mut settings = Settings::defaults();
    settings.amqp.url = qr3_config::Redacted::new(qr3_testkit::amqp_url());
    let prefix = qr3_testkit::unique_name("b");
    settings.amqp.events_exchange = format!("{prefix}.events");
    settings.amqp.prefix = prefix;
    let topology = Topology::from_settings(&settings);
    let connection = qr3_broker::connect(&qr3_testkit::amqp_url(), "test")
        .await
        .unwrap();
    topology.declare(&connection).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // The connection lives as long as the channel is used (leaked with the test).
    std::mem::forget(connection);
    let teardown = Teardown(settings.clone());
    (settings, topology, channel, teardown)
}

async fn put(channel: &lapin::Channel, queue: &str, body: &str, headers: FieldTable) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

fn metrics() -> (IntGauge, IntCounter) {
    (
        IntGauge::new("connected", "connected").unwrap(),
        IntCounter::new("reconnects", "reconnects").unwrap(),
    )
}

async fn depth(channel: &lapin::Channel, queue: &str) -> u32 {
    qr3_broker::dead_letters::depth(channel, queue)
        .await
        .unwrap()
}

#[tokio::test]
async fn deliveries_are_settled_in_order_and_a_dead_letter_keeps_its_headers() {
    let (settings, topology, channel, _teardown) = namespace().await;
    let queue = topology.ingest_queue();
    let mut kept = FieldTable::default();
    kept.insert(
        "x-test".into(),
        AMQPValue::LongString(LongString::from("kept")),
    );
    for body in ["one", "bad", "three"] {
        put(&channel, &queue, body, kept.clone()).await;
    }
    let (connected, reconnects) = metrics();
    let shutdown = CancellationToken::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (token, seen_by_role, gauge) = (shutdown.clone(), seen.clone(), connected.clone());
    let run = Consumer::new(&settings, "ingest", DeadQueue::Ingest, 10)
        .link_metrics(connected.clone(), reconnects.clone())
        .run(&shutdown, move |session, mut deliveries| {
            let (token, seen, gauge) = (token.clone(), seen_by_role.clone(), gauge.clone());
            async move {
                assert_eq!(gauge.get(), 1, "connected while a session runs");
                let mut tags = Vec::new();
                while let Some((delivery, settlement)) = deliveries.next().await {
                    assert_eq!(settlement.tag, delivery.delivery_tag);
                    tags.push(settlement.tag);
                    let body = String::from_utf8(delivery.data.clone()).unwrap();
                    if body == "bad" {
                        let verdict = Verdict::new("invalid_json", "not JSON").routing_key("qr.x");
                        session.dead_letter(delivery, settlement, &verdict).await;
                    } else {
                        settlement.ack().await;
                    }
                    seen.lock().unwrap().push(body);
                    if tags.len() == 3 {
                        token.cancel();
                    }
                }
                assert!(tags.windows(2).all(|w| w[0] < w[1]), "{tags:?}");
                Ok(())
            }
        });
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends at shutdown")
        .expect("a clean end");
    assert_eq!(*seen.lock().unwrap(), ["one", "bad", "three"]);
    assert_eq!((connected.get(), reconnects.get()), (0, 0));
    assert_eq!(depth(&channel, &queue).await, 0, "every delivery settled");
    let dead = channel
        .basic_get(
            topology.ingest_dead_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("one dead letter");
    assert_eq!(dead.delivery.data, b"bad");
    assert_eq!(dead.delivery.properties.delivery_mode(), &Some(2));
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let header = |name: &str| text(headers.inner().get(name));
    assert_eq!(header("x-test").as_deref(), Some("kept"));
    assert_eq!(header(REASON).as_deref(), Some("invalid_json"));
    assert_eq!(header(ERROR).as_deref(), Some("not JSON"));
    assert_eq!(header(ROUTING_KEY).as_deref(), Some("qr.x"));
}

#[tokio::test]
async fn a_broken_session_starts_over_with_its_work_redelivered_and_a_fatal_one_ends_the_run() {
    let (settings, topology, channel, _teardown) = namespace().await;
    let queue = topology.deliveries_queue();
    put(&channel, &queue, "job", FieldTable::default()).await;
    let (connected, reconnects) = metrics();
    let shutdown = CancellationToken::new();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    let run = Consumer::new(&settings, "sender", DeadQueue::Deliveries, 10)
        .link_metrics(connected.clone(), reconnects.clone())
        .run(&shutdown, move |session, mut deliveries| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let (delivery, settlement) = deliveries.next().await.expect("the job");
                if n == 0 {
                    assert!(!delivery.redelivered);
                    // Left unsettled; the publishing channel is found closed.
                    std::mem::forget(settlement);
                    session.hold().broken.cancel();
                    assert!(deliveries.next().await.is_none(), "the deliveries end");
                    return Ok(());
                }
                assert!(delivery.redelivered, "handed out again after the restart");
                settlement.ack().await;
                Err(Fatal("stop".into()).into())
            }
        });
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the fatal session ends the run");
    let error = ended.expect_err("fatal");
    assert!(error.downcast_ref::<Fatal>().is_some(), "{error:#}");
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
    assert_eq!((connected.get(), reconnects.get()), (0, 1));
    assert_eq!(depth(&channel, &queue).await, 0, "the job was settled once");
    assert!(!shutdown.is_cancelled());
}

#[tokio::test]
async fn batches_at_their_concurrency_limit_settle_everything_while_deliveries_keep_coming() {
    // Ingest's shape: whatever is ready in batches, a bounded number of batches at once,
    // each acknowledged as a whole while the next deliveries are being registered.
    const MESSAGES: usize = 2000;
    let (settings, topology, channel, _teardown) = namespace().await;
    let queue = topology.ingest_queue();
    for i in 0..MESSAGES {
        put(&channel, &queue, &i.to_string(), FieldTable::default()).await;
    }
    let shutdown = CancellationToken::new();
    let settled = Arc::new(AtomicUsize::new(0));
    let (token, count) = (shutdown.clone(), settled.clone());
    let run = Consumer::new(&settings, "ingest", DeadQueue::Ingest, 256).run(
        &shutdown,
        move |_session, deliveries| {
            let (token, count) = (token.clone(), count.clone());
            async move {
                deliveries
                    .ready_chunks(256)
                    .for_each_concurrent(4, |batch| {
                        let (token, count) = (token.clone(), count.clone());
                        async move {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            let tracker = batch[0].1.tracker().clone();
                            tracker.ack(batch.iter().map(|(_, s)| s.tag)).await;
                            if count.fetch_add(batch.len(), Ordering::SeqCst) + batch.len()
                                == MESSAGES
                            {
                                token.cancel();
                            }
                        }
                    })
                    .await;
                Ok(())
            }
        },
    );
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "stuck after {} of {MESSAGES}",
                settled.load(Ordering::SeqCst)
            )
        })
        .expect("a clean end");
    assert_eq!(depth(&channel, &queue).await, 0, "every delivery settled");
}
