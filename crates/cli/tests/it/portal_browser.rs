//! The customer portal in a real browser (Debian's headless Chromium through
//! chromedriver): a session opens the portal, sees its webhooks and the delivery of a
//! published event, opens it, retries it, creates, pings, disables and deletes a
//! webhook; a read-only session sees no control that
//! changes anything; another workspace's session sees none of the first's data.
//!
//! With `QR3_PORTAL_SCREENSHOTS=<dir>` (relative to the workspace root) the test also
//! saves the screenshots of the main views that docs/portal.md shows:
//! `QR3_PORTAL_SCREENSHOTS=docs/portal cargo test -p qr3-webhooks --test it portal_browser`.

use std::path::PathBuf;
use std::time::Duration;

use qr3_testkit::{Behaviour, Receiver};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp};
use crate::webdriver::{Browser, ENTER};

async fn portal_url(app: &TestApp, api_key: &str, read_only: bool) -> String {
    let response = reqwest::Client::new()
        .request(Method::POST, format!("{}/v1/portal-sessions", app.api))
        .bearer_auth(api_key)
        .json(&json!({"read_only": read_only}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["url"].as_str().unwrap().to_owned()
}

fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QR3_PORTAL_SCREENSHOTS")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Some(root.join(dir))
}

#[tokio::test]
async fn portal_browser_a_session_sees_its_webhooks_and_retries_a_delivery() {
    let shots = screenshot_dir();
    let shots = shots.as_deref();
    let app = spawn_app_with(|s| {
        s.delivery.disable_after_failures = 100;
        // One automatic attempt within the test: the retry is the portal's.
        s.delivery.retry_delays_ms = vec![60_000];
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let hook = app
        .webhook(&receiver.url(), &["qr.created", "qr.scanned"])
        .await;
    app.publish(
        "qr.created",
        Some("evt_portal_browser"),
        json!({"qr_id": "qr_1"}),
    )
    .await;
    app.publish(
        "qr.scanned",
        Some("evt_portal_scan"),
        json!({"qr_id": "qr_1"}),
    )
    .await;
    app.attempts(&hook, 2).await;

    // A second workspace with a webhook of its own.
    let other = app.store.create_workspace("other").await.unwrap();
    let other_key = other.api_key.token().to_owned();
    let (status, theirs) = {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/webhooks", app.api))
            .bearer_auth(&other_key)
            .json(&json!({"url": "http://127.0.0.1:9/other-workspace", "events": ["*"]}))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 201, "{theirs}");

    let browser = Browser::start().await;
    let url = portal_url(&app, &app.api_key, false).await;
    browser.goto(&url).await;
    browser.wait_for("#webhooks", &receiver.url()).await;
    let location = browser.script("return location.href;", json!([])).await;
    assert!(
        !location.as_str().unwrap().contains("qr3p_"),
        "the token leaves the address bar: {location}"
    );
    assert!(!browser.visible("#mode").await, "read-write");
    browser.screenshot(shots, "webhooks.png").await;

    browser.click(".open-webhook").await;
    browser.wait_for("#deliveries", "evt_portal_browser").await;
    browser.wait_for("#deliveries", "evt_portal_scan").await;
    browser.wait_for("#webhook figure", "Success rate").await;
    browser.screenshot(shots, "webhook.png").await;
    browser.scroll_to("#deliveries").await;
    browser.screenshot(shots, "deliveries.png").await;

    // Filters: only the qr.scanned attempt.
    browser
        .script(
            "const select = document.querySelectorAll('.filters select')[1];
             select.value = 'qr.scanned';",
            json!([]),
        )
        .await;
    browser.click(".filters button[type=submit]").await;
    browser
        .wait_without("#deliveries", "evt_portal_browser")
        .await;
    browser.wait_for("#deliveries", "evt_portal_scan").await;
    browser
        .script(
            "document.querySelectorAll('.filters select')[1].value = '';",
            json!([]),
        )
        .await;
    browser.click(".filters button[type=submit]").await;
    browser.wait_for("#deliveries", "evt_portal_browser").await;

    // Opened with the keyboard: Enter on the row's button.
    receiver.set_behaviour(Behaviour::Status(200));
    browser
        .keys(
            "#deliveries tr:has(td.mono) button.open-delivery[aria-label*='evt_portal_browser']",
            ENTER,
        )
        .await;
    browser
        .wait_for("#request-body", "evt_portal_browser")
        .await;
    browser.wait_for("#delivery", "x-qr3-signature").await;
    browser.screenshot(shots, "delivery.png").await;

    browser.click("#retry").await;
    browser.wait_for("#retry-outcome", "success").await;
    browser.scroll_to("#retry-outcome").await;
    browser.screenshot(shots, "retried.png").await;
    let got = receiver.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(
        got.last().unwrap().header("webhook-id"),
        Some("evt_portal_browser"),
        "the retry reached the receiver"
    );

    // The secret, revealed with its Standard Webhooks form.
    browser.click("#back").await;
    browser.wait_for("#reveal", "Reveal secret").await;
    browser.click("#reveal").await;
    browser.wait_for("#secret", "whsec_").await;
    browser.scroll_to("#secret").await;
    browser.screenshot(shots, "secret.png").await;

    // A new webhook through the form, pinged, disabled and deleted.
    let second = Receiver::start(Behaviour::Status(200)).await;
    browser.click("#nav-webhooks").await;
    browser.click("#new-webhook").await;
    browser.wait_for("form", "Endpoint URL").await;
    browser.keys("input[name=url]", &second.url()).await;
    browser
        .click("input[type=checkbox][value='qr.created']")
        .await;
    browser.screenshot(shots, "create.png").await;
    browser.click("form button[type=submit]").await;
    browser.wait_for("#secret", "whsec_").await;
    browser.click("#open-created").await;
    browser.wait_for("#webhook", &second.url()).await;
    browser.click("#ping").await;
    browser.wait_for("#ping-outcome", "delivered").await;
    assert_eq!(
        second.wait_for(1, Duration::from_secs(5)).await[0].header("x-qr3-event-type"),
        Some("webhook.ping")
    );
    browser.click("#toggle").await;
    browser.wait_for("#webhook .summary", "Disabled").await;
    browser.click("#delete").await;
    browser.click("#confirm-delete").await;
    browser.wait_for("#webhooks", &receiver.url()).await;
    browser.wait_without("#webhooks", &second.url()).await;

    // A read-only session: everything to see, nothing to change.
    let read_only = portal_url(&app, &app.api_key, true).await;
    browser.goto("about:blank").await;
    browser.goto(&read_only).await;
    browser.wait_for("#webhooks", &receiver.url()).await;
    assert!(browser.visible("#mode").await, "says it is read-only");
    assert!(!browser.visible("#new-webhook").await);
    browser.click(".open-webhook").await;
    browser.wait_for("#deliveries", "evt_portal_browser").await;
    for control in [
        "#toggle",
        "#delete",
        "#ping",
        "#reveal",
        "#rotate",
        "#recover-outcome",
    ] {
        assert!(!browser.visible(control).await, "{control} is not offered");
    }
    browser.screenshot(shots, "read-only.png").await;
    browser.click("button.open-delivery").await;
    browser.wait_for("#request-body", "evt_portal").await;
    assert!(!browser.visible("#retry").await, "no retry");

    // The other workspace's session: its own webhook, none of the first's data.
    let theirs_url = portal_url(&app, &other_key, false).await;
    browser.goto("about:blank").await;
    browser.goto(&theirs_url).await;
    browser.wait_for("#webhooks", "other-workspace").await;
    let page = browser.text().await;
    assert!(!page.contains(&receiver.url()), "{page}");
    let (_, their_token) = theirs_url.split_once('#').unwrap();
    let status = browser
        .script(
            "const xhr = new XMLHttpRequest();
             xhr.open('GET', arguments[0], false);
             xhr.setRequestHeader('Authorization', 'Bearer ' + arguments[1]);
             xhr.send();
             return xhr.status;",
            json!([format!("/v1/webhooks/{}/deliveries", hook.id), their_token]),
        )
        .await;
    assert_eq!(
        status,
        json!(404),
        "the first workspace's webhook is not found"
    );
    browser.stop().await;
    app.stop().await;
}
