//! `spawn_app()`: a fresh database and broker prefix (a testkit [`Deployment`]), all
//! roles started in-process.

use std::time::Duration;

use qr3_broker::Topology;
use qr3_config::Settings;
use qr3_domain::{Subscriptions, TargetPolicy, WebhookSecret, WebhookUrl, WorkspaceId};
use qr3_store::{AttemptRecord, NewWebhook, Store, Webhook};
use qr3_testkit::{Deployment, Logs, TestDb};
use qr3_webhooks::{app, cli::PublishArgs, Roles, Running};

pub const SECRET: &str = "my-secret-key-min-16-chars";

pub struct TestApp {
    pub settings: Settings,
    pub store: Store,
    pub workspace: WorkspaceId,
    pub api_key: String,
    pub api: String,
    pub running: Option<Running>,
    /// The database and broker prefix, removed when the test ends (after `running`,
    /// declared before it, has stopped).
    _deployment: Deployment,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_roles_with(Roles::ALL, configure).await
}

/// `roles` only (the API among them); others can be started later with `app::start`.
pub async fn spawn_roles_with(roles: Roles, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::new().await.expect("test database");
    let created = db.store.create_workspace("test").await.expect("workspace");
    spawn_on(db, created, roles, configure).await
}

/// `roles` on `db`, prepared (and migrated) by the test, for `created`'s workspace.
pub async fn spawn_on(
    db: TestDb,
    created: qr3_store::CreatedWorkspace,
    roles: Roles,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut deployment = Deployment::around(db);
    configure(&mut deployment.settings);
    let settings = deployment.settings.clone();
    let running = app::start(settings.clone(), roles)
        .await
        .expect("app starts");
    TestApp {
        api: format!("http://{}", running.api_addr.expect("api runs")),
        store: deployment.store().clone(),
        workspace: created.id,
        api_key: created.api_key.token().to_owned(),
        settings,
        running: Some(running),
        _deployment: deployment,
    }
}

impl TestApp {
    pub async fn webhook(&self, url: &str, events: &[&str]) -> Webhook {
        self.webhook_with_secret(url, events, SECRET).await
    }

    pub async fn webhook_with_secret(&self, url: &str, events: &[&str], secret: &str) -> Webhook {
        self.store
            .insert_webhook(
                &self.workspace,
                NewWebhook {
                    url: WebhookUrl::parse(
                        url,
                        TargetPolicy {
                            require_https: false,
                            allow_private: true,
                        },
                    )
                    .unwrap(),
                    events: Subscriptions::parse(events).unwrap(),
                    secret: WebhookSecret::parse(secret).unwrap(),
                    max_per_second: None,
                },
            )
            .await
            .expect("insert webhook")
    }

    /// Publishes like `qr3-webhooks publish` and returns the event id.
    pub async fn publish(
        &self,
        event_type: &str,
        id: Option<&str>,
        data: serde_json::Value,
    ) -> String {
        let args = PublishArgs {
            workspace: self.workspace.to_string(),
            event_type: event_type.to_owned(),
            id: id.map(str::to_owned),
            data: data.to_string(),
        };
        qr3_webhooks::publish::publish(&self.settings, &args)
            .await
            .expect("publish")
    }

    /// Publishes `ids.len()` events of one type in one confirmed burst.
    pub async fn publish_burst(&self, event_type: &str, ids: &[String]) {
        let messages: Vec<qr3_broker::Outgoing> = ids
            .iter()
            .map(|id| qr3_broker::Outgoing {
                exchange: self.settings.amqp.events_exchange.clone(),
                routing_key: event_type.to_owned(),
                properties: lapin::BasicProperties::default().with_delivery_mode(2),
                body: serde_json::json!({"id": id, "type": event_type, "workspace_id": self.workspace, "data": {}})
                    .to_string()
                    .into_bytes(),
            })
            .collect();
        let publisher =
            qr3_broker::SharedPublisher::new(self.settings.amqp.url.expose().clone(), "test");
        publisher
            .publish_all(&messages)
            .await
            .expect("burst publish");
    }

