//! Every metric docs/metrics.md documents is exported, and moves during a real run.

use std::time::Duration;

use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::spawn_app_with;

/// The `qr3_…` names in the first column of docs/metrics.md's tables.
fn documented() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let mut names: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("qr3_"))
        .map(str::to_owned)
        .collect();
    names.dedup();
    assert!(names.len() >= 20, "found only {names:?}");
    names
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test]
async fn every_documented_metric_is_exported_and_moves() {
    let app = spawn_app_with(|s| {
        s.delivery.disable_after_failures = 2;
        s.delivery.max_in_flight_per_webhook = 1;
        s.delivery.defer_ms = 50;
        // One API request a second: the second request below is refused (429).
        s.api.rate_limit_per_second = 1;
        s.api.rate_limit_burst = 1;
    })
    .await;
    // Slower than the bulkhead's wait bound (delivery.defer_ms, 50 ms): with one slot
    // per webhook, the burst's other jobs are not served within it and are deferred.
    let ok = Receiver::start(Behaviour::Delay(300)).await;
    let failing = Receiver::start(Behaviour::Status(500)).await;
    let good = app.webhook(&ok.url(), &["*"]).await;
    app.webhook(&failing.url(), &["qr.deleted"]).await;
    // A webhook deleted while its retry waits: the retry is skipped.
    let doomed = app.webhook(&failing.url(), &["qr.updated"]).await;
    app.publish("qr.updated", None, json!({})).await;
    app.attempts(&doomed, 1).await;
    app.store
        .delete_webhook(&app.workspace, &doomed.id)
        .await
        .unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("evt_m{i}")).collect();
    app.publish_burst("qr.scanned", &ids).await;
    app.publish("qr.scanned", Some("evt_m0"), json!({})).await; // a duplicate
    app.publish("qr.deleted", None, json!({})).await; // fails, retried, disables
    app.publish_raw("qr.created", b"not json").await; // dead-lettered

    // The "*" webhook gets the five scans, the update and the delete.
    ok.wait_for(7, Duration::from_secs(10)).await;
    app.attempts(&good, 7).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // An API request, for the HTTP metrics, and one right after it beyond the key's
    // rate limit.
    let client = reqwest::Client::new();
    for expected in [200, 429] {
        let response = client
            .get(format!("{}/v1/webhooks", app.api))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected);
    }
    reqwest::get(format!("{}/readyz", app.api)).await.unwrap();

    let metrics = app.metrics_text().await;
    for name in documented() {
        assert!(
            metrics.contains(&format!("\n{name}")),
            "{name} is documented but not exported:\n{metrics}"
        );
    }
    assert_eq!(
        value(
            &metrics,
            "qr3_events_ingested_total{event_type=\"qr.scanned\"}"
        ),
        5.0
    );
    assert_eq!(value(&metrics, "qr3_events_duplicate_total"), 1.0);
    assert_eq!(
        value(
            &metrics,
            "qr3_events_rejected_total{reason=\"invalid_json\"}"
        ),
        1.0
    );
    assert!(value(&metrics, "qr3_fanout_jobs_published_total") >= 6.0);
    // The "*" webhook got the five scans, the update and the delete.
    assert_eq!(
        value(
            &metrics,
            "qr3_delivery_attempts_total{attempt=\"1\",outcome=\"success\"}"
        ),
        7.0
    );
    assert!(
        value(
            &metrics,
            "qr3_delivery_attempts_total{attempt=\"2\",outcome=\"failed\"}"
        ) >= 1.0
    );
    assert!(value(&metrics, "qr3_retries_scheduled_total{delay_ms=\"100\"}") >= 1.0);
    assert_eq!(value(&metrics, "qr3_webhooks_disabled_total"), 1.0);
    assert_eq!(
        value(
            &metrics,
            "qr3_deliveries_skipped_total{reason=\"webhook_deleted\"}"
        ),
        1.0
    );
    assert!(value(&metrics, "qr3_deliveries_deferred_total") >= 1.0);
    assert!(value(&metrics, "qr3_delivery_lag_seconds_count") >= 7.0);
    assert!(value(&metrics, "qr3_delivery_response_seconds_count") >= 7.0);
    assert!(value(&metrics, "qr3_log_batch_size_count") >= 1.0);
    assert_eq!(value(&metrics, "qr3_broker_connected"), 1.0);
    assert_eq!(value(&metrics, "qr3_database_up"), 1.0);
    assert_eq!(value(&metrics, "qr3_deliveries_in_flight"), 0.0);
    assert!(
        metrics.contains(
            "qr3_http_requests_total{method=\"GET\",route=\"/v1/webhooks\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            "qr3_http_rate_limited_total{limit=\"api_key\",route=\"/v1/webhooks\"}"
        ),
        1.0
    );
    app.stop().await;
}

/// A freshly started process, of each role and of all of them, lists every documented
/// metric on its first scrape, before anything happened: labelled series whose values
/// are known start at 0 (the dead-letter depth only where a worker reads it).
#[tokio::test]
async fn every_documented_metric_is_on_the_first_scrape_of_every_role() {
    use qr3_webhooks::{app, Roles};
    let db = qr3_testkit::TestDb::new().await.unwrap();
    let settings = qr3_testkit::test_settings(&db.url);
    for (label, roles) in [
        ("all", Roles::ALL),
        ("api", Roles::API),
        ("ingest", Roles::INGEST),
        ("sender", Roles::SENDER),
    ] {
        let running = app::start(settings.clone(), roles).await.unwrap();
        let addr = running.api_addr.or(running.ops_addr).unwrap();
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for name in documented() {
            if name == "qr3_dead_letters" && roles == Roles::API {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{label}: {name} is not on the first scrape"
            );
        }
        // The first rejection of any reason is an increase from 0.
        for reason in qr3_broker::Rejection::REASONS {
            assert_eq!(
                value(
                    &text,
                    &format!("qr3_events_rejected_total{{reason=\"{reason}\"}}")
                ),
                0.0
            );
        }
        running.stop().await.unwrap();
    }
}
