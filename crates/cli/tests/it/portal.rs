//! The customer portal's API side, end to end: portal sessions (what their token may and
//! may not do, read-only sessions, expiry, revocation, the shared rate limit), the page's
//! headers, forced resends and the recover cursor.

use std::time::Duration;

use qr3_store::AttemptStatus;

use qr3_domain::Trigger;
use qr3_testkit::{Behaviour, Receiver};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{expected_signature, spawn_app_with, TestApp};

const ADMIN_TOKEN: &str = "portal-test-admin-token-0123456789abcdef";

async fn call_as(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", app.api))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(app, &app.api_key, method, path, body).await
}

/// Opens a session with the app's API key; returns the answer and the token.
async fn open_session(app: &TestApp, body: Value) -> (Value, String) {
    let (status, session) = call(app, Method::POST, "/v1/portal-sessions", Some(body)).await;
    assert_eq!(status, 201, "{session}");
    let url = session["url"].as_str().unwrap();
    let (_, token) = url.split_once('#').expect("the token is in the fragment");
    (session.clone(), token.to_owned())
}

/// Milliseconds until a session's `expires_at`.
fn millis_left(session: &Value) -> i64 {
    let expires = qr3_domain::Timestamp::parse(session["expires_at"].as_str().unwrap()).unwrap();
    expires.unix_millis() - qr3_domain::Timestamp::now().unix_millis()
}