    /// Publishes raw bytes to the events exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let message = qr3_broker::Outgoing {
            exchange: self.settings.amqp.events_exchange.clone(),
            routing_key: routing_key.to_owned(),
            properties: lapin::BasicProperties::default().with_delivery_mode(2),
            body: body.to_vec(),
        };
        let publisher =
            qr3_broker::SharedPublisher::new(self.settings.amqp.url.expose().clone(), "test");
        publisher
            .publish_all(&[message])
            .await
            .expect("raw publish");
    }

    /// All attempts of `webhook`, oldest first, once at least `n` are logged.
    pub async fn attempts(&self, webhook: &Webhook, n: usize) -> Vec<AttemptRecord> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut rows = self
                .store
                .list_attempts(&self.workspace, &webhook.id, &Default::default(), None, 100)
                .await
                .expect("list attempts");
            if rows.len() >= n || std::time::Instant::now() > deadline {
                rows.reverse();
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn topology(&self) -> Topology {
        Topology::from_settings(&self.settings)
    }

    /// Stops the roles cleanly; the deployment goes as the app drops (as it does when
    /// a test panics before `stop()`).
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean shutdown");
        }
    }
}

/// Deletes the queues and exchanges of `settings` (for a test that made its settings
/// without a [`Deployment`]).
pub async fn delete_broker_objects(settings: &Settings) {
    qr3_testkit::deployment::remove_topology(settings).await;
}

/// A deployment around `db` whose processes run this crate's binary, their output in a
/// temporary directory ([`qr3_testkit::Process::log`] reads it), with JSON debug logs.
pub fn deployment(db: TestDb) -> Deployment {
    let mut deployment = Deployment::around(db)
        .with_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_qr3-webhooks")),
            Logs::Temporary,
        )
        .expect("the test binary exists");
    deployment
        .set("QR3__LOG__FORMAT", "json")
        .set("QR3__LOG__LEVEL", "debug");
    deployment
}

/// `sha256=` + hex HMAC, computed here independently of the domain crate.
pub fn expected_signature(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl TestApp {
    /// The process's /metrics text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The environment that points a child `qr3-webhooks` process at `settings`' database
/// and broker (development key, loopback targets, JSON debug logs), plus `extra`: for a
/// test that runs the binary on settings of its own rather than a [`deployment`].
pub fn child_env(settings: &Settings, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    // A key in `extra` that is also in the base comes later and wins.
    let mut env = qr3_testkit::deployment::namespace_env(settings);
    env.extend(
        [
            ("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true"),
            ("QR3__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
            ("QR3__METRICS__LISTEN", "127.0.0.1:0"),
            ("QR3__LOG__FORMAT", "json"),
            ("QR3__LOG__LEVEL", "debug"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Calls the API with the app's key; the status and the JSON answer (`null` if none).
pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", app.api))
        .bearer_auth(&app.api_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A workspace in `db` with one webhook on `qr.created` (secret [`SECRET`]) to a new
/// receiver answering 200, written through the store as any release would: for tests
/// of a database an older release left.
pub async fn webhook_to_a_receiver(
    db: &TestDb,
) -> (qr3_store::CreatedWorkspace, qr3_testkit::Receiver, Webhook) {
    let created = db.store.create_workspace("test").await.unwrap();
    let receiver = qr3_testkit::Receiver::start(qr3_testkit::Behaviour::Status(200)).await;
    let hook = db
        .store
        .insert_webhook(
            &created.id,
            NewWebhook {
                url: WebhookUrl::parse(
                    &receiver.url(),
                    TargetPolicy {
                        require_https: false,
                        allow_private: true,
                    },
                )
                .unwrap(),
                events: Subscriptions::parse(&["qr.created"]).unwrap(),
                secret: WebhookSecret::parse(SECRET).unwrap(),
                max_per_second: None,
            },
        )
        .await
        .unwrap();
    (created, receiver, hook)
}
