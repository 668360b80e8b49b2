//! The shared rate-limit row: senders taking blocks of send slots never overlap.

use std::time::Duration;

use qr3_domain::{Subscriptions, TargetPolicy, WebhookSecret, WebhookUrl};
use qr3_store::NewWebhook;
use qr3_testkit::TestDb;

#[tokio::test]
async fn blocks_of_slots_follow_each_other_and_stop_beyond_the_wait() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap();
    let hook = db
        .store
        .insert_webhook(
            &ws.id,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/hook", TargetPolicy::default())
                    .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::parse("the-first-secret-000").unwrap(),
                max_per_second: Some(100),
            },
        )
        .await
        .unwrap();
    let ms = Duration::from_millis;
    let store = &db.store;
    // Blocks of 10 slots 100 ms apart (a second each), at most 1.5 s ahead.
    let take = || store.take_rate_block(&hook.id, ms(100), 10, ms(1500));
    let started = std::time::Instant::now();
    let first = take().await.unwrap().expect("the first block starts now");
    assert!(first.wait < ms(5), "{first:?}");
    assert_eq!((first.interval, first.count), (ms(100), 10));
    let second = take().await.unwrap().unwrap();
    let between = started.elapsed();
    assert!(
        second.wait <= ms(1000) && second.wait + between >= ms(1000),
        "the second block follows the first: {second:?}"
    );
    // The third would start about 2 s from now, beyond the wait: nothing is taken.
    assert_eq!(take().await.unwrap(), None);
    // Deleting the webhook deletes its row.
    assert!(store.delete_webhook(&ws.id, &hook.id).await.unwrap());
}

#[tokio::test]
async fn unused_slots_are_not_handed_out_again_later() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap();
    let hook = db
        .store
        .insert_webhook(
            &ws.id,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/hook", TargetPolicy::default())
                    .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::parse("the-first-secret-000").unwrap(),
                max_per_second: Some(100),
            },
        )
        .await
        .unwrap();
    let ms = Duration::from_millis;
    let take = || db.store.take_rate_block(&hook.id, ms(10), 1, ms(1000));
    take().await.unwrap().unwrap();
    tokio::time::sleep(ms(50)).await;
    let later = take().await.unwrap().unwrap();
    assert_eq!(
        later.wait,
        Duration::ZERO,
        "the sequence restarts at the present"
    );
}
