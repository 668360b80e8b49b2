//! Beyond the public doc, end to end: one delivery in detail, manual retry, recovery
//! after re-enabling, and `max_per_second`, against real receivers.

use std::time::Duration;

use qr3_store::AttemptStatus;

use qr3_domain::Trigger;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::{call, expected_signature, spawn_app_with};

#[tokio::test]
async fn a_delivery_shows_the_exact_request_and_the_start_of_the_response() {
    let app = spawn_app_with(|s| s.delivery.response_body_bytes = 10).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["qr.created"]).await;
    app.publish(
        "qr.created",
        Some("evt_detail_1"),
        json!({"name": "Ünïcode"}),
    )
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let attempt = app.attempts(&hook, 1).await.remove(0);

    let (status, detail) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{}/deliveries/{}", hook.id, attempt.id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["status"], "success");
    let sent = &got[0];
    assert_eq!(
        detail["request"]["body"].as_str().unwrap().as_bytes(),
        &sent.body[..],
        "the body shown is the exact bytes received"
    );
    let headers = detail["request"]["headers"].as_object().unwrap();
    for name in [
        "content-type",
        "user-agent",
        "x-qr3-signature",
        "x-qr3-event-id",
        "x-qr3-delivery-id",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert_eq!(
            headers[name].as_str(),
            sent.header(name),
            "header {name} as received"
        );
    }
    assert_eq!(headers["x-qr3-signature"], expected_signature(&sent.body));
    assert_eq!(headers["x-qr3-delivery-id"], attempt.id.as_str());
    // The receiver answers {"received":true}; 10 bytes are kept.
    assert_eq!(detail["response_body"], "{\"received");
    app.stop().await;
}

#[tokio::test]
async fn a_manual_retry_resends_a_failed_event_once_and_never_a_delivered_one() {
    let app = spawn_app_with(|s| s.delivery.disable_after_failures = 100).await;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let hook = app.webhook(&receiver.url(), &["qr.created"]).await;
    app.publish("qr.created", Some("evt_manual_1"), json!({"n": 1}))
        .await;
    let failed = app.attempts(&hook, 3).await;
    assert_eq!(failed.len(), 3, "three automatic attempts");
    assert!(failed.iter().all(|a| a.status == AttemptStatus::Failed));

    receiver.set_behaviour(Behaviour::Status(200));
    let retry = format!("/v1/webhooks/{}/deliveries/{}/retry", hook.id, failed[0].id);
    let (status, body) = call(&app, reqwest::Method::POST, &retry, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_id"], "evt_manual_1");
    assert_eq!(body["delivery"]["status"], "success");
    assert_eq!(body["delivery"]["trigger"], "manual");
    assert_eq!(
        body["delivery"]["attempt"], 4,
        "numbered after the event's last attempt"
    );

    let got = receiver.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 4);
    let (first, manual) = (&got[0], &got[3]);
    assert_eq!(manual.body, first.body, "the same payload, byte for byte");
    assert_eq!(manual.header("webhook-id"), Some("evt_manual_1"));
    assert_eq!(manual.header("x-qr3-delivery-attempt"), Some("4"));
    assert_eq!(
        manual.header("x-qr3-signature").unwrap(),
        expected_signature(&manual.body)
    );

    // Delivered now: a second retry is refused and nothing more is sent.
    let (status, body) = call(&app, reqwest::Method::POST, &retry, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 4);
    let log = app.attempts(&hook, 4).await;
    assert_eq!(log.len(), 4);
    assert_eq!(log[3].trigger, Trigger::Manual);
    let w = app
        .store
        .get_webhook(&app.workspace, &hook.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        w.consecutive_failures, 3,
        "manual attempts do not change the failure count"
    );
    app.stop().await;
}

