//! A large backlog does not flood the sender: with 5,000 jobs waiting in the delivery
//! queue, a sender with `delivery.concurrency = 32` never has more than 32 deliveries
//! in flight or more than 32 jobs taken from the broker (prefetch respected), so its
//! memory does not grow with the backlog; the backlog drains completely.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use lapin::options::QueueDeclareOptions;
use qr3_broker::{DeliveryJob, Outgoing, Topology, Trigger};
use qr3_domain::{
    EventId, EventType, Subscriptions, TargetPolicy, Timestamp, WebhookSecret, WebhookUrl,
};
use qr3_store::NewWebhook;
use qr3_testkit::{Deployment, TestDb};
use qr3_webhooks::{app, Roles};

const JOBS: usize = 5_000;
const CONCURRENCY: usize = 32;
const WEBHOOKS: usize = 4;
/// How long the receiver takes to answer: slow enough that the sender's slots fill.
const DELAY: Duration = Duration::from_millis(10);

/// A receiver that counts the requests it is answering at once.
#[derive(Default)]
struct Counts {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    total: AtomicUsize,
}

/// Leaves the in-flight count when the request ends, answered or abandoned.
struct InFlight(Arc<Counts>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn slow_ok(State(counts): State<Arc<Counts>>) -> StatusCode {
    let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(counts.clone());
    counts.max_in_flight.fetch_max(now, Ordering::SeqCst);
    counts.total.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(DELAY).await;
    StatusCode::OK
}

async fn start_receiver(counts: Arc<Counts>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(slow_ok).with_state(counts);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

/// Jobs ready in the delivery queue (not counting those a consumer holds).
async fn ready(channel: &lapin::Channel, queue: &str) -> usize {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_is_consumed_within_the_prefetch_window() {
    // Removes the database, queues and exchanges when the test ends.
    let mut deployment = Deployment::around(TestDb::new().await.unwrap());
    deployment.settings.delivery.concurrency = CONCURRENCY;
    deployment.settings.delivery.max_in_flight_per_webhook = CONCURRENCY;
    deployment.settings.delivery.timeout_ms = 5_000;
    let (db, settings) = (deployment.db(), deployment.settings.clone());
    app::migrate(&settings).await.unwrap();

    let counts = Arc::new(Counts::default());
    let url = start_receiver(counts.clone()).await;
    let workspace = db.store.create_workspace("backlog").await.unwrap();
    let mut hooks = Vec::new();
    for _ in 0..WEBHOOKS {
        let hook = db
            .store
            .insert_webhook(
                &workspace.id,
                NewWebhook {
                    url: WebhookUrl::parse(
                        &url,
                        TargetPolicy {
                            require_https: false,
                            allow_private: true,
                        },
                    )
                    .unwrap(),
                    events: Subscriptions::parse(&["*"]).unwrap(),
                    secret: WebhookSecret::parse("backlog-secret-0123456789").unwrap(),
                    max_per_second: None,
                },
            )
            .await
            .unwrap();
        hooks.push(hook.id);
    }

    // The backlog, published while no sender runs.
    let topology = Topology::from_settings(&settings);
    let queue = topology.deliveries_queue();
    let now = Timestamp::now();
    let messages: Vec<Outgoing> = (0..JOBS)
        .map(|i| {
            let job = DeliveryJob {
                webhook_id: hooks[i % WEBHOOKS].clone(),
                workspace_id: workspace.id.clone(),
                event_id: EventId::parse(&format!("evt_backlog_{i}")).unwrap(),
                event_type: EventType::QrScanned,
                event_created: now,
                attempt: 1,
                trigger: Trigger::Event,
                body: format!(r#"{{"n":{i}}}"#).into_bytes(),
            };
            Outgoing {
                exchange: String::new(),
                routing_key: queue.clone(),
                properties: job.properties(),
                body: job.body,
            }
        })
        .collect();
    let publisher = qr3_broker::SharedPublisher::new(settings.amqp.url.expose().clone(), "test");
    for chunk in messages.chunks(1000) {
        publisher.publish_all(chunk).await.unwrap();
    }
    let connection = qr3_broker::connect(settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(ready(&channel, &queue).await, JOBS);

    let sender = app::start(settings.clone(), Roles::SENDER).await.unwrap();
    let started = Instant::now();
    let (mut max_gauge, mut max_taken, mut samples) = (0i64, 0usize, 0usize);
    loop {
        // `ready` is read before `total`, so `taken` can only over-count what the
        // sender holds; it still never exceeds the prefetch.
        let waiting = ready(&channel, &queue).await;
        let answered = counts.total.load(Ordering::SeqCst);
        let taken = JOBS.saturating_sub(waiting + answered);
        max_taken = max_taken.max(taken);
        max_gauge = max_gauge.max(sender.metrics.deliveries_in_flight.get());
        samples += 1;
        if answered >= JOBS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the backlog did not drain: {answered} of {JOBS} delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = started.elapsed();

    let max_in_flight = counts.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max_in_flight <= CONCURRENCY,
        "at most {CONCURRENCY} requests at once, saw {max_in_flight}"
    );
    assert!(
        max_in_flight >= CONCURRENCY / 2,
        "the slots did fill ({max_in_flight}), so the bound was tested"
    );
    assert!(
        max_gauge <= CONCURRENCY as i64,
        "qr3_deliveries_in_flight peaked at {max_gauge}"
    );
    assert!(
        max_taken <= CONCURRENCY,
        "the sender held at most the prefetch window, saw {max_taken} taken"
    );
    assert!(samples > 10, "the broker was sampled while draining");

    // Every job ends up logged exactly once and the queue is empty.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logged: i64 = db
            .query("SELECT count(*) FROM delivery_log_all WHERE status = 'success'")
            .await
            .unwrap()[0]
            .get(0);
        if logged as usize == JOBS {
            break;
        }
        assert!(Instant::now() < deadline, "only {logged} of {JOBS} logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts.total.load(Ordering::SeqCst), JOBS, "no job twice");
    assert_eq!(ready(&channel, &queue).await, 0);
    println!(
        "backlog of {JOBS}: drained in {} ms at concurrency {CONCURRENCY}; peak {max_in_flight} \
         requests in flight, gauge peak {max_gauge}, at most {max_taken} jobs held",
        drained.as_millis()
    );

    sender.stop().await.unwrap();
}
