//! `max_per_second` holds across sender processes: separate senders (each with its own
//! pool, broker connection and admission state) take their send slots from one
//! sequence in Postgres, so together they never exceed the webhook's rate, while
//! senders come and go.

use std::time::Duration;

use qr3_testkit::{Behaviour, Receiver};
use qr3_webhooks::{app, Roles};

use crate::helpers::spawn_roles_with;

const RATE: usize = 20;
const EVENTS: usize = 80;

/// The most receipts within any one second.
fn busiest_second(mut times: Vec<std::time::Instant>) -> usize {
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

// Multi-threaded, as the binary runs: a sender started mid-test builds its HTTP client
// (TLS roots) synchronously, and on a single thread that stall also holds the other
// senders' timers and the receiver, whose late wake-ups then bunch receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_senders_together_deliver_at_most_max_per_second() {
    let app = spawn_roles_with(
        Roles {
            api: true,
            ingest: true,
            sender: false,
        },
        |s| s.delivery.defer_ms = 200,
    )
    .await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut webhook = app.webhook(&receiver.url(), &["*"]).await;
    webhook = app
        .store
        .update_webhook(
            &app.workspace,
            &webhook.id,
            qr3_store::WebhookPatch {
                max_per_second: Some(Some(RATE as u32)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .expect("the webhook exists");
    assert_eq!(webhook.max_per_second, Some(RATE as u32));
    let mut senders = Vec::new();
    for _ in 0..3 {
        senders.push(
            app::start(app.settings.clone(), Roles::SENDER)
                .await
                .unwrap(),
        );
    }
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("evt_r{i}")).collect();
    app.publish_burst("qr.scanned", &ids).await;

    // A second in, one sender stops and another starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    senders.remove(0).stop().await.unwrap();
    senders.push(
        app::start(app.settings.clone(), Roles::SENDER)
            .await
            .unwrap(),
    );

    let got = receiver.wait_for(EVENTS, Duration::from_secs(20)).await;
    assert_eq!(got.len(), EVENTS, "every event arrives");
    let busiest = busiest_second(got.iter().map(|r| r.at).collect());
    assert!(
        busiest <= RATE + RATE / 10,
        "{busiest} receipts within one second, max_per_second {RATE}"
    );
    // The senders shared the work (it is not one sender doing it all).
    let sent: Vec<u64> = senders
        .iter()
        .map(|s| {
            s.metrics
                .delivery_attempts_total
                .with_label_values(&["success", "1"])
                .get()
        })
        .collect();
    assert!(
        sent.iter().filter(|n| **n > 0).count() >= 2,
        "attempts per remaining sender: {sent:?}"
    );
    for sender in senders {
        sender.stop().await.unwrap();
    }
    app.stop().await;
}

#[test]
fn the_busiest_second_counts_a_sliding_window() {
    let t0 = std::time::Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    assert_eq!(busiest_second(vec![ms(0), ms(999), ms(1000), ms(1500)]), 3);
    assert_eq!(busiest_second(vec![]), 0);
}
