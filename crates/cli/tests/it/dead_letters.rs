//! Dead letters are operable: listing shows why each message is there and loses or
//! wears out none of them, a redrive moves exactly what it is asked to back to the
//! queue the message came from (where the pipeline picks it up again), a dry run moves
//! nothing, and the roles export the depth of the `.dead` queues.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use qr3_broker::dead_letters::{self, DeadLetter, DeadQueue, RedriveMode, Scope};
use qr3_broker::{DeliveryJob, Outgoing, Publisher, Topology, Trigger};
use qr3_config::Settings;
use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};
use qr3_testkit::{Behaviour, Receiver};
use qr3_webhooks::{app, Roles};

use crate::helpers::{child_env, spawn_roles_with};

/// A broker namespace of its own with the topology declared; deleted when dropped.
struct Broker {
    settings: Settings,
    topology: Topology,
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
}

impl Broker {
    async fn new() -> Self {
        Self::with(qr3_testkit::test_settings(
            "postgres://postgres@127.0.0.1:5432/unused",
        ))
        .await
    }

    async fn with(settings: Settings) -> Self {
        let topology = Topology::from_settings(&settings);
        let connection = qr3_broker::connect(settings.amqp.url.expose(), "test")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&connection).await.unwrap();
        let publisher = Publisher::open(&connection).await.unwrap();
        Self {
            settings,
            topology,
            connection,
            channel,
            publisher,
        }
    }

    fn scope(&self, queues: &[DeadQueue], limit: usize) -> Scope {
        Scope {
            queues: queues.to_vec(),
            limit,
        }
    }

    async fn depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Depth of `<prefix>.ingest.dead`, `<prefix>.deliveries.dead`, `<prefix>.ingest`
    /// and `<prefix>.deliveries`.
    async fn depths(&self) -> [u32; 4] {
        let t = &self.topology;
        [
            self.depth(&t.ingest_dead_queue()).await,
            self.depth(&t.deliveries_dead_queue()).await,
            self.depth(&t.ingest_queue()).await,
            self.depth(&t.deliveries_queue()).await,
        ]
    }

    async fn publish(&self, queue: &str, properties: BasicProperties, body: &[u8]) {
        self.publisher
            .publish_all(&[Outgoing {
                exchange: String::new(),
                routing_key: queue.to_owned(),
                properties,
                body: body.to_vec(),
            }])
            .await
            .unwrap();
    }

    /// An event ingest refused, as ingest parks it.
    async fn park_unreadable_event(&self) {
        let headers = headers(&[
            ("x-qr3-reason", "invalid_json"),
            ("x-qr3-error", "expected value at line 1 column 1"),
            ("x-qr3-routing-key", "qr.created"),
        ]);
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        self.publish(&self.topology.ingest_dead_queue(), properties, b"not json")
            .await;
    }

    /// A job the sender gave up on, as the sender parks it: the job's headers, the
    /// verdict and the queue it goes back to.
    async fn park_failed_job(&self, job: &DeliveryJob, origin: &str) {
        let mut headers = job.properties().headers().clone().unwrap();
        for (name, value) in [
            ("x-qr3-reason", "job_failed"),
            ("x-qr3-error", "the job failed 5 times"),
            ("x-qr3-queue", origin),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let properties = job.properties().with_headers(headers);
        self.publish(
            &self.topology.deliveries_dead_queue(),
            properties,
            &job.body,
        )
        .await;
    }

    /// A job the broker itself dead-letters: taken from `<prefix>.deliveries` and
    /// rejected without requeue, so it arrives with `x-death`.
    async fn broker_dead_letters(&self, job: &DeliveryJob) {
        let deliveries = self.topology.deliveries_queue();
        self.publish(&deliveries, job.properties(), &job.body).await;
        let dead = self.depth(&self.topology.deliveries_dead_queue()).await;
        let taken = self
            .channel
            .basic_get(
                deliveries.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
            .expect("the job is on the delivery queue");
        taken
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.depth(&self.topology.deliveries_dead_queue()).await == dead {
            assert!(Instant::now() < deadline, "the broker dead-letters the job");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The three kinds of dead letter: one on `ingest.dead`, two on `deliveries.dead`.
    async fn park_one_of_each(&self) -> (DeliveryJob, DeliveryJob) {
        let (rejected, failed) = (job(WebhookId::generate()), job(WebhookId::generate()));
        self.park_unreadable_event().await;
        self.broker_dead_letters(&rejected).await;
        self.park_failed_job(&failed, &self.topology.deliveries_queue())
            .await;
        (rejected, failed)
    }

    async fn list(&self, queues: &[DeadQueue], limit: usize) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        let n = dead_letters::list(
            &self.connection,
            &self.topology,
            &self.scope(queues, limit),
            |letter| letters.push(letter),
        )
        .await
        .unwrap();
        assert_eq!(n, letters.len());
        letters
    }

    /// Takes every message off `queue` for good.
    async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let mut taken = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            taken.push(message.delivery);
        }
        taken
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        qr3_testkit::deployment::remove_topology_now(&self.settings);
    }
}

