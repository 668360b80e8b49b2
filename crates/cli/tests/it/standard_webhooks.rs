//! The Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
//! verified for real by the public `standardwebhooks` libraries, from npm and from PyPI,
//! with the `whsec_` secret the API shows; and secret rotation with overlap: during the
//! grace period a delivery verifies with the old and with the new secret, afterwards
//! only with the new one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qr3_domain::{signature::standard_webhooks, Timestamp, WebhookId, WebhookSecret};
use qr3_store::AttemptStatus;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, SECRET};

/// A receiver script verifying with a `standardwebhooks` library, and what it printed.
struct Verifier {
    name: &'static str,
    child: Child,
    port: u16,
    secrets: PathBuf,
    records: Arc<Mutex<Vec<Value>>>,
}

impl Verifier {
    /// Starts `script` with `program` and no secrets yet.
    fn start(program: &'static str, script: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/receivers");
        match program {
            "node" => assert!(
                dir.join("node_modules/standardwebhooks").exists(),
                "the npm package standardwebhooks is not installed: run `npm ci` in {} \
                 (cargo xtask test does it)",
                dir.display()
            ),
            _ => assert!(
                Command::new(program)
                    .args(["-c", "import standardwebhooks"])
                    .status()
                    .is_ok_and(|s| s.success()),
                "the PyPI package standardwebhooks is not installed: run \
                 `{program} -m pip install standardwebhooks` (cargo xtask test does it)"
            ),
        }
        let secrets =
            std::env::temp_dir().join(format!("{}.json", qr3_testkit::unique_name("secrets")));
        std::fs::write(&secrets, "{}").unwrap();
        let mut child = Command::new(program)
            .arg(dir.join(script))
            .arg(&secrets)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} printed {first:?}, not a port"));
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let record: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a receiver printed {line:?}: {e}"));
                sink.lock().unwrap().push(record);
            }
        });
        Self {
            name: program,
            child,
            port,
            secrets,
            records,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/qr3", self.port)
    }

    /// Replaces the named `whsec_` secrets the receiver verifies with (read per request;
    /// written aside and renamed, so a request never reads half a file).
    fn set_secrets(&self, secrets: &[(&str, &str)]) {
        let object: serde_json::Map<String, Value> = secrets
            .iter()
            .map(|(name, secret)| ((*name).to_owned(), Value::from(*secret)))
            .collect();
        let aside = self.secrets.with_extension("next");
        std::fs::write(&aside, Value::Object(object).to_string()).unwrap();
        std::fs::rename(&aside, &self.secrets).unwrap();
    }

    /// The requests received so far, once there are at least `n` (10 s at most).
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.records.lock().unwrap().clone();
            if records.len() >= n || Instant::now() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.secrets);
    }
}

/// `POST /v1/webhooks` without a secret: the API generates one and shows it once.
async fn create_webhook(app: &TestApp, url: &str, events: &[&str]) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks", app.api))
        .bearer_auth(&app.api_key)
        .json(&json!({"url": url, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn rotate_secret(app: &TestApp, webhook: &Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/webhooks/{}/rotate-secret",
            app.api,
            webhook["id"].as_str().unwrap()
        ))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.json().await.unwrap()
}

/// The delivery log of a webhook created through the API, once it has `n` entries.
async fn attempts_of(app: &TestApp, webhook: &Value, n: usize) -> Vec<qr3_store::AttemptRecord> {
    let id = WebhookId::parse(webhook["id"].as_str().unwrap()).unwrap();
    let stored = app
        .store
        .get_webhook(&app.workspace, &id)
        .await
        .unwrap()
        .expect("the webhook exists");
    app.attempts(&stored, n).await
}

fn text<'a>(record: &'a Value, field: &str) -> &'a str {
    record[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {record}"))
}

