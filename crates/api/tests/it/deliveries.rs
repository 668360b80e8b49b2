//! `GET /v1/webhooks/{id}/deliveries`: the delivery log, newest first, filtered and
//! paginated, over rows written the way the senders write them (`record_attempts`).

use qr3_domain::Trigger;
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId, WorkspaceId};
use qr3_store::{AttemptRecord, AttemptStatus};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, is_timestamp, json_body, spawn_app, TestApp};

fn attempt(
    workspace: &WorkspaceId,
    webhook: &WebhookId,
    event_type: EventType,
    status: AttemptStatus,
) -> AttemptRecord {
    AttemptRecord {
        id: DeliveryId::generate(),
        webhook_id: webhook.clone(),
        workspace_id: workspace.clone(),
        event_id: EventId::generate(),
        event_type,
        status,
        status_code: Some(match status {
            AttemptStatus::Success => 200,
            AttemptStatus::Failed => 503,
        }),
        response_time_ms: 145,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at: Timestamp::now(),
        detail: None,
    }
}

async fn webhook(app: &TestApp) -> WebhookId {
    let created = app.create_simple_webhook(1).await;
    WebhookId::parse(created["id"].as_str().unwrap()).unwrap()
}

/// Every id of every page of `path` (which has a query string already).
async fn all_pages(app: &TestApp, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(cursor) => format!("{path}&cursor={cursor}"),
            None => path.to_owned(),
        };
        let page = json_body(app.get(&url).await, StatusCode::OK).await;
        items.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => next = Some(cursor.to_owned()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_delivery_reads_as_documented() {
    let app = spawn_app().await;
    let hook = webhook(&app).await;
    let event = EventId::parse("evt_abc123xyz").unwrap();
    let ok = AttemptRecord {
        event_id: event.clone(),
        ..attempt(
            &app.workspace,
            &hook,
            EventType::QrScanned,
            AttemptStatus::Success,
        )
    };
    let network_failure = AttemptRecord {
        event_id: event.clone(),
        status_code: None,
        error: Some("connection refused".into()),
        attempt: 2,
        response_time_ms: 3,
        ..attempt(
            &app.workspace,
            &hook,
            EventType::QrScanned,
            AttemptStatus::Failed,
        )
    };
    let ping = AttemptRecord {
        trigger: Trigger::Ping,
        ..attempt(
            &app.workspace,
            &hook,
            EventType::WebhookPing,
            AttemptStatus::Success,
        )
    };
    app.db
        .store
        .record_attempts(&[ok.clone(), network_failure.clone(), ping.clone()], 10)
        .await
        .unwrap();

    let page = json_body(
        app.get(&format!("/v1/webhooks/{hook}/deliveries")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["has_more"], false);
    assert_eq!(page["next_cursor"], Value::Null);
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let by_id = |id: &DeliveryId| {
        data.iter()
            .find(|d| d["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} listed"))
            .clone()
    };

    let success = by_id(&ok.id);
    assert_eq!(
        success,
        json!({
            "id": ok.id.as_str(),
            "event_id": "evt_abc123xyz",
            "event_type": "qr.scanned",
            "status": "success",
            "status_code": 200,
            "response_time_ms": 145,
            "attempt": 1,
            "trigger": "event",
            "error": null,
            "created_at": ok.created_at.to_string(),
        })
    );
    assert!(success["id"].as_str().unwrap().starts_with("whd_"));
    assert!(is_timestamp(success["created_at"].as_str().unwrap()));

    let failure = by_id(&network_failure.id);
    assert_eq!(failure["status"], "failed");
    assert_eq!(failure["status_code"], Value::Null);
    assert_eq!(failure["error"], "connection refused");
    assert_eq!(failure["attempt"], 2);

    let ping = by_id(&ping.id);
    assert_eq!(ping["trigger"], "ping");
    assert_eq!(ping["event_type"], "webhook.ping");
}

#[tokio::test]
async fn deliveries_are_paginated_newest_first_and_filtered() {
    let app = spawn_app().await;
    let hook = webhook(&app).await;
    let other_hook = webhook(&app).await;
    let types = [
        EventType::QrScanned,
        EventType::QrCreated,
        EventType::ScanCreated,
    ];
    let mut batch = Vec::new();
    for i in 0..25 {
        let status = if i % 3 == 0 {
            AttemptStatus::Failed
        } else {
            AttemptStatus::Success
        };
        batch.push(attempt(&app.workspace, &hook, types[i % 3], status));
    }
    batch.push(attempt(
        &app.workspace,
        &other_hook,
        EventType::QrScanned,
        AttemptStatus::Success,
    ));
    app.db.store.record_attempts(&batch, 1000).await.unwrap();

    let expected = |keep: &dyn Fn(&AttemptRecord) -> bool| {
        let mut ids: Vec<String> = batch
            .iter()
            .filter(|a| a.webhook_id == hook && keep(a))
            .map(|a| a.id.to_string())
            .collect();
        ids.sort();
        ids.reverse();
        ids
    };
    let base = format!("/v1/webhooks/{hook}/deliveries");

    let everything = expected(&|_| true);
    assert_eq!(everything.len(), 25);
    let default = json_body(app.get(&base).await, StatusCode::OK).await;
    assert_eq!(default["data"].as_array().unwrap().len(), 20);
    assert_eq!(default["has_more"], true);
    for limit in [1, 4, 25, 100] {
        let items = all_pages(&app, &format!("{base}?limit={limit}")).await;
        assert_eq!(ids(&items), everything, "limit {limit}, newest first");
    }

    let failed = all_pages(&app, &format!("{base}?status=failed&limit=2")).await;
    assert_eq!(
        ids(&failed),
        expected(&|a| a.status == AttemptStatus::Failed)
    );
    assert!(failed.iter().all(|d| d["status"] == "failed"));
    let succeeded = all_pages(&app, &format!("{base}?status=success&limit=5")).await;
    assert_eq!(
        ids(&succeeded),
        expected(&|a| a.status == AttemptStatus::Success)
    );

    let created = all_pages(&app, &format!("{base}?event_type=qr.created&limit=3")).await;
    assert_eq!(
        ids(&created),
        expected(&|a| a.event_type == EventType::QrCreated)
    );
    let both = all_pages(
        &app,
        &format!("{base}?event_type=scan.created&status=failed&limit=3"),
    )
    .await;
    assert_eq!(
        ids(&both),
        expected(&|a| a.event_type == EventType::ScanCreated && a.status == AttemptStatus::Failed)
    );
    let none = all_pages(&app, &format!("{base}?event_type=qr.flagged")).await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn invalid_filters_are_422() {
    let app = spawn_app().await;
    let hook = webhook(&app).await;
    let base = format!("/v1/webhooks/{hook}/deliveries");
    for (query, field, message) in [
        ("status=ok", "status", "status must be `success` or `failed`"),
        ("status=", "status", "status must be `success` or `failed`"),
        ("event_type=qr.exploded", "event_type", "unknown event type `qr.exploded`"),
        ("event_type=*", "event_type", "unknown event type `*`"),
        ("limit=0", "limit", "limit must be an integer from 1 to 100"),
        ("limit=101", "limit", "limit must be an integer from 1 to 100"),
        ("cursor=xyz", "cursor", "cursor is not valid here: pass a `next_cursor` from this listing"),
        ("type=qr.created", "type", "unknown query parameter `type`, expected one of `status`, `event_type`, `limit`, `cursor`"),
    ] {
        let got = assert_error(
            app.get(&format!("{base}?{query}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        )
        .await;
        assert_eq!(got, message, "{query}");
    }
}
