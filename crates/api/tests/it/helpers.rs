//! `spawn_app()`: the API on port 0 over a fresh database, with a workspace and its key.

use qr3_api::{router, serve, ApiState, ServeLimits};
use qr3_config::Settings;
use qr3_domain::WorkspaceId;
use qr3_testkit::TestDb;
use reqwest::{header, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// A running API. Dropping it stops the server and drops the database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub workspace: WorkspaceId,
    pub api_key: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    _shutdown: oneshot::Sender<()>,
}

/// The API with the test settings: `http://` and private targets (127.0.0.1) allowed.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The API with the test settings changed by `configure` (e.g. `require_https`).
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_wrapped(configure, |router| router).await
}

/// Like [`spawn_app_with`], serving `wrap(router(state))`: the binary's additions (ops
/// endpoints, metrics middleware) go in `wrap`.
pub async fn spawn_app_wrapped(
    configure: impl FnOnce(&mut Settings),
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> TestApp {
    let db = TestDb::new().await.expect("test database");
    let mut settings = qr3_testkit::test_settings(&db.url);
    configure(&mut settings);
    let state = ApiState::from_settings(db.store.clone(), &settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let limits = ServeLimits::from_settings(&settings);
    tokio::spawn(serve(listener, wrap(router(state)), limits, async move {
        // Completes when the sender is sent on or dropped with the TestApp.
        let _ = stopped.await;
    }));
    let created = db.store.create_workspace("test").await.expect("workspace");
    TestApp {
        base,
        workspace: created.id,
        api_key: created.api_key.token().to_owned(),
        client: reqwest::Client::new(),
        db,
        _shutdown: shutdown,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request authenticated with this app's workspace key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_as(&self.api_key, method, path)
    }

    pub fn request_as(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.unwrap()
    }

    /// Creates a webhook that must succeed; returns the 201 body.
    pub async fn create_webhook(&self, body: &Value) -> Value {
        let response = self.post_json("/v1/webhooks", body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Creates a webhook to `https://example.com/<n>` for every event.
    pub async fn create_simple_webhook(&self, n: usize) -> Value {
        self.create_webhook(&serde_json::json!({
            "url": format!("https://example.com/{n}"),
            "events": ["*"],
        }))
        .await
    }

    /// Another workspace on the same server, and its key.
    pub async fn other_workspace(&self) -> (WorkspaceId, String) {
        let created = self.db.store.create_workspace("other").await.unwrap();
        (created.id, created.api_key.token().to_owned())
    }
}

/// A JSON response: its status, with `Content-Type: application/json`, and its body.
pub async fn json_body(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?}"
    );
    response.json().await.unwrap()
}

/// Asserts an error response: the status, JSON, and exactly
/// `{"error": {"code", "message"[, "field"]}}`. Returns the message.
pub async fn assert_error(
    response: Response,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) -> String {
    let body = json_body(response, status).await;
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_eq!(error["code"], code, "{body}");
    let message = error["message"].as_str().expect("message is a string");
    assert!(!message.is_empty());
    match field {
        Some(field) => {
            assert_eq!(
                error.get("field").and_then(Value::as_str),
                Some(field),
                "{body}"
            );
            assert_eq!(error.len(), 3, "{body}");
        }
        None => assert_eq!(error.len(), 2, "no other keys: {body}"),
    }
    message.to_owned()
}

/// Whether `s` reads like `2026-03-15T10:00:00.000Z`.
pub fn is_timestamp(s: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == pattern.len()
        && s.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
        && chrono_free_valid(s)
}

/// Month 1–12, day 1–31, hour < 24, minute and second < 60.
fn chrono_free_valid(s: &str) -> bool {
    let n = |range: std::ops::Range<usize>| s[range].parse::<u32>().unwrap();
    (1..=12).contains(&n(5..7))
        && (1..=31).contains(&n(8..10))
        && n(11..13) < 24
        && n(14..16) < 60
        && n(17..19) < 60
}