#[tokio::test]
async fn a_portal_session_manages_its_workspace_webhooks_and_nothing_else() {
    let app = spawn_app_with(|s| {
        s.api.admin_token = qr3_config::Redacted::new(vec![ADMIN_TOKEN.to_owned()]);
    })
    .await;
    let other = app.store.create_workspace("other").await.unwrap();
    let other_key = other.api_key.token().to_owned();
    let (_, theirs) = call_as(
        &app,
        &other_key,
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/theirs", "events": ["qr.created"]})),
    )
    .await;

    let response = reqwest::Client::new()
        .post(format!("{}/v1/portal-sessions", app.api))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "no body at all is fine");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let session: Value = response.json().await.unwrap();
    let id = session["id"].as_str().unwrap();
    assert!(id.starts_with("ps_"), "{session}");
    assert_eq!(session["read_only"], false);
    let url = session["url"].as_str().unwrap();
    let (page, token) = url.split_once('#').unwrap();
    assert_eq!(
        page,
        format!("{}/portal/", app.api),
        "an absolute URL of the portal"
    );
    assert!(token.starts_with("qr3p_"), "{token}");
    let lifetime = millis_left(&session);
    assert!(
        lifetime > 59 * 60_000 && lifetime <= 60 * 60_000,
        "an hour by default: {lifetime} ms"
    );

    // The workspace's webhooks, every operation on them.
    let (status, created) = call_as(
        &app,
        token,
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/mine", "events": ["qr.created"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let hook = created["id"].as_str().unwrap().to_owned();
    let (status, list) = call_as(&app, token, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [hook.as_str()], "its own webhooks only");
    for (method, path, body) in [
        (Method::GET, format!("/v1/webhooks/{hook}"), None),
        (
            Method::PATCH,
            format!("/v1/webhooks/{hook}"),
            Some(json!({"is_active": false})),
        ),
        (Method::GET, format!("/v1/webhooks/{hook}/secret"), None),
        (
            Method::POST,
            format!("/v1/webhooks/{hook}/rotate-secret"),
            None,
        ),
        (Method::GET, format!("/v1/webhooks/{hook}/deliveries"), None),
        (Method::GET, format!("/v1/webhooks/{hook}/stats"), None),
    ] {
        let (status, body) = call_as(&app, token, method.clone(), &path, body).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let (_, secret) = call_as(
        &app,
        token,
        Method::GET,
        &format!("/v1/webhooks/{hook}/secret"),
        None,
    )
    .await;
    assert!(secret["secret_whsec"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    assert!(
        secret["previous_secret_expires_at"].is_string(),
        "the rotation's grace period: {secret}"
    );

    // Another workspace's webhook is not found, like a missing one.
    let theirs = theirs["id"].as_str().unwrap();
    for path in [
        format!("/v1/webhooks/{theirs}"),
        format!("/v1/webhooks/{theirs}/deliveries"),
        format!("/v1/webhooks/{theirs}/secret"),
    ] {
        let (status, body) = call_as(&app, token, Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }

    // Nothing beyond webhooks: no sessions, no admin API.
    let (status, body) = call_as(&app, token, Method::POST, "/v1/portal-sessions", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = call_as(
        &app,
        token,
        Method::DELETE,
        &format!("/v1/portal-sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call_as(&app, token, Method::GET, "/admin/v1/workspaces", None).await;
    assert_eq!(status, 401);

    let (status, _) = call(&app, Method::DELETE, &format!("/v1/webhooks/{hook}"), None).await;
    assert_eq!(status, 204);

    // Revoked: refused at once; revoking again is fine; other workspaces cannot.
    let (status, _) = call_as(
        &app,
        &other_key,
        Method::DELETE,
        &format!("/v1/portal-sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "another workspace's session");
    for _ in 0..2 {
        let (status, _) = call(
            &app,
            Method::DELETE,
            &format!("/v1/portal-sessions/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 204);
    }
    let (status, body) = call_as(&app, token, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = call(&app, Method::DELETE, "/v1/portal-sessions/ps_nope", None).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn sessions_expire_and_their_lifetime_is_at_most_a_day() {
    let app = spawn_app_with(|_| {}).await;
    for bad in [
        json!({"expires_in": 0}),
        json!({"expires_in": 86_401}),
        json!({"expires_in": -1}),
        json!({"read_only": "yes"}),
        json!({"scope": "all"}),
    ] {
        let (status, body) =
            call(&app, Method::POST, "/v1/portal-sessions", Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (session, token) = open_session(&app, json!({"expires_in": 86_400})).await;
    assert!(millis_left(&session) > 23 * 3_600_000);
    let (status, _) = call_as(&app, &token, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 200);

    // A session of one second is refused once its second is up.
    let (_, short) = open_session(&app, json!({"expires_in": 1})).await;
    let (status, _) = call_as(&app, &short, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = call_as(&app, &short, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 401, "expired");

    // Its time is up.
    let client = app.store.pool().get().await.unwrap();
    client
        .execute(
            "UPDATE portal_sessions SET expires_at = now() - interval '1 millisecond'",
            &[],
        )
        .await
        .unwrap();
    let (status, body) = call_as(&app, &token, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 401, "{body}");
    // A token that was never minted, and a mangled one.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (status, _) = call_as(&app, &forged, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 401);
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_session_reads_everything_and_changes_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["qr.created"]).await;
    app.publish("qr.created", Some("evt_portal_ro"), json!({}))
        .await;
    let attempt = app.attempts(&hook, 1).await.remove(0);
    let (session, token) = open_session(&app, json!({"read_only": true})).await;
    assert_eq!(session["read_only"], true);
    let id = hook.id.as_str();

    for path in [
        "/v1/webhooks".to_owned(),
        format!("/v1/webhooks/{id}"),
        format!("/v1/webhooks/{id}/deliveries"),
        format!("/v1/webhooks/{id}/deliveries?status=success&event_type=qr.created"),
        format!("/v1/webhooks/{id}/deliveries/{}", attempt.id),
        format!("/v1/webhooks/{id}/stats"),
    ] {
        let (status, body) = call_as(&app, &token, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/webhooks".to_owned(),
            Some(json!({"url": "http://127.0.0.1:9/x", "events": ["*"]})),
        ),
        (
            Method::PATCH,
            format!("/v1/webhooks/{id}"),
            Some(json!({"is_active": false})),
        ),
        (Method::DELETE, format!("/v1/webhooks/{id}"), None),
        (Method::GET, format!("/v1/webhooks/{id}/secret"), None),
        (
            Method::POST,
            format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        ),
        (Method::POST, format!("/v1/webhooks/{id}/ping"), None),
        (
            Method::POST,
            format!("/v1/webhooks/{id}/deliveries/{}/retry", attempt.id),
            Some(json!({"force": true})),
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{id}/recover"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        ),
    ] {
        let (status, body) = call_as(&app, &token, method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read-only"));
    }
    let unchanged = app
        .store
        .get_webhook(&app.workspace, &hook.id)
        .await
        .unwrap()
        .expect("not deleted");
    assert!(unchanged.is_active);
    assert_eq!(unchanged.secret_hint, hook.secret_hint);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1, "nothing was sent");
    app.stop().await;
}

#[tokio::test]
async fn a_workspace_s_sessions_share_one_rate_limit_apart_from_its_keys() {
    let app = spawn_app_with(|s| {
        s.api.rate_limit_per_second = 1;
        s.api.rate_limit_burst = 3;
    })
    .await;
    let (_, first) = open_session(&app, json!({})).await;
    let (_, second) = open_session(&app, json!({})).await;
    let mut statuses = Vec::new();
    for token in [&first, &second, &first, &second] {
        statuses.push(
            call_as(&app, token, Method::GET, "/v1/webhooks", None)
                .await
                .0,
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "one bucket for both sessions"
    );
    let response = reqwest::Client::new()
        .get(format!("{}/v1/webhooks", app.api))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // The key spent one request opening each session; it has its own bucket.
    let (status, _) = call(&app, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 200);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("limit=\"portal_session\""),
        "counted under its own label"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_portal_page_is_served_with_a_strict_content_security_policy() {
    let app = spawn_app_with(|_| {}).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/portal/", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<script type=\"module\" src=\"app.js\">"),
        "{html}"
    );
    let script = client
        .get(format!("{}/portal/app.js", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let redirect = client
        .get(format!("{}/portal", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/portal/");
    let missing = client
        .get(format!("{}/portal/nope.js", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    app.stop().await;

    let app = spawn_app_with(|s| {
        s.portal.frame_ancestors = vec![
            "https://app.qr3.app".into(),
            "https://*.qr3.test:8443".into(),
        ];
        s.portal.public_url = "https://webhooks.qr3.test/portal/".into();
    })
    .await;
    let page = client
        .get(format!("{}/portal/", app.api))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.ends_with("frame-ancestors https://app.qr3.app https://*.qr3.test:8443"),
        "{csp}"
    );
    assert!(!page.headers().contains_key("x-frame-options"));
    let (session, _) = open_session(&app, json!({})).await;
    assert!(
        session["url"]
            .as_str()
            .unwrap()
            .starts_with("https://webhooks.qr3.test/portal/#qr3p_"),
        "{session}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_forced_retry_sends_a_delivered_event_again() {
    let app = spawn_app_with(|s| s.api.manual_requests_per_minute = 2).await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["qr.created"]).await;
    app.publish("qr.created", Some("evt_force_1"), json!({"n": 1}))
        .await;
    let delivered = app.attempts(&hook, 1).await.remove(0);
    assert_eq!(delivered.status, AttemptStatus::Success);
    let retry = format!("/v1/webhooks/{}/deliveries/{}/retry", hook.id, delivered.id);

    for body in [None, Some(json!({})), Some(json!({"force": false}))] {
        let (status, answer) = call(&app, Method::POST, &retry, body.clone()).await;
        assert_eq!(status, 409, "{body:?}: {answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("force"));
    }
    for bad in [json!({"force": "yes"}), json!({"forse": true})] {
        let (status, answer) = call(&app, Method::POST, &retry, Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}: {answer}");
    }

    let (status, answer) = call(&app, Method::POST, &retry, Some(json!({"force": true}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["event_id"], "evt_force_1");
    assert_eq!(answer["delivery"]["status"], "success");
    assert_eq!(answer["delivery"]["trigger"], "manual");
    assert_eq!(answer["delivery"]["attempt"], 2);
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body, got[0].body, "the same payload");
    assert_eq!(got[1].header("webhook-id"), Some("evt_force_1"));
    assert_eq!(
        got[1].header("x-qr3-signature").unwrap(),
        expected_signature(&got[1].body),
        "signed like any attempt"
    );
    assert_ne!(
        got[1].header("x-qr3-delivery-id"),
        got[0].header("x-qr3-delivery-id")
    );
    let log = app.attempts(&hook, 2).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].trigger, Trigger::Manual);

    // Rate limited like any retry (two per minute here; the 409s spent nothing).
    let (status, _) = call(&app, Method::POST, &retry, Some(json!({"force": true}))).await;
    assert_eq!(status, 200);
    let (status, answer) = call(&app, Method::POST, &retry, Some(json!({"force": true}))).await;
    assert_eq!(status, 429, "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn recover_pages_with_a_cursor_past_events_whose_manual_attempt_fails() {
    let app = spawn_app_with(|s| {
        s.api.recover_max_events = 2;
        s.delivery.disable_after_failures = 100;
        // Only first attempts within the test.
        s.delivery.retry_delays_ms = vec![60_000];
    })
    .await;
    let started = qr3_domain::Timestamp::now();
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let hook = app.webhook(&receiver.url(), &["qr.created"]).await;
    for id in ["evt_cur_1", "evt_cur_2", "evt_cur_3"] {
        app.publish("qr.created", Some(id), json!({})).await;
        app.attempts(&hook, 1).await;
    }
    let manual_failures = |n: usize| {
        let app = &app;
        let hook = &hook;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let count = app
                    .attempts(hook, 3 + n)
                    .await
                    .iter()
                    .filter(|a| a.trigger == Trigger::Manual)
                    .count();
                if count >= n || std::time::Instant::now() > deadline {
                    return count;
                }
            }
        }
    };
    assert_eq!(app.attempts(&hook, 3).await.len(), 3);
    let recover = format!("/v1/webhooks/{}/recover", hook.id);

    let (status, first) = call(
        &app,
        Method::POST,
        &recover,
        Some(json!({"since": started.to_string()})),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["event_ids"], json!(["evt_cur_1", "evt_cur_2"]));
    assert_eq!(first["has_more"], true);
    assert_eq!(manual_failures(2).await, 2, "the manual attempts failed");

    // Without the cursor the same failed events come back (as before cursors)...
    // ...with it, recover goes on past them to the end.
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, second) = call(
        &app,
        Method::POST,
        &recover,
        Some(json!({"cursor": cursor})),
    )
    .await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["event_ids"], json!(["evt_cur_3"]));
    assert_eq!(second["has_more"], false);
    assert_eq!(manual_failures(3).await, 3);
    let cursor = second["next_cursor"].as_str().unwrap();
    let (status, third) = call(
        &app,
        Method::POST,
        &recover,
        Some(json!({"since": started.to_string(), "cursor": cursor})),
    )
    .await;
    assert_eq!(status, 202, "{third}");
    assert_eq!(third["queued"], 0, "nothing again and again: {third}");
    assert_eq!(third["has_more"], false);
    assert_eq!(third["next_cursor"], second["next_cursor"]);

    // A later failure is picked up by the same cursor.
    app.publish("qr.created", Some("evt_cur_4"), json!({}))
        .await;
    app.attempts(&hook, 7).await;
    let (_, fourth) = call(
        &app,
        Method::POST,
        &recover,
        Some(json!({"cursor": cursor})),
    )
    .await;
    assert_eq!(fourth["event_ids"], json!(["evt_cur_4"]));

    let (status, body) = call(
        &app,
        Method::POST,
        &recover,
        Some(json!({"cursor": "bm9wZQ"})),
    )
    .await;
    assert_eq!((status, &body["error"]["field"]), (422, &json!("cursor")));
    let (status, body) = call(
        &app,
        Method::POST,
        &recover,
        Some(json!({"since": "2020-01-01T00:00:00Z", "cursor": cursor})),
    )
    .await;
    assert_eq!((status, &body["error"]["field"]), (422, &json!("since")));
    let (status, body) = call(&app, Method::POST, &recover, Some(json!({}))).await;
    assert_eq!((status, &body["error"]["field"]), (422, &json!("since")));
    app.stop().await;
}
