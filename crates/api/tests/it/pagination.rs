//! `limit` and `cursor` on `GET /v1/webhooks`: pages, bounds, bad cursors, and pages
//! that stay stable while webhooks are being created.

use std::collections::{HashMap, HashSet};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, json_body, spawn_app, TestApp};

/// Pages through `/v1/webhooks` with `limit`; returns the ids in the order seen and
/// checks each page's envelope, pausing `between_pages` after each.
async fn page_through(app: &TestApp, limit: usize, between_pages: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/v1/webhooks?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = json_body(app.get(&path).await, StatusCode::OK).await;
        let mut keys: Vec<&String> = page.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["data", "has_more", "next_cursor"]);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        seen.extend(data.iter().map(|w| w["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(page["has_more"], true);
                assert_eq!(data.len(), limit, "only the last page is short");
                cursor = Some(next.to_owned());
            }
            None => {
                assert_eq!(page["has_more"], false);
                assert_eq!(page["next_cursor"], Value::Null);
                return seen;
            }
        }
        tokio::time::sleep(between_pages).await;
    }
    panic!("paging did not end");
}

#[tokio::test]
async fn pages_cover_every_webhook_newest_first() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for n in 0..45 {
        created.push(
            app.create_simple_webhook(n).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut newest_first = created.clone();
    newest_first.sort();
    newest_first.reverse();

    let default = json_body(app.get("/v1/webhooks").await, StatusCode::OK).await;
    assert_eq!(
        default["data"].as_array().unwrap().len(),
        20,
        "default limit"
    );
    assert_eq!(default["has_more"], true);

    for limit in [1, 7, 20, 44, 45, 100] {
        let seen = page_through(&app, limit, Duration::ZERO).await;
        assert_eq!(seen, newest_first, "limit {limit}");
    }
    let page = json_body(app.get("/v1/webhooks?limit=100").await, StatusCode::OK).await;
    assert_eq!(page["has_more"], false);
    assert_eq!(page["next_cursor"], Value::Null);

    // An empty cursor is the first page.
    let first = json_body(
        app.get("/v1/webhooks?cursor=&limit=5").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["data"][0]["id"], newest_first[0].as_str());
}

#[tokio::test]
async fn limits_outside_1_to_100_are_422() {
    let app = spawn_app().await;
    for limit in ["0", "101", "-1", "abc", "2.5", "", "99999999999"] {
        let message = assert_error(
            app.get(&format!("/v1/webhooks?limit={limit}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("limit"),
        )
        .await;
        assert_eq!(message, "limit must be an integer from 1 to 100", "{limit}");
    }
    assert_error(
        app.get("/v1/webhooks?limit=5&limit=6").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("limit"),
    )
    .await;
}

#[tokio::test]
async fn invalid_cursors_are_422() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_simple_webhook(0).await;
    }
    let page = json_body(app.get("/v1/webhooks?limit=1").await, StatusCode::OK).await;
    let good = page["next_cursor"].as_str().unwrap().to_owned();
    let webhook_id = page["data"][0]["id"].as_str().unwrap().to_owned();

    let truncated = &good[..good.len() - 3];
    let deliveries_cursor = {
        // A cursor of the deliveries listing is refused by the webhooks listing.
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "deliveries.v1:{}",
            qr3_domain::DeliveryId::generate()
        ))
    };
    for cursor in [
        "garbage!",
        "bm90LWEtY3Vyc29y",
        truncated,
        &webhook_id,
        &deliveries_cursor,
    ] {
        let message = assert_error(
            app.get(&format!("/v1/webhooks?cursor={cursor}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("cursor"),
        )
        .await;
        assert!(message.contains("cursor"), "{message}");
    }
    // A webhooks cursor is refused by a deliveries listing.
    assert_error(
        app.get(&format!(
            "/v1/webhooks/{webhook_id}/deliveries?cursor={good}"
        ))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("cursor"),
    )
    .await;
}

#[tokio::test]
async fn unknown_query_parameters_are_422() {
    let app = spawn_app().await;
    let message = assert_error(
        app.get("/v1/webhooks?limt=5").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("limt"),
    )
    .await;
    assert!(
        message.starts_with("unknown query parameter `limt`"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_stable_while_webhooks_are_created() {
    let app = Arc::new(spawn_app().await);
    let mut originals = Vec::new();
    for n in 0..30 {
        originals.push(
            app.create_simple_webhook(n).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let creator = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut created = 0;
            // Bounded: stops when told to, or after 500 webhooks whatever happens.
            while !stop.load(Ordering::Relaxed) && created < 500 {
                app.create_simple_webhook(1000 + created).await;
                created += 1;
            }
            created
        })
    };
    // Let the creator get going before the first page.
    while app
        .db
        .store
        .list_webhooks(&app.workspace, None, 40)
        .await
        .unwrap()
        .len()
        < 33
    {
        tokio::task::yield_now().await;
    }
    let seen = page_through(&app, 7, Duration::from_millis(20)).await;
    stop.store(true, Ordering::Relaxed);
    let created_meanwhile = creator.await.unwrap();
    assert!(created_meanwhile > 3, "inserts ran during paging");

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "no duplicates: {counts:?}"
    );
    for id in &originals {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} seen exactly once");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
}
