//! Secrets stay where they belong. A webhook secret is used to sign and is otherwise
//! only in Postgres (encrypted) and in the one response that sets it; an API key is
//! only sent by the client. Neither appears in a log line (debug level, all three roles
//! as real processes), an error response, `/metrics`, a broker message (job, ping or
//! retry) or the delivery log.

use std::time::{Duration, Instant};

use base64::Engine;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::AMQPValue;
use qr3_testkit::{Behaviour, Deployment, Process, Receiver, TestDb};
use serde_json::{json, Value};

const SECRET: &str = "leak-canary-secret-7f3a9c2e51";

/// One `qr3-webhooks <role>` child of the test's deployment.
struct Role(Process);

impl Role {
    fn start(role: &str, deployment: &Deployment) -> Self {
        Self(deployment.spawn(role, role).unwrap())
    }

    /// The address it serves HTTP on (the API, or a worker's ops endpoints), once
    /// `/readyz` there says it is ready: it listens before it has reached its
    /// dependencies, and its `/v1` answers 503 until then.
    async fn addr(&mut self) -> String {
        self.0.ready_within(Duration::from_secs(20)).await.unwrap();
        self.0.addr.to_string()
    }

    /// SIGTERM, wait for the exit, and return everything it logged.
    async fn stop(mut self) -> String {
        self.0.signal_stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.0.exited().is_none() {
            assert!(Instant::now() < deadline, "the process did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.0.log()
    }
}

/// Every spelling of a secret that would count as a leak.
struct Canaries(Vec<String>);

impl Canaries {
    fn new(api_key: &str) -> Self {
        // `qr3k_<ulid>_<secret>`: the secret is base64url, which may itself contain `_`.
        let key_secret = api_key.splitn(3, '_').nth(2).unwrap().to_owned();
        assert_eq!(key_secret.len(), 43, "{api_key}");
        Self(vec![
            SECRET.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(SECRET),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(SECRET),
            hex::encode(SECRET),
            key_secret,
        ])
    }

    fn assert_absent(&self, haystack: &str, place: &str) {
        for canary in &self.0 {
            assert!(
                !haystack.contains(canary.as_str()),
                "a secret ({canary}) appeared in {place}"
            );
        }
    }
}

async fn message_count(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// Waits for `n` messages on `queue`, reads them without acknowledging (they go back
/// when the channel closes) and returns each one's headers and body as text.
async fn peek(connection: &lapin::Connection, queue: &str, n: u32) -> Vec<String> {
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while message_count(&channel, queue).await < n {
        assert!(Instant::now() < deadline, "{queue} never held {n} messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    for _ in 0..n {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message");
        let mut text = String::new();
        for (name, value) in message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default()
            .inner()
        {
            // Strings as text: their Debug form would be a list of byte values.
            let value = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            text.push_str(&format!("{}: {value}\n", name.as_str()));
        }
        text.push_str(&String::from_utf8_lossy(&message.delivery.data));
        seen.push(text);
    }
    let _ = channel.close(200, "peeked".into()).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave_their_place() {
    let mut deployment = crate::helpers::deployment(TestDb::new().await.unwrap());
    deployment
        .set("QR3__API__PING_WAIT_MS", "50")
        // Attempt 1 fails; its retry waits long enough to be read off its queue.
        .set("QR3__DELIVERY__RETRY_DELAYS_MS", "60000")
        .set("QR3__DELIVERY__TIMEOUT_MS", "2000");
    let db = deployment.db();
    let settings = deployment.settings.clone();
    let topology = qr3_broker::Topology::from_settings(&settings);
    let workspace = db.store.create_workspace("w").await.unwrap();
    let api_key = workspace.api_key.token().to_owned();
    let canaries = Canaries::new(&api_key);
    let receiver = Receiver::start(Behaviour::Status(500)).await;

    let mut api = Role::start("api", &deployment);
    let mut ingest = Role::start("ingest", &deployment);
    let base = format!("http://{}", api.addr().await);
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    // The one response that shows the secret is the one that set it.
    let created: Value = call(
        reqwest::Method::POST,
        "/v1/webhooks",
        Some(json!({"url": receiver.url(), "events": ["*"], "secret": SECRET})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(created["secret"], SECRET);
    let id = created["id"].as_str().unwrap().to_owned();
    let hook = format!("/v1/webhooks/{id}");

    // Reads, lists and refused writes that carry the secret never echo it.
    let mut answers = Vec::new();
    for (method, path, body) in [
        (reqwest::Method::GET, hook.clone(), None),
        (reqwest::Method::GET, "/v1/webhooks".to_owned(), None),
        (
            reqwest::Method::PATCH,
            hook.clone(),
            Some(json!({"secret": SECRET, "url": "not a url"})),
        ),
        (
            reqwest::Method::PATCH,
            hook.clone(),
            Some(json!({"secret": format!("{SECRET}{}", "x".repeat(300))})),
        ),
        (
            reqwest::Method::PATCH,
            hook.clone(),
            Some(json!({"secret": format!("{SECRET}\u{7}")})),
        ),
        (
            reqwest::Method::POST,
            "/v1/webhooks".to_owned(),
            Some(json!({"url": "http://10.0.0.1/", "events": ["nope"], "secret": SECRET})),
        ),
        (
            reqwest::Method::POST,
            "/v1/webhooks".to_owned(),
            Some(json!({"url": receiver.url(), "events": ["*"], "secrett": SECRET})),
        ),
    ] {
        let response = call(method.clone(), &path, body).await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        canaries.assert_absent(&text, &format!("{method} {path} answering {status}"));
        answers.push(status.as_u16());
    }
    assert_eq!(answers, [200, 200, 422, 422, 422, 422, 422]);
    let malformed = client
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(&api_key)
        .header("content-type", "application/json")
        .body(format!(r#"{{"secret": "{SECRET}", "url": "#))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    canaries.assert_absent(&malformed.text().await.unwrap(), "a 400 answer");

    // A ping and an event become delivery jobs: ids and payload only.
    let ping = call(reqwest::Method::POST, &format!("{hook}/ping"), None)
        .await
        .unwrap();
    assert_eq!(ping.status(), 202, "no sender runs yet");
    qr3_webhooks::publish::publish(
        &settings,
        &qr3_webhooks::cli::PublishArgs {
            workspace: workspace.id.to_string(),
            event_type: "qr.created".into(),
            id: None,
            data: json!({"code_id": "qr_1"}).to_string(),
        },
    )
    .await
    .unwrap();
    let connection = qr3_broker::connect(settings.amqp.url.expose(), "test")
        .await
        .unwrap();
    for job in peek(&connection, &topology.deliveries_queue(), 2).await {
        assert!(job.contains(&id), "the job names its webhook: {job}");
        canaries.assert_absent(&job, "a delivery job");
    }

    // The sender signs with the secret; the failed attempt's retry carries no secret.
    let mut sender = Role::start("sender", &deployment);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "the ping and the event were attempted");
    for request in &got {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&request.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(request.header("x-qr3-signature"), Some(expected.as_str()));
    }
    let retry_queue = topology.retry_queue(60_000);
    for job in peek(&connection, &retry_queue, 1).await {
        canaries.assert_absent(&job, "a retry job");
    }

    // Metrics of every role, and the delivery log.
    for (role, addr) in [
        ("api", api.addr().await),
        ("ingest", ingest.addr().await),
        ("sender", sender.addr().await),
    ] {
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("qr3_"), "{role} serves its metrics");
        canaries.assert_absent(&metrics, &format!("the {role}'s /metrics"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let rows = db
            .query(
                "SELECT d::text || ' ' || p::text FROM delivery_log d
                 JOIN delivery_log_payloads p ON p.event = d.event",
            )
            .await
            .unwrap();
        if rows.len() >= 2 {
            break rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n");
        }
        assert!(Instant::now() < deadline, "the attempts were not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    canaries.assert_absent(&log, "the delivery log");
    let stored = db
        .query("SELECT w::text FROM webhooks w")
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    canaries.assert_absent(&stored, "the webhooks table");

    // Finally every line each role logged at debug level.
    for (role, process) in [("sender", sender), ("ingest", ingest), ("api", api)] {
        let logs = process.stop().await;
        assert!(logs.lines().count() > 3, "the {role} logged: {logs}");
        canaries.assert_absent(&logs, &format!("the {role}'s log"));
        assert!(
            !logs.contains("guest:guest"),
            "broker credentials appeared in the {role}'s log"
        );
    }
    // The deployment removes the queues the children declared (their 60 s retry
    // delay's among them) as it drops.
}