fn headers(entries: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(
            (*name).into(),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    table
}

fn job(webhook_id: WebhookId) -> DeliveryJob {
    job_for(webhook_id, WorkspaceId::generate())
}

fn job_for(webhook_id: WebhookId, workspace_id: WorkspaceId) -> DeliveryJob {
    let event_id = EventId::generate();
    let created = Timestamp::now();
    DeliveryJob {
        body: format!(
            r#"{{"id":"{event_id}","type":"qr.scanned","created":"{created}","data":{{}}}}"#
        )
        .into_bytes(),
        webhook_id,
        workspace_id,
        event_id,
        event_type: EventType::QrScanned,
        event_created: created,
        attempt: 1,
        trigger: Trigger::Event,
    }
}

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

#[tokio::test]
async fn listing_shows_every_reason_and_loses_or_redelivers_nothing() {
    let broker = Broker::new().await;
    let (rejected, failed) = broker.park_one_of_each().await;
    let t = &broker.topology;
    assert_eq!(broker.depths().await, [1, 2, 0, 0]);

    let first = broker.list(&DeadQueue::ALL, 100).await;
    let second = broker.list(&DeadQueue::ALL, 100).await;
    assert_eq!(first.len(), 3, "{first:#?}");
    assert_eq!(
        first, second,
        "a whole listing puts the queues back in order"
    );
    assert_eq!(broker.depths().await, [1, 2, 0, 0], "nothing lost or moved");

    let event = &first[0];
    assert_eq!(event.queue, t.ingest_dead_queue());
    assert_eq!(event.reason.as_deref(), Some("invalid_json"));
    assert_eq!(
        event.error.as_deref(),
        Some("expected value at line 1 column 1")
    );
    assert_eq!(event.origin, t.ingest_queue());
    assert_eq!(event.routing_key.as_deref(), Some("qr.created"));
    assert_eq!(
        (event.body_bytes, event.body_excerpt.as_str()),
        (8, "not json")
    );

    let by_broker = &first[1];
    assert_eq!(by_broker.queue, t.deliveries_dead_queue());
    assert_eq!(by_broker.reason.as_deref(), Some("rejected"));
    assert_eq!(by_broker.error, None);
    assert_eq!(by_broker.origin, t.deliveries_queue());
    assert_eq!(by_broker.deaths, Some(1));
    assert_eq!(
        by_broker.event_id.as_deref(),
        Some(rejected.event_id.as_str())
    );
    assert_eq!(
        by_broker.webhook_id.as_deref(),
        Some(rejected.webhook_id.as_str())
    );

    let ours = &first[2];
    assert_eq!(ours.reason.as_deref(), Some("job_failed"));
    assert_eq!(ours.error.as_deref(), Some("the job failed 5 times"));
    assert_eq!(ours.origin, t.deliveries_queue());
    assert_eq!(ours.event_id.as_deref(), Some(failed.event_id.as_str()));
    assert_eq!(ours.body_bytes, failed.body.len());

    // A limit is a limit, and listing part of a queue rotates it.
    let one = broker.list(&[DeadQueue::Deliveries], 1).await;
    assert_eq!(one, [first[1].clone()]);
    let again = broker.list(&[DeadQueue::Deliveries], 2).await;
    assert_eq!(again, [first[2].clone(), first[1].clone()]);
    assert_eq!(broker.depths().await, [1, 2, 0, 0]);

    // Five listings later, no message was ever handed back: none reads as
    // redelivered or has been delivered before, and each is whole.
    let mut taken = broker.drain(&t.ingest_dead_queue()).await;
    taken.extend(broker.drain(&t.deliveries_dead_queue()).await);
    assert_eq!(taken.len(), 3);
    for delivery in &taken {
        assert!(!delivery.redelivered);
        assert!(
            matches!(
                header(delivery, "x-delivery-count"),
                None | Some(AMQPValue::LongLongInt(0))
            ),
            "{:?}",
            delivery.properties.headers()
        );
        assert!(
            header(delivery, "x-qr3-reason").is_some() || header(delivery, "x-death").is_some()
        );
    }
    assert_eq!(taken[0].data, b"not json");
    assert_eq!(taken[2].data, rejected.body, "rotated twice: back first");
    assert_eq!(taken[1].data, failed.body);
}

#[tokio::test]
async fn redrive_moves_exactly_the_limit_back_to_its_origin_and_dry_run_moves_nothing() {
    let broker = Broker::new().await;
    let (rejected, failed) = broker.park_one_of_each().await;
    let t = &broker.topology;
    let metrics = qr3_telemetry::Metrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    for dead in DeadQueue::ALL {
        dead_letters::watch_depth_every(
            &broker.settings,
            dead,
            &metrics.dead_letters,
            &shutdown,
            Duration::from_millis(20),
        );
    }
    let gauges =
        || DeadQueue::ALL.map(|q| metrics.dead_letters.with_label_values(&[q.label()]).get());
    let wait_for_gauges = |expected: [i64; 2]| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while gauges() != expected {
            assert!(Instant::now() < deadline, "gauges {:?}", gauges());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    wait_for_gauges([1, 2]).await;

    let b = &broker;
    let redrive = move |queues: &'static [DeadQueue], limit, mode| {
        let scope = b.scope(queues, limit);
        async move {
            dead_letters::redrive(&b.connection, &b.topology, &scope, mode)
                .await
                .unwrap()
        }
    };
    let dry = redrive(&DeadQueue::ALL, 100, RedriveMode::DryRun).await;
    assert_eq!(dry.redriven, 0);
    assert!(dry.dry_run);
    assert_eq!(dry.would_redrive, Some(3));
    assert_eq!(
        dry.to,
        BTreeMap::from([(t.ingest_queue(), 1), (t.deliveries_queue(), 2)])
    );
    assert_eq!(
        dry.remaining,
        BTreeMap::from([(t.ingest_dead_queue(), 1), (t.deliveries_dead_queue(), 2)])
    );
    assert_eq!(
        broker.depths().await,
        [1, 2, 0, 0],
        "a dry run moves nothing"
    );

    let one = redrive(&[DeadQueue::Deliveries], 1, RedriveMode::Move).await;
    assert_eq!(one.redriven, 1);
    assert!(!one.dry_run && one.would_redrive.is_none());
    assert_eq!(one.to, BTreeMap::from([(t.deliveries_queue(), 1)]));
    assert_eq!(
        one.remaining,
        BTreeMap::from([(t.deliveries_dead_queue(), 1)])
    );
    assert_eq!(broker.depths().await, [1, 1, 0, 1], "exactly one moved");
    wait_for_gauges([1, 1]).await;

    // Back on the delivery queue as the job it was, without the dead-letter history.
    let back = broker.drain(&t.deliveries_queue()).await;
    assert_eq!(back.len(), 1);
    for name in [
        "x-death",
        "x-first-death-reason",
        "x-qr3-reason",
        "x-qr3-error",
        "x-qr3-queue",
    ] {
        assert_eq!(header(&back[0], name), None, "{name}");
    }
    let job = DeliveryJob::from_message(&back[0].properties, back[0].data.clone()).unwrap();
    assert_eq!(job.event_id, rejected.event_id);
    assert_eq!(job.webhook_id, rejected.webhook_id);
    assert_eq!(job.body, rejected.body);

    // One whose origin is no queue of ours stays where it is.
    broker
        .park_failed_job(
            &job_for(WebhookId::generate(), WorkspaceId::generate()),
            "elsewhere",
        )
        .await;
    let rest = redrive(&DeadQueue::ALL, 100, RedriveMode::Move).await;
    assert_eq!(rest.redriven, 2);
    assert_eq!(rest.skipped, 1);
    assert_eq!(
        rest.to,
        BTreeMap::from([(t.ingest_queue(), 1), (t.deliveries_queue(), 1)])
    );
    assert_eq!(broker.depths().await, [0, 1, 1, 1]);
    wait_for_gauges([0, 1]).await;
    let event = broker.drain(&t.ingest_queue()).await;
    assert_eq!(event[0].data, b"not json");
    assert_eq!(header(&event[0], "x-qr3-reason"), None);
    let job = broker.drain(&t.deliveries_queue()).await;
    assert_eq!(
        DeliveryJob::from_message(&job[0].properties, job[0].data.clone())
            .unwrap()
            .event_id,
        failed.event_id
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_binary_lists_and_redrives_with_json_output() {
    let broker = Broker::new().await;
    broker.park_one_of_each().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"))
            .arg("dead-letters")
            .args(args)
            .env_remove("RUST_LOG")
            .envs(child_env(&broker.settings, &[]))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let listed = run(&["list", "--queue", "deliveries"]);
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert_eq!(lines[0]["reason"], "rejected");
    assert_eq!(lines[1]["reason"], "job_failed");
    for line in &lines {
        assert_eq!(line["queue"], broker.topology.deliveries_dead_queue());
        assert_eq!(line["origin"], broker.topology.deliveries_queue());
    }

    let dry: serde_json::Value = serde_json::from_str(&run(&["redrive", "--dry-run"])).unwrap();
    assert_eq!(dry["redriven"], 0);
    assert_eq!(dry["would_redrive"], 3);
    assert_eq!(broker.depths().await, [1, 2, 0, 0]);

    let moved: serde_json::Value =
        serde_json::from_str(&run(&["redrive", "--queue", "deliveries", "--limit", "5"])).unwrap();
    assert_eq!(moved["redriven"], 2);
    assert_eq!(moved["to"][broker.topology.deliveries_queue()], 2);
    assert_eq!(broker.depths().await, [1, 0, 0, 2]);
}

#[tokio::test]
async fn the_roles_export_the_depth_and_a_redriven_job_is_delivered() {
    // The API alone first, to have a database, a webhook and the topology; the
    // workers start once the dead letters are in place, so their first reading sees
    // them.
    let app = spawn_roles_with(Roles::API, |_| {}).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let webhook = app.webhook(&receiver.url(), &["*"]).await;
    let broker = Broker::with(app.settings.clone()).await;
    broker.park_unreadable_event().await;
    let parked = job_for(webhook.id.clone(), app.workspace.clone());
    broker
        .park_failed_job(&parked, &broker.topology.deliveries_queue())
        .await;

    let workers = app::start(
        app.settings.clone(),
        Roles {
            api: false,
            ingest: true,
            sender: true,
        },
    )
    .await
    .unwrap();
    let url = format!("http://{}/metrics", workers.ops_addr.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.contains("qr3_dead_letters{queue=\"ingest\"} 1")
            && text.contains("qr3_dead_letters{queue=\"deliveries\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        receiver.received().is_empty(),
        "a dead letter is not delivered"
    );

    let summary = dead_letters::redrive(
        &broker.connection,
        &broker.topology,
        &broker.scope(&[DeadQueue::Deliveries], 10),
        RedriveMode::Move,
    )
    .await
    .unwrap();
    assert_eq!(summary.redriven, 1);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, parked.body);
    assert_eq!(got[0].header("webhook-id"), Some(parked.event_id.as_str()));
    let attempts = app.attempts(&webhook, 1).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));

    workers.stop().await.unwrap();
    drop(broker);
    app.stop().await;
}

#[test]
fn the_subcommand_documents_itself_and_refuses_a_zero_limit() {
    let bin = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"));
        cmd.env_remove("RUST_LOG");
        cmd
    };
    let help = bin().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("dead-letters"));
    for args in [
        &["dead-letters", "--help"][..],
        &["dead-letters", "list", "--help"],
        &["dead-letters", "redrive", "--help"],
    ] {
        assert!(
            bin().args(args).output().unwrap().status.success(),
            "{args:?}"
        );
    }
    let zero = bin()
        .args(["dead-letters", "redrive", "--limit", "0"])
        .output()
        .unwrap();
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--limit"));
}