#[tokio::test]
async fn recovery_after_re_enabling_resends_each_undelivered_event_once() {
    let app = spawn_app_with(|s| {
        // Three first attempts disable the webhook; their retries come too late to
        // count (and find the events recovered by then).
        s.delivery.disable_after_failures = 3;
        s.delivery.retry_delays_ms = vec![10_000, 10_000];
    })
    .await;
    let started = qr3_domain::Timestamp::now();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["qr.created"]).await;
    app.publish("qr.created", Some("evt_rec_ok"), json!({}))
        .await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    app.attempts(&hook, 1).await;

    // The receiver goes down: three failures disable the webhook.
    receiver.set_behaviour(Behaviour::Status(503));
    // One at a time, so their first attempts (which order the recovery) are made in
    // publish order; published together, the sender may attempt them in any order.
    for (i, id) in ["evt_rec_1", "evt_rec_2", "evt_rec_3"]
        .into_iter()
        .enumerate()
    {
        app.publish("qr.created", Some(id), json!({})).await;
        receiver.wait_for(2 + i, Duration::from_secs(5)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let w = app
            .store
            .get_webhook(&app.workspace, &hook.id)
            .await
            .unwrap()
            .unwrap();
        if !w.is_active {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "webhook not disabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = receiver.received().len();

    let recover = format!("/v1/webhooks/{}/recover", hook.id);
    let since = json!({"since": started.to_string()});
    let (status, body) = call(&app, reqwest::Method::POST, &recover, Some(since.clone())).await;
    assert_eq!(
        status, 409,
        "a disabled webhook is re-enabled first: {body}"
    );

    receiver.set_behaviour(Behaviour::Status(200));
    let (status, _) = call(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/webhooks/{}", hook.id),
        Some(json!({"is_active": true})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(&app, reqwest::Method::POST, &recover, Some(since.clone())).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], 3);
    assert_eq!(body["has_more"], false);
    assert_eq!(
        body["event_ids"],
        json!(["evt_rec_1", "evt_rec_2", "evt_rec_3"]),
        "oldest first, and not the delivered one"
    );
    let got = receiver.wait_for(before + 3, Duration::from_secs(5)).await;
    let mut resent: Vec<String> = got[before..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    resent.sort();
    assert_eq!(resent, ["evt_rec_1", "evt_rec_2", "evt_rec_3"]);

    // Everything is delivered now: recovering again queues nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let manual = app
            .store
            .list_attempts(&app.workspace, &hook.id, &Default::default(), None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.trigger == Trigger::Manual && a.status == AttemptStatus::Success)
            .count();
        if manual == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "manual attempts not logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = call(&app, reqwest::Method::POST, &recover, Some(since)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), before + 3, "nothing sent twice");
    app.stop().await;
}

#[tokio::test]
async fn max_per_second_spaces_a_burst_out_instead_of_failing_it() {
    let app = spawn_app_with(|s| s.delivery.defer_ms = 100).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let free = Receiver::start(Behaviour::Status(200)).await;
    let (status, created) = call(
        &app,
        reqwest::Method::POST,
        "/v1/webhooks",
        Some(json!({"url": receiver.url(), "events": ["qr.created"], "max_per_second": 10})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    app.webhook(&free.url(), &["qr.created"]).await;

    let ids: Vec<String> = (0..20).map(|i| format!("evt_rate_{i}")).collect();
    app.publish_burst("qr.created", &ids).await;
    let unlimited = free.wait_for(20, Duration::from_secs(10)).await;
    let got = receiver.wait_for(20, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 20, "every event arrives");
    assert_eq!(unlimited.len(), 20);

    // Ten per second: the sender starts eleven consecutive attempts a second apart or
    // more; arrivals may bunch a little on a busy machine, hence the margin.
    let times: Vec<_> = got.iter().map(|r| r.at).collect();
    for window in times.windows(11) {
        let span = window[10] - window[0];
        assert!(
            span >= Duration::from_millis(800),
            "11 deliveries within {span:?}"
        );
    }
    let mut seen: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20, "no duplicates");
    let text = app.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("qr3_deliveries_rate_limited_total ") && !l.ends_with(" 0")),
        "the rate limit shows in the metrics"
    );
    app.stop().await;
}
