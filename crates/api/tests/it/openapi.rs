//! The served OpenAPI document: complete, and identical to the checked-in
//! `docs/openapi.json` (regenerate with `QR3_BLESS=1 cargo test -p qr3-api`).

use std::path::PathBuf;

use reqwest::{header, StatusCode};
use serde_json::Value;

use crate::helpers::spawn_app;

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[tokio::test]
async fn docs_openapi_json_is_the_served_document() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let served = format!("{}\n", response.text().await.unwrap());

    let path = checked_in_path();
    if std::env::var_os("QR3_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &served).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == served,
        "{} is out of date: regenerate it with `QR3_BLESS=1 cargo test -p qr3-api` and review the diff",
        path.display()
    );
}

#[tokio::test]
async fn the_document_describes_every_route_and_the_bearer_scheme() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/v1/webhooks", &["get", "post"][..]),
        ("/v1/webhooks/{id}", &["get", "patch", "delete"][..]),
        ("/v1/webhooks/{id}/deliveries", &["get"][..]),
        ("/v1/webhooks/{id}/ping", &["post"][..]),
        ("/v1/webhooks/{id}/rotate-secret", &["post"][..]),
        ("/v1/webhooks/{id}/deliveries/{delivery_id}", &["get"][..]),
        (
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            &["post"][..],
        ),
        ("/v1/webhooks/{id}/recover", &["post"][..]),
        ("/v1/webhooks/{id}/stats", &["get"][..]),
        ("/v1/openapi.json", &["get"][..]),
        ("/admin/v1/workspaces", &["get"][..]),
        (
            "/admin/v1/workspaces/{workspace_id}",
            &["get", "put", "delete"][..],
        ),
        (
            "/admin/v1/workspaces/{workspace_id}/api-keys",
            &["get", "post"][..],
        ),
        (
            "/admin/v1/workspaces/{workspace_id}/api-keys/{key_id}",
            &["delete"][..],
        ),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
    }
    assert_eq!(
        paths["/v1/webhooks"]["post"]["security"],
        serde_json::json!([{"bearer": []}])
    );
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    // The admin API has its own tag and its own credential.
    for (path, method) in [
        ("/admin/v1/workspaces", "get"),
        ("/admin/v1/workspaces/{workspace_id}", "put"),
        (
            "/admin/v1/workspaces/{workspace_id}/api-keys/{key_id}",
            "delete",
        ),
    ] {
        let operation = &paths[path][method];
        assert_eq!(operation["tags"], serde_json::json!(["admin"]), "{path}");
        assert_eq!(
            operation["security"],
            serde_json::json!([{"admin_token": []}]),
            "{path}"
        );
    }
    let admin = &doc["components"]["securitySchemes"]["admin_token"];
    assert_eq!(admin["scheme"], "bearer");

    let schemas = &doc["components"]["schemas"];
    let webhook = &schemas["Webhook"];
    let mut required: Vec<&str> = webhook["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(
        required,
        [
            "created_at",
            "disabled_at",
            "disabled_reason",
            "events",
            "id",
            "is_active",
            "max_per_second",
            "secret_hint",
            "updated_at",
            "url"
        ],
        "every field but `secret`, `secret_whsec` and `previous_secret_expires_at` is always present"
    );
    assert_eq!(schemas["CreateWebhook"]["additionalProperties"], false);
    let events = &schemas["EventSubscription"]["enum"];
    assert!(events.as_array().unwrap().contains(&"*".into()));
    assert!(events.as_array().unwrap().contains(&"scan.created".into()));
}