fn verified(record: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = record["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort_unstable();
    names
}

/// `sha256=` + hex HMAC of `body` under `secret`, computed here independently.
fn qr3_signature(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks headers of one request, checked against the X-QR3 ones.
fn assert_standard_headers(record: &Value, signatures: usize) {
    let payload: Value = serde_json::from_str(text(record, "body")).unwrap();
    assert_eq!(
        text(record, "webhook_id"),
        payload["id"],
        "webhook-id is the event id"
    );
    assert_eq!(text(record, "webhook_id"), text(record, "x_qr3_event_id"));
    assert_eq!(
        text(record, "webhook_timestamp"),
        text(record, "x_qr3_timestamp")
    );
    let sent: i64 = text(record, "webhook_timestamp").parse().unwrap();
    let now = Timestamp::now().unix_seconds();
    assert!(
        (now - 30..=now).contains(&sent),
        "webhook-timestamp is the attempt's time: {sent}, now {now}"
    );
    let entries: Vec<&str> = text(record, "webhook_signature").split(' ').collect();
    assert_eq!(entries.len(), signatures, "{record}");
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{record}");
}

#[tokio::test]
async fn the_standardwebhooks_libraries_verify_every_delivery_with_the_whsec_secret() {
    let app = spawn_app().await;
    let node = Verifier::start("node", "standard_webhooks_receiver.js");
    let python = Verifier::start("python3", "standard_webhooks_receiver.py");
    let hooks = [
        (&node, create_webhook(&app, &node.url(), &["*"]).await),
        (&python, create_webhook(&app, &python.url(), &["*"]).await),
    ];
    for (verifier, hook) in &hooks {
        verifier.set_secrets(&[("current", text(hook, "secret_whsec"))]);
    }
    // Control: webhooks to the same receivers, with secrets the receivers do not hold.
    let mut strangers = Vec::new();
    for (verifier, _) in &hooks {
        strangers.push(create_webhook(&app, &verifier.url(), &["qr.flagged"]).await);
    }

    let payloads = [
        json!({"code_id": "qr_abc123", "short_code": "r7f3Kx", "scan_id": "scn_xyz", "country": "AT", "device_type": "mobile", "os": "iOS"}),
        json!({"city": "Zürich", "name": "東京タワー", "emoji": "😀🎉", "rtl": "שלום", "combining": "e\u{301}"}),
        json!({"quote": "\"q\"", "backslash": "a\\b", "slash": "a/b</script>", "newline": "a\nb\r\tc", "control": "\u{1}\u{1f}\u{7f}", "separators": "\u{2028}\u{2029}"}),
        json!({"float": 1.5, "e21": 1e21, "neg": -0.0, "beyond_2_53": 9007199254740993u64, "10": "ten", "2": "two"}),
    ];
    for data in &payloads {
        app.publish("qr.scanned", None, data.clone()).await;
    }
    // A ping goes through the same sender, with the same headers.
    for (_, hook) in &hooks {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/webhooks/{}/ping", app.api, text(hook, "id")))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    let expected = payloads.len() + 1;
    for (verifier, hook) in &hooks {
        for attempt in attempts_of(&app, hook, expected).await {
            assert_eq!(
                (attempt.status, attempt.status_code),
                (AttemptStatus::Success, Some(200)),
                "{} rejected {}: {attempt:?}",
                verifier.name,
                attempt.event_id
            );
        }
        let records = verifier.wait_for(expected).await;
        assert_eq!(records.len(), expected, "{}", verifier.name);
        for record in &records {
            assert_eq!(verified(record), ["current"], "{record}");
            assert_standard_headers(record, 1);
            assert_eq!(
                text(record, "x_qr3_signature"),
                qr3_signature(text(hook, "secret"), text(record, "body")),
                "X-QR3-Signature is unchanged, keyed with the plain secret"
            );
        }
    }

    // Both libraries reject a delivery signed with a secret they do not hold.
    app.publish("qr.flagged", None, json!({})).await;
    for ((verifier, _), stranger) in hooks.iter().zip(&strangers) {
        let log = attempts_of(&app, stranger, 1).await;
        assert!(!log.is_empty(), "{}", verifier.name);
        assert_eq!(log[0].status_code, Some(401), "{}", verifier.name);
    }
    app.stop().await;
}

#[tokio::test]
async fn webhook_id_is_stable_across_retries_and_the_timestamp_is_per_attempt() {
    // Retries a second apart, so each attempt's Unix second is a later one.
    let app = spawn_app_with(|s| s.delivery.retry_delays_ms = vec![1000, 1000]).await;
    let receiver = Receiver::start(Behaviour::Sequence(vec![500, 500, 200])).await;
    app.webhook(&receiver.url(), &["qr.scanned"]).await;
    let event = app.publish("qr.scanned", None, json!({"n": 1})).await;

    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "three attempts");
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let mut previous = None;
    for request in &got {
        assert_eq!(request.header("webhook-id"), Some(event.as_str()));
        let timestamp = request.header("webhook-timestamp").unwrap();
        assert_eq!(Some(timestamp), request.header("x-qr3-timestamp"));
        let timestamp: i64 = timestamp.parse().unwrap();
        assert!(previous < Some(timestamp), "a new timestamp per attempt");
        previous = Some(timestamp);
        assert!(standard_webhooks::verify(
            &secret,
            &event,
            timestamp,
            &request.body,
            request.header("webhook-signature").unwrap()
        ));
    }
    app.stop().await;
}

#[tokio::test]
async fn after_a_rotation_both_secrets_verify_until_the_grace_period_ends() {
    // Long enough for a delivery to land inside it on a busy machine, short for a test.
    const GRACE_MS: u64 = 2000;
    let app = spawn_app_with(|s| s.secrets.rotation_grace_ms = GRACE_MS).await;
    let node = Verifier::start("node", "standard_webhooks_receiver.js");
    let python = Verifier::start("python3", "standard_webhooks_receiver.py");
    let hooks = [
        (
            &node,
            create_webhook(&app, &node.url(), &["qr.scanned"]).await,
        ),
        (
            &python,
            create_webhook(&app, &python.url(), &["qr.scanned"]).await,
        ),
    ];
    for (verifier, hook) in &hooks {
        verifier.set_secrets(&[("old", text(hook, "secret_whsec"))]);
    }
    app.publish("qr.scanned", None, json!({"phase": "before"}))
        .await;
    for (verifier, hook) in &hooks {
        let records = verifier.wait_for(1).await;
        assert_eq!(verified(&records[0]), ["old"], "{}", verifier.name);
        assert_standard_headers(&records[0], 1);
        assert_eq!(
            text(&records[0], "x_qr3_signature"),
            qr3_signature(text(hook, "secret"), text(&records[0], "body"))
        );
    }

    // Rotate; the receivers learn the new secret but keep the old one for now.
    let mut rotated = Vec::new();
    let mut grace_ends = Timestamp::now();
    for (verifier, hook) in &hooks {
        let new = rotate_secret(&app, hook).await;
        assert_ne!(new["secret"], hook["secret"]);
        grace_ends =
            grace_ends.max(Timestamp::parse(text(&new, "previous_secret_expires_at")).unwrap());
        verifier.set_secrets(&[
            ("old", text(hook, "secret_whsec")),
            ("new", text(&new, "secret_whsec")),
        ]);
        rotated.push(new);
    }
    // Past the senders' cache of the webhook (`delivery.webhook_cache_ms`).
    tokio::time::sleep(Duration::from_millis(
        3 * app.settings.delivery.webhook_cache_ms,
    ))
    .await;
    app.publish("qr.scanned", None, json!({"phase": "during"}))
        .await;
    for ((verifier, _), new) in hooks.iter().zip(&rotated) {
        let records = verifier.wait_for(2).await;
        let record = &records[1];
        assert!(
            Timestamp::now() < grace_ends,
            "the delivery came within the grace period"
        );
        assert_eq!(
            verified(record),
            ["new", "old"],
            "{} verifies with either secret",
            verifier.name
        );
        assert_standard_headers(record, 2);
        assert_eq!(
            text(record, "x_qr3_signature"),
            qr3_signature(text(new, "secret"), text(record, "body")),
            "X-QR3-Signature uses the newest secret"
        );
    }

    // After the grace period only the new secret signs.
    let wait = grace_ends.unix_millis() - Timestamp::now().unix_millis();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(wait).unwrap_or(0) + 3 * app.settings.delivery.webhook_cache_ms,
    ))
    .await;
    app.publish("qr.scanned", None, json!({"phase": "after"}))
        .await;
    for ((verifier, hook), new) in hooks.iter().zip(&rotated) {
        let records = verifier.wait_for(3).await;
        let record = &records[2];
        assert_eq!(verified(record), ["new"], "{}", verifier.name);
        assert_standard_headers(record, 1);
        assert_eq!(
            text(record, "x_qr3_signature"),
            qr3_signature(text(new, "secret"), text(record, "body"))
        );
        for attempt in attempts_of(&app, hook, 3).await {
            assert_eq!(attempt.status_code, Some(200), "{attempt:?}");
        }
    }
    app.stop().await;
}
