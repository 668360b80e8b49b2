//! `GET /v1/webhooks/{id}/stats`: exact numbers over attempts written the way the
//! senders write them, and the same 401/404 rules as every webhook route.

use std::time::Duration;

use qr3_domain::Trigger;
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId};
use qr3_store::{AttemptRecord, AttemptStatus};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, is_timestamp, json_body, spawn_app, TestApp};

const HOUR: Duration = Duration::from_secs(3600);

/// An attempt made `age` ago, id and `created_at` stamped as a sender would have.
fn attempt(
    app: &TestApp,
    webhook: &WebhookId,
    age: Duration,
    status: AttemptStatus,
    response_time_ms: u32,
) -> AttemptRecord {
    let created_at = Timestamp::from(Timestamp::now().as_datetime() - age);
    AttemptRecord {
        id: DeliveryId::generate_at(created_at),
        webhook_id: webhook.clone(),
        workspace_id: app.workspace.clone(),
        event_id: EventId::generate(),
        event_type: EventType::QrScanned,
        status,
        status_code: Some(match status {
            AttemptStatus::Success => 200,
            AttemptStatus::Failed => 503,
        }),
        response_time_ms,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at,
        detail: None,
    }
}

async fn webhook(app: &TestApp) -> WebhookId {
    let created = app.create_simple_webhook(1).await;
    WebhookId::parse(created["id"].as_str().unwrap()).unwrap()
}

fn empty_window() -> Value {
    json!({"attempts": 0, "succeeded": 0, "failed": 0, "success_ratio": null,
        "latency_ms": {"p50": null, "p90": null, "p99": null}})
}

#[tokio::test]
async fn a_fresh_webhook_has_zeros_and_nulls() {
    let app = spawn_app().await;
    let hook = webhook(&app).await;
    let body = json_body(
        app.get(&format!("/v1/webhooks/{hook}/stats")).await,
        StatusCode::OK,
    )
    .await;
    assert!(
        is_timestamp(body["generated_at"].as_str().unwrap()),
        "{body}"
    );
    assert_eq!(
        body,
        json!({
            "webhook_id": hook.as_str(),
            "generated_at": body["generated_at"],
            "last_hour": empty_window(),
            "last_day": empty_window(),
        })
    );
}

#[tokio::test]
async fn stats_are_exact_over_the_last_hour_and_day() {
    use AttemptStatus::{Failed, Success};
    let app = spawn_app().await;
    let hook = webhook(&app).await;
    let other_hook = webhook(&app).await;
    let now = Duration::ZERO;
    let batch = [
        // The last hour: 3 of 4 succeeded (a manual resend counts like an event).
        attempt(&app, &hook, now, Success, 100),
        attempt(&app, &hook, now, Failed, 200),
        AttemptRecord {
            trigger: Trigger::Manual,
            ..attempt(&app, &hook, now, Success, 300)
        },
        attempt(&app, &hook, now, Success, 400),
        // Earlier today.
        attempt(&app, &hook, 2 * HOUR, Failed, 1_000),
        // Not counted: older than a day, a ping, another webhook.
        attempt(&app, &hook, 48 * HOUR, Success, 5),
        AttemptRecord {
            trigger: Trigger::Ping,
            event_type: EventType::WebhookPing,
            ..attempt(&app, &hook, now, Success, 9_999)
        },
        attempt(&app, &other_hook, now, Failed, 9_999),
    ];
    app.db.store.record_attempts(&batch, 1_000).await.unwrap();

    let body = json_body(
        app.get(&format!("/v1/webhooks/{hook}/stats")).await,
        StatusCode::OK,
    )
    .await;
    assert!(
        is_timestamp(body["generated_at"].as_str().unwrap()),
        "{body}"
    );
    assert_eq!(
        body,
        json!({
            "webhook_id": hook.as_str(),
            "generated_at": body["generated_at"],
            // percentile_disc: the first value at or past that share of the sorted
            // times, so of 4 values the 2nd, 4th and 4th…
            "last_hour": {"attempts": 4, "succeeded": 3, "failed": 1, "success_ratio": 0.75,
                "latency_ms": {"p50": 200, "p90": 400, "p99": 400}},
            // …and of 5 values the 3rd, 5th and 5th.
            "last_day": {"attempts": 5, "succeeded": 3, "failed": 2, "success_ratio": 0.6,
                "latency_ms": {"p50": 300, "p90": 1_000, "p99": 1_000}},
        })
    );
}

#[tokio::test]
async fn stats_are_scoped_to_the_workspace_and_need_a_key() {
    let app = spawn_app().await;
    let hook = webhook(&app).await;
    let path = format!("/v1/webhooks/{hook}/stats");
    let (_, other_key) = app.other_workspace().await;

    assert_error(
        app.request_as(&other_key, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    for unknown in ["wh_01kmnd4e2x7r4h1v3f5s8q0c9b", "not-an-id"] {
        assert_error(
            app.get(&format!("/v1/webhooks/{unknown}/stats")).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    assert_error(
        app.client.get(app.url(&path)).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    assert_error(
        app.request(Method::POST, &path).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
}
