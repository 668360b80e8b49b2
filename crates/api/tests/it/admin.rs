//! The operator's `/admin/v1`: admin tokens (and only they), workspaces under the
//! platform's own ids, API keys minted, listed and revoked, and offboarding.

use qr3_config::Redacted;
use reqwest::{header, Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, is_timestamp, json_body, spawn_app, spawn_app_with, TestApp};

const TOKEN: &str = "admin-0123456789abcdefghijklmnopqrstuv";
/// The token being rotated out: both work meanwhile.
const OLD_TOKEN: &str = "admin-old-0123456789abcdefghijklmnopqr";

async fn spawn_admin() -> TestApp {
    spawn_app_with(|s| {
        s.api.admin_token = Redacted::new(vec![TOKEN.into(), OLD_TOKEN.into()]);
    })
    .await
}

fn admin(app: &TestApp, method: Method, path: &str) -> RequestBuilder {
    app.request_as(TOKEN, method, path)
}

async fn put_workspace(app: &TestApp, id: &str, name: &str) -> reqwest::Response {
    admin(app, Method::PUT, &format!("/admin/v1/workspaces/{id}"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap()
}

async fn mint_key(app: &TestApp, workspace: &str) -> Value {
    let response = admin(
        app,
        Method::POST,
        &format!("/admin/v1/workspaces/{workspace}/api-keys"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    json_body(response, StatusCode::CREATED).await
}

async fn status_with_key(app: &TestApp, key: &str) -> StatusCode {
    app.request_as(key, Method::GET, "/v1/webhooks")
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn without_an_admin_token_configured_all_of_admin_v1_is_404() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/admin/v1/workspaces"),
        (Method::PUT, "/admin/v1/workspaces/acme"),
        (Method::DELETE, "/admin/v1/workspaces/acme"),
        (Method::POST, "/admin/v1/workspaces/acme/api-keys"),
        (Method::PATCH, "/admin/v1/workspaces/acme"),
    ] {
        for credential in [TOKEN, app.api_key.as_str()] {
            let response = app
                .request_as(credential, method.clone(), path)
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap();
            assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
        }
    }
}

#[tokio::test]
async fn only_an_admin_token_opens_admin_v1_and_it_never_opens_v1() {
    let app = spawn_admin().await;
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing admin token"),
        (
            Some("Basic dXNlcjpwYXNz".into()),
            "malformed Authorization header",
        ),
        (Some("Bearer".into()), "malformed Authorization header"),
        (
            Some(format!("Bearer {TOKEN} x")),
            "malformed Authorization header",
        ),
        (Some("Bearer wrong".into()), "invalid admin token"),
        (Some(format!("Bearer {TOKEN}x")), "invalid admin token"),
        (
            Some(format!("Bearer {}", &TOKEN[1..])),
            "invalid admin token",
        ),
        // A workspace's API key is not an admin token.
        (
            Some(format!("Bearer {}", app.api_key)),
            "invalid admin token",
        ),
    ];
    for (authorization, expected) in cases {
        for (method, path) in [
            (Method::GET, "/admin/v1/workspaces"),
            (Method::PUT, "/admin/v1/workspaces/acme"),
            (
                Method::DELETE,
                &format!("/admin/v1/workspaces/{}", app.workspace),
            ),
            (Method::GET, "/admin/v1/workspaces/not.valid"),
        ] {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .json(&json!({"name": "x"}));
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let message =
                assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
            assert!(
                message.starts_with(expected),
                "{authorization:?} {path}: {message}"
            );
        }
    }
    // Nothing was created or deleted by the refused requests.
    assert!(app
        .db
        .store
        .get_workspace(&app.workspace)
        .await
        .unwrap()
        .is_some());
    let acme = qr3_domain::WorkspaceId::parse("acme").unwrap();
    assert!(app.db.store.get_workspace(&acme).await.unwrap().is_none());

    // Both tokens of a rotation work, and neither works on /v1.
    for token in [TOKEN, OLD_TOKEN] {
        let response = app
            .request_as(token, Method::GET, "/admin/v1/workspaces")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = app
            .request_as(token, Method::GET, "/v1/webhooks")
            .send()
            .await
            .unwrap();
        let message = assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        assert_eq!(message, "invalid API key");
    }
}

#[tokio::test]
async fn put_creates_a_workspace_under_the_platforms_id_then_renames_it() {
    let app = spawn_admin().await;
    let response = put_workspace(&app, "Acme_42-eu", "Acme").await;
    assert_eq!(
        response.headers()[header::LOCATION],
        "/admin/v1/workspaces/Acme_42-eu"
    );
    let created = json_body(response, StatusCode::CREATED).await;
    assert_eq!(created["id"], "Acme_42-eu");
    assert_eq!(created["name"], "Acme");
    assert!(is_timestamp(created["created_at"].as_str().unwrap()));
    assert_eq!(created.as_object().unwrap().len(), 3, "{created}");

    let renamed = json_body(
        put_workspace(&app, "Acme_42-eu", "Acme GmbH").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(renamed["name"], "Acme GmbH");
    assert_eq!(renamed["created_at"], created["created_at"]);
    let same = json_body(
        put_workspace(&app, "Acme_42-eu", "Acme GmbH").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(same, renamed, "repeating a PUT changes nothing");
    let read = json_body(
        admin(&app, Method::GET, "/admin/v1/workspaces/Acme_42-eu")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(read, renamed);
    // Ids are case-sensitive, and a generated `ws_…` id is one like any other.
    let other = json_body(
        put_workspace(&app, "acme_42-eu", "other").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(other["name"], "other");
    let existing = json_body(
        put_workspace(&app, app.workspace.as_str(), "renamed test").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(existing["id"], app.workspace.as_str());
}

#[tokio::test]
async fn bad_input_answers_404_422_or_400_in_the_json_error_shape() {
    let app = spawn_admin().await;
    let long = "x".repeat(65);
    for bad in ["not.valid", "a%20b", "%C3%A9", long.as_str()] {
        for (method, path) in [
            (Method::GET, format!("/admin/v1/workspaces/{bad}")),
            (Method::PUT, format!("/admin/v1/workspaces/{bad}")),
            (Method::DELETE, format!("/admin/v1/workspaces/{bad}")),
            (Method::POST, format!("/admin/v1/workspaces/{bad}/api-keys")),
            (Method::GET, format!("/admin/v1/workspaces/{bad}/api-keys")),
            (
                Method::DELETE,
                format!("/admin/v1/workspaces/{bad}/api-keys/key_01kmnd4e2x7r4h1v3f5s8q0c9b"),
            ),
        ] {
            let response = admin(&app, method.clone(), &path)
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap();
            let message = assert_error(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                Some("workspace_id"),
            )
            .await;
            assert!(message.contains("1 to 64 of"), "{method} {path}: {message}");
        }
    }
    let ws = app.workspace.as_str();
    let response = admin(
        &app,
        Method::DELETE,
        &format!("/admin/v1/workspaces/{ws}/api-keys/not-a-key"),
    )
    .send()
    .await
    .unwrap();
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("key_id"),
    )
    .await;

    for (method, path) in [
        (Method::GET, "/admin/v1/workspaces/unknown".to_owned()),
        (Method::DELETE, "/admin/v1/workspaces/unknown".to_owned()),
        (
            Method::POST,
            "/admin/v1/workspaces/unknown/api-keys".to_owned(),
        ),
        (
            Method::GET,
            "/admin/v1/workspaces/unknown/api-keys".to_owned(),
        ),
        (
            Method::DELETE,
            "/admin/v1/workspaces/unknown/api-keys/key_01kmnd4e2x7r4h1v3f5s8q0c9b".to_owned(),
        ),
        (
            Method::DELETE,
            format!("/admin/v1/workspaces/{ws}/api-keys/key_01kmnd4e2x7r4h1v3f5s8q0c9b"),
        ),
    ] {
        let response = admin(&app, method.clone(), &path).send().await.unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    }

    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "  "}), "name"),
        (json!({"name": "a\nb"}), "name"),
        (json!({"name": "n".repeat(201)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({}), "name"),
        (json!({"name": "x", "id": "y"}), "id"),
    ] {
        let response = admin(&app, Method::PUT, "/admin/v1/workspaces/acme")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        )
        .await;
    }
    let response = admin(&app, Method::PUT, "/admin/v1/workspaces/acme")
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "malformed_request", None).await;
    let response = admin(&app, Method::PATCH, "/admin/v1/workspaces/acme")
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    let response = admin(&app, Method::GET, "/admin/v1/workspaces?limit=0")
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("limit"),
    )
    .await;
    let acme = qr3_domain::WorkspaceId::parse("acme").unwrap();
    assert!(
        app.db.store.get_workspace(&acme).await.unwrap().is_none(),
        "no refused PUT created it"
    );
}

#[tokio::test]
async fn workspaces_page_newest_first_without_repeats_or_gaps() {
    let app = spawn_admin().await;
    for i in 0..6 {
        put_workspace(&app, &format!("tenant-{i}"), "t").await;
    }
    let mut ids = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = json_body(
            admin(
                &app,
                Method::GET,
                &format!("/admin/v1/workspaces?limit=3&cursor={cursor}"),
            )
            .send()
            .await
            .unwrap(),
            StatusCode::OK,
        )
        .await;
        pages += 1;
        let data = page["data"].as_array().unwrap();
        let created: Vec<&str> = data
            .iter()
            .map(|w| w["created_at"].as_str().unwrap())
            .collect();
        assert!(
            created.windows(2).all(|p| p[0] >= p[1]),
            "newest first: {created:?}"
        );
        ids.extend(data.iter().map(|w| w["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(page["has_more"], true);
                cursor = next.to_owned();
            }
            None => {
                assert_eq!(page["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(pages, 3, "7 workspaces, 3 a page");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "each once: {ids:?}");
    assert!(ids.contains(&app.workspace.to_string()));

    // A cursor of another listing is refused.
    let keys = json_body(
        admin(
            &app,
            Method::GET,
            &format!("/admin/v1/workspaces/{}/api-keys?limit=1", app.workspace),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(keys["has_more"], false);
    let webhooks_cursor = {
        for n in 0..2 {
            app.create_simple_webhook(n).await;
        }
        let page = json_body(app.get("/v1/webhooks?limit=1").await, StatusCode::OK).await;
        page["next_cursor"].as_str().unwrap().to_owned()
    };
    let response = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/workspaces?cursor={webhooks_cursor}"),
    )
    .send()
    .await
    .unwrap();
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("cursor"),
    )
    .await;
}

#[tokio::test]
async fn keys_rotate_without_downtime_and_a_revoked_key_is_refused_at_once() {
    let app = spawn_admin().await;
    json_body(
        put_workspace(&app, "acme", "Acme").await,
        StatusCode::CREATED,
    )
    .await;
    let list_path = "/admin/v1/workspaces/acme/api-keys";
    let empty = json_body(
        admin(&app, Method::GET, list_path).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        empty["data"],
        json!([]),
        "creating a workspace mints no key"
    );

    let old = mint_key(&app, "acme").await;
    assert_eq!(old.as_object().unwrap().len(), 3, "{old}");
    assert!(old["id"].as_str().unwrap().starts_with("key_"));
    assert!(is_timestamp(old["created_at"].as_str().unwrap()));
    let old_key = old["api_key"].as_str().unwrap().to_owned();
    assert!(old_key.starts_with("qr3k_"));
    // The key works on /v1 and sees its own workspace only.
    app.request_as(&old_key, Method::POST, "/v1/webhooks")
        .json(&json!({"url": "https://example.com/acme", "events": ["*"]}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let seen = json_body(
        app.request_as(&old_key, Method::GET, "/v1/webhooks")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(seen["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        json_body(app.get("/v1/webhooks").await, StatusCode::OK).await["data"],
        json!([])
    );
    // An API key never opens the admin API, not even for its own workspace.
    let response = app
        .request_as(&old_key, Method::GET, list_path)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;

    // Rotation: a second key, both work, then the old one is revoked.
    let new = mint_key(&app, "acme").await;
    let new_key = new["api_key"].as_str().unwrap().to_owned();
    assert_eq!(status_with_key(&app, &old_key).await, StatusCode::OK);
    assert_eq!(status_with_key(&app, &new_key).await, StatusCode::OK);
    let listed = json_body(
        admin(&app, Method::GET, list_path).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        listed["data"],
        json!([
            {"id": new["id"], "created_at": new["created_at"], "revoked_at": null},
            {"id": old["id"], "created_at": old["created_at"], "revoked_at": null},
        ]),
        "newest first, never a secret"
    );
    let first_page = json_body(
        admin(&app, Method::GET, &format!("{list_path}?limit=1"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(first_page["data"][0]["id"], new["id"]);
    let second_page = json_body(
        admin(
            &app,
            Method::GET,
            &format!(
                "{list_path}?limit=1&cursor={}",
                first_page["next_cursor"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(second_page["data"][0]["id"], old["id"]);
    assert_eq!(second_page["has_more"], false);

    let revoke = format!("{list_path}/{}", old["id"].as_str().unwrap());
    let response = admin(&app, Method::DELETE, &revoke).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    let refused = app
        .request_as(&old_key, Method::GET, "/v1/webhooks")
        .send()
        .await
        .unwrap();
    let message = assert_error(refused, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    assert_eq!(message, "invalid API key");
    assert_eq!(status_with_key(&app, &new_key).await, StatusCode::OK);

    let listed = json_body(
        admin(&app, Method::GET, list_path).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let revoked_at = listed["data"][1]["revoked_at"].clone();
    assert!(is_timestamp(revoked_at.as_str().unwrap()));
    assert_eq!(listed["data"][0]["revoked_at"], Value::Null);
    // Revoking again changes nothing.
    let response = admin(&app, Method::DELETE, &revoke).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let listed = json_body(
        admin(&app, Method::GET, list_path).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["data"][1]["revoked_at"], revoked_at);
    // A key is revoked only through its own workspace.
    let elsewhere = format!(
        "/admin/v1/workspaces/{}/api-keys/{}",
        app.workspace,
        new["id"].as_str().unwrap()
    );
    let response = admin(&app, Method::DELETE, &elsewhere)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    assert_eq!(status_with_key(&app, &new_key).await, StatusCode::OK);
}

#[tokio::test]
async fn delete_erases_the_workspace_and_is_safe_to_repeat() {
    let app = spawn_admin().await;
    json_body(
        put_workspace(&app, "gone", "Gone").await,
        StatusCode::CREATED,
    )
    .await;
    let key = mint_key(&app, "gone").await["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let hook = json_body(
        app.request_as(&key, Method::POST, "/v1/webhooks")
            .json(&json!({"url": "https://example.com/gone", "events": ["*"]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let hook_path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    app.request_as(&key, Method::POST, &format!("{hook_path}/rotate-secret"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let gone = qr3_domain::WorkspaceId::parse("gone").unwrap();
    let event = qr3_store::EventKey {
        workspace_id: gone.clone(),
        event_id: qr3_domain::EventId::generate(),
        event_type: qr3_domain::EventType::QrScanned,
    };
    app.db
        .store
        .claim_events(&[event], std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let before = row_counts(&app, "gone").await;
    assert_eq!(
        before,
        [1, 1, 1, 1, 1],
        "workspaces, api_keys, webhooks, previous secrets, claims"
    );

    let response = admin(&app, Method::DELETE, "/admin/v1/workspaces/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(row_counts(&app, "gone").await, [0, 0, 0, 0, 0]);
    let message = assert_error(
        app.request_as(&key, Method::GET, "/v1/webhooks")
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    assert_eq!(message, "invalid API key");
    for (method, path) in [
        (Method::GET, "/admin/v1/workspaces/gone"),
        (Method::DELETE, "/admin/v1/workspaces/gone"),
        (Method::GET, "/admin/v1/workspaces/gone/api-keys"),
    ] {
        let response = admin(&app, method, path).send().await.unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    // The other workspace is untouched.
    assert_eq!(status_with_key(&app, &app.api_key).await, StatusCode::OK);

    // A deletion cut short after its first step (workspace marked, webhooks and keys
    // gone, claims left) is finished by the next DELETE; meanwhile the workspace is
    // gone for reads and a PUT is refused.
    json_body(
        put_workspace(&app, "gone", "Again").await,
        StatusCode::CREATED,
    )
    .await;
    let event = qr3_store::EventKey {
        workspace_id: gone.clone(),
        event_id: qr3_domain::EventId::generate(),
        event_type: qr3_domain::EventType::QrScanned,
    };
    app.db
        .store
        .claim_events(&[event], std::time::Duration::from_secs(10))
        .await
        .unwrap();
    app.db
        .query("UPDATE workspaces SET deleted_at = now() WHERE id = 'gone'")
        .await
        .unwrap();
    let response = admin(&app, Method::GET, "/admin/v1/workspaces/gone")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    let message = assert_error(
        put_workspace(&app, "gone", "Again").await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    )
    .await;
    assert!(message.contains("repeat DELETE"), "{message}");
    let response = admin(&app, Method::DELETE, "/admin/v1/workspaces/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(row_counts(&app, "gone").await, [0, 0, 0, 0, 0]);
    json_body(
        put_workspace(&app, "gone", "New").await,
        StatusCode::CREATED,
    )
    .await;
}

/// Rows of workspace `ws` in workspaces, api_keys, webhooks, webhook_previous_secrets
/// and ingested_events.
async fn row_counts(app: &TestApp, ws: &str) -> [i64; 5] {
    let rows = app
        .db
        .query(&format!(
            "SELECT (SELECT count(*) FROM workspaces WHERE id = '{ws}'),
                    (SELECT count(*) FROM api_keys WHERE workspace_id = '{ws}'),
                    (SELECT count(*) FROM webhooks WHERE workspace_id = '{ws}'),
                    (SELECT count(*) FROM webhook_previous_secrets p
                       WHERE NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = p.webhook_id)
                          OR p.webhook_id IN (SELECT id FROM webhooks WHERE workspace_id = '{ws}')),
                    (SELECT count(*) FROM ingested_events WHERE workspace_id = '{ws}')"
        ))
        .await
        .unwrap();
    [0, 1, 2, 3, 4].map(|i| rows[0].get(i))
}
