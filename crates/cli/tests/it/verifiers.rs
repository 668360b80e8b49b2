//! The documentation's own verification code (SPEC Part A), run for real: an Express
//! receiver that checks `JSON.stringify(req.body)` and a Python receiver that checks the
//! raw body. Both answer 401 to a bad signature, so every logged success is a verified
//! delivery.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use qr3_store::AttemptStatus;
use serde_json::json;

use crate::helpers::{spawn_app, SECRET};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a receiver script and returns it with the port it printed.
fn start(program: &str, script: &str) -> (Process, u16) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/receivers");
    assert!(
        program != "node" || dir.join("node_modules/express").exists(),
        "express is not installed: run `npm ci` in {} (cargo xtask test does it)",
        dir.display()
    );
    let mut child = Command::new(program)
        .arg(dir.join(script))
        .arg(SECRET)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{script} printed {line:?}, not a port"));
    (Process(child), port)
}

#[tokio::test]
async fn the_documented_express_and_python_verifiers_accept_every_delivery() {
    let app = spawn_app().await;
    let (_node, node_port) = start("node", "express_receiver.js");
    let (_python, python_port) = start("python3", "python_receiver.py");
    let express = app
        .webhook(
            &format!("http://127.0.0.1:{node_port}/webhooks/qr3"),
            &["*"],
        )
        .await;
    let python = app
        .webhook(
            &format!("http://127.0.0.1:{python_port}/webhooks/qr3"),
            &["*"],
        )
        .await;
    // Control: the same receivers reject a delivery signed with another secret.
    let forged = app
        .webhook_with_secret(
            &format!("http://127.0.0.1:{node_port}/webhooks/qr3"),
            &["qr.created"],
            "another-secret-0123456789",
        )
        .await;

    let payloads = [
        json!({"code_id": "qr_abc123", "short_code": "r7f3Kx", "scan_id": "scn_xyz", "country": "AT", "device_type": "mobile", "os": "iOS"}),
        json!({"city": "Zürich", "name": "東京タワー", "emoji": "😀🎉", "rtl": "שלום", "combining": "e\u{301}"}),
        json!({"quote": "\"q\"", "backslash": "a\\b", "slash": "a/b</script>", "newline": "a\nb\r\tc", "control": "\u{1}\u{1f}\u{7f}", "separators": "\u{2028}\u{2029}"}),
        json!({"int": 1, "float": 1.5, "trailing": 2.50, "tiny": 5e-324, "huge": 1.7976931348623157e308, "e21": 1e21, "neg": -0.0, "big": 123456789012345678901u128 as f64, "beyond_2_53": 9007199254740993u64}),
        json!({"b": 1, "10": "ten", "2": "two", "01": "zero-one", "a": {"1": true, "z": null, "0": []}}),
        json!({"nested": [[[{"deep": [1, [2, [3, {"x": "y"}]]]}]]], "empty": {}, "list": [], "nothing": null, "yes": true}),
    ];
    for data in &payloads {
        app.publish("qr.scanned", None, data.clone()).await;
    }
    // Numbers beyond what serde_json's Value shows: publish raw text too.
    let raw = format!(
        r#"{{"type":"qr.updated","workspace_id":"{}","data":{{"n":[1.0,1E2,0.000001,1e-7,-12.50e1,100000000000000000000000,0.1e1]}}}}"#,
        app.workspace
    );
    app.publish_raw("qr.updated", raw.as_bytes()).await;

    let expected = payloads.len() + 1;
    for hook in [&express, &python] {
        let log = app.attempts(hook, expected).await;
        assert_eq!(log.len(), expected, "every event delivered once");
        for attempt in &log {
            assert_eq!(
                (attempt.status, attempt.status_code),
                (AttemptStatus::Success, Some(200)),
                "{} rejected a delivery of {}: {attempt:?}",
                if hook.id == express.id {
                    "Express"
                } else {
                    "Python"
                },
                attempt.event_id
            );
        }
    }
    app.publish("qr.created", None, json!({})).await;
    let control = app.attempts(&forged, 1).await;
    assert_eq!(
        control[0].status_code,
        Some(401),
        "the Express verifier rejects a wrong signature"
    );
    app.stop().await;
}

/// The documentation's Express receiver keeps `express.json()`'s default 100 kB limit,
/// and accepts the largest payload qr3 sends by default: a payload is at most
/// `ingest.max_event_bytes` (64 KiB), however much longer than its message it is.
#[tokio::test]
async fn the_documented_express_receiver_accepts_the_largest_default_payload() {
    let app = spawn_app().await;
    let max = app.settings.ingest.max_event_bytes;
    assert!(
        max < 100 * 1024,
        "the default limit is below express.json()'s"
    );
    let (_node, node_port) = start("node", "express_receiver.js");
    let hook = app
        .webhook(
            &format!("http://127.0.0.1:{node_port}/webhooks/qr3"),
            &["qr.scanned"],
        )
        .await;
    // Numbers JavaScript writes out in full (1e20: 21 digits) make the payload longer
    // than its message; a blob pads it to exactly `payload_len` bytes.
    let message = |id: &str, payload_len: usize| {
        let build = |blob: usize| {
            format!(
                r#"{{"id":"{id}","type":"qr.scanned","workspace_id":"{}","created":"2026-03-15T10:00:00.000Z","data":{{"n":[{}],"blob":"{}"}}}}"#,
                app.workspace,
                vec!["1e20"; 20].join(","),
                "y".repeat(blob)
            )
        };
        let bare = qr3_broker::IncomingEvent::parse(build(0).as_bytes(), usize::MAX)
            .unwrap()
            .payload()
            .len();
        let body = build(payload_len - bare);
        let payload = qr3_broker::IncomingEvent::parse(body.as_bytes(), usize::MAX)
            .unwrap()
            .payload()
            .to_owned();
        assert_eq!(payload.len(), payload_len);
        assert!(body.len() < max, "the message itself is under the limit");
        body
    };
    app.publish_raw("qr.scanned", message("evt_over", max + 1).as_bytes())
        .await;
    app.publish_raw("qr.scanned", message("evt_largest", max).as_bytes())
        .await;
    let log = app.attempts(&hook, 1).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event_id.as_str(), "evt_largest");
    assert_eq!(
        (log[0].status, log[0].status_code),
        (AttemptStatus::Success, Some(200)),
        "express.json() accepted a {max}-byte payload"
    );
    // The one whose payload would be over the limit was dead-lettered, not sent.
    let metrics = &app.running.as_ref().unwrap().metrics;
    assert_eq!(
        metrics
            .events_rejected_total
            .with_label_values(&["too_large"])
            .get(),
        1
    );
    app.stop().await;
}
