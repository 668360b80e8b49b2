//! SPEC A's retry table with millisecond delays, failures, and auto-disable.

use std::time::Duration;

use qr3_store::AttemptStatus;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn failed_attempts_are_retried_after_the_configured_delays() {
    let app = spawn_app().await; // delays 100 ms, 200 ms
    let receiver = Receiver::start(Behaviour::Sequence(vec![500, 503, 200])).await;
    let hook = app.webhook(&receiver.url(), &["*"]).await;
    app.publish("qr.scanned", None, json!({})).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("x-qr3-delivery-attempt").unwrap().to_owned())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(got[1].at - got[0].at >= Duration::from_millis(100));
    assert!(got[2].at - got[1].at >= Duration::from_millis(200));
    assert_eq!(got[0].body, got[2].body, "the same bytes every attempt");
    let log = app.attempts(&hook, 3).await;
    let statuses: Vec<_> = log
        .iter()
        .map(|a| (a.attempt, a.status, a.status_code))
        .collect();
    assert_eq!(
        statuses,
        [
            (1, AttemptStatus::Failed, Some(500)),
            (2, AttemptStatus::Failed, Some(503)),
            (3, AttemptStatus::Success, Some(200))
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn there_is_never_a_fourth_attempt_and_redirects_and_timeouts_fail() {
    let app = spawn_app_with(|s| s.delivery.timeout_ms = 300).await;
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let redirect = Receiver::start(Behaviour::Redirect).await;
    let hanging = Receiver::start(Behaviour::Hang).await;
    let hooks = [
        app.webhook(&failing.url(), &["*"]).await,
        app.webhook(&redirect.url(), &["*"]).await,
        app.webhook(&hanging.url(), &["*"]).await,
    ];
    app.publish("qr.deleted", None, json!({})).await;
    for r in [&failing, &redirect, &hanging] {
        assert_eq!(r.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (r, hook) in [&failing, &redirect, &hanging].into_iter().zip(&hooks) {
        assert_eq!(r.received().len(), 3, "no fourth attempt");
        let log = app.attempts(hook, 3).await;
        assert_eq!(log.len(), 3);
        assert!(log.iter().all(|a| a.status == AttemptStatus::Failed));
    }
    let redirect_log = app.attempts(&hooks[1], 3).await;
    assert!(
        redirect_log.iter().all(|a| a.status_code == Some(302)),
        "3xx is a failure and is not followed"
    );
    let hang_log = app.attempts(&hooks[2], 3).await;
    assert!(hang_log
        .iter()
        .all(|a| a.status_code.is_none() && a.error.as_deref().unwrap().contains("timed out")));
    app.stop().await;
}

#[tokio::test]
async fn consecutive_failures_disable_the_webhook_and_stop_queued_retries() {
    let app = spawn_app_with(|s| {
        s.delivery.disable_after_failures = 4;
        s.delivery.retry_delays_ms = vec![300, 300];
    })
    .await;
    // The platform listens for operator notifications.
    let connection = qr3_broker::connect(app.settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            app.topology().operator_exchange().into(),
            "webhook.disabled".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let hook = app.webhook(&receiver.url(), &["*"]).await;
    for _ in 0..3 {
        app.publish("qr.updated", None, json!({})).await;
    }
    // 3 first attempts fail, then the first retry is the 4th failure: disabled.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let w = app
            .store
            .get_webhook(&app.workspace, &hook.id)
            .await
            .unwrap()
            .unwrap();
        if !w.is_active {
            assert!(w.disabled_at.is_some());
            assert!(w.disabled_reason.unwrap().contains("4 consecutive"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook was not disabled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notification = loop {
        if let Some(message) = channel
            .basic_get(
                queue.name().clone(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            break serde_json::from_slice::<serde_json::Value>(&message.delivery.data).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no webhook.disabled notification"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(notification["type"], "webhook.disabled");
    assert_eq!(notification["webhook_id"], hook.id.as_str());
    assert_eq!(notification["workspace_id"], app.workspace.as_str());
    assert_eq!(notification["last_status_code"], 500);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = receiver.received().len();
    assert!(n <= 6, "queued retries stop after disabling ({n} requests)");
    let log = app.attempts(&hook, 4).await;
    assert_eq!(log.len(), n, "every attempt is logged");
    app.stop().await;
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let app = spawn_app_with(|s| s.delivery.disable_after_failures = 2).await;
    let receiver = Receiver::start(Behaviour::Sequence(vec![500, 200, 500, 200])).await;
    let hook = app.webhook(&receiver.url(), &["*"]).await;
    app.publish("qr.created", None, json!({})).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    app.publish("qr.created", None, json!({})).await;
    receiver.wait_for(4, Duration::from_secs(10)).await;
    app.attempts(&hook, 4).await;
    let w = app
        .store
        .get_webhook(&app.workspace, &hook.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        w.is_active,
        "failures separated by a success never reach the threshold"
    );
    assert_eq!(w.consecutive_failures, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_uses_the_url_as_edited_while_it_was_queued() {
    let app = spawn_app_with(|s| s.delivery.retry_delays_ms = vec![500, 500]).await;
    let old = Receiver::start(Behaviour::Status(500)).await;
    let new = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&old.url(), &["*"]).await;
    app.publish("qr.flagged", None, json!({})).await;
    old.wait_for(1, Duration::from_secs(10)).await;
    let url = qr3_domain::WebhookUrl::parse(
        &new.url(),
        qr3_domain::TargetPolicy {
            require_https: false,
            allow_private: true,
        },
    )
    .unwrap();
    app.store
        .update_webhook(
            &app.workspace,
            &hook.id,
            qr3_store::WebhookPatch {
                url: Some(url),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = new.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-qr3-delivery-attempt"), Some("2"));
    assert_eq!(old.received().len(), 1);
    app.stop().await;
}
