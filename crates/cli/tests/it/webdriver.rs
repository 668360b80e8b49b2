//! Just enough of the W3C WebDriver protocol to drive Debian's headless Chromium
//! through its `chromedriver`: start both, open pages, find, click and type into
//! elements, run a script, take a screenshot. Nothing downloads a browser: the test
//! fails with a clear message when `chromium` or `chromedriver` is not installed
//! (`.ci/install` and `cargo xtask test` install them).
//!
//! Written over `reqwest` (already a test dependency) rather than with a WebDriver
//! crate: the handful of commands below is all the portal test needs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The WebDriver code of the Enter key.
pub const ENTER: &str = "\u{E007}";

/// A chromedriver process and one headless Chromium session in it.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
    /// Whether the WebDriver session is still open (for `Drop` after a panic).
    open: bool,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session.
    pub async fn start() -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver \
                 (`.ci/install`, or `cargo xtask test` does it)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = std::env::temp_dir().join(qr3_testkit::unique_name("chromium"));
        let mut browser = Self {
            driver,
            base,
            http,
            profile,
            open: false,
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    "--no-first-run", "--disable-extensions", "--lang=en-GB",
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            },
        }}});
        let session = browser.command("POST", "/session", capabilities).await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser.open = true;
        browser
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().await.expect("chromedriver answers");
        let value: Value = response.json().await.expect("a WebDriver answer");
        value["value"].clone()
    }

    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let value = self.command(method, path, body).await;
        if let Some(error) = value.get("error") {
            panic!("WebDriver {method} {path}: {error}: {}", value["message"]);
        }
        value
    }

    pub async fn goto(&self, url: &str) {
        self.ok("POST", "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The text of the page's body.
    pub async fn text(&self) -> String {
        self.script("return document.body.innerText;", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until an element matching `css` shows `text` (or exists, for `""`).
    pub async fn wait_for(&self, css: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .script(
                    "return Array.from(document.querySelectorAll(arguments[0]))
                        .some(e => e.offsetParent !== null && e.textContent.includes(arguments[1]));",
                    json!([css, text]),
                )
                .await;
            if found == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no visible {css} showing {text:?}; the page shows:\n{}",
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no element matching `css` shows `text`.
    pub async fn wait_without(&self, css: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .script(
                    "return Array.from(document.querySelectorAll(arguments[0]))
                        .some(e => e.textContent.includes(arguments[1]));",
                    json!([css, text]),
                )
                .await;
            if found == json!(false) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} still shows {text:?}; the page shows:\n{}",
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a visible element matches `css`.
    pub async fn visible(&self, css: &str) -> bool {
        self.script(
            "return Array.from(document.querySelectorAll(arguments[0]))
                .some(e => e.offsetParent !== null);",
            json!([css]),
        )
        .await
            == json!(true)
    }

    /// The first element matching `css`, once one is visible (views load
    /// asynchronously).
    async fn element(&self, css: &str) -> String {
        self.wait_for(css, "").await;
        let found = self
            .ok(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks the first element matching `css`, as a mouse would.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.ok("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Focuses the first element matching `css` and types `text` (e.g. [`ENTER`]).
    pub async fn keys(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.ok(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Scrolls the first element matching `css` to the middle of the viewport.
    pub async fn scroll_to(&self, css: &str) {
        self.script(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center'});",
            json!([css]),
        )
        .await;
    }

    /// Saves a PNG of the viewport to `dir/name` when `dir` is given.
    pub async fn screenshot(&self, dir: Option<&Path>, name: &str) {
        let Some(dir) = dir else { return };
        let png = self.ok("GET", "/screenshot", json!(null)).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("valid base64");
        std::fs::create_dir_all(dir).expect("screenshot directory");
        std::fs::write(dir.join(name), bytes).expect("screenshot written");
    }

    /// Ends the session and chromedriver.
    pub async fn stop(mut self) {
        let _ = self.command("DELETE", "", json!(null)).await;
        self.open = false;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a panic: close the session (so chromedriver ends Chromium) from a thread
        // with a runtime of its own, as `Drop` cannot await; then end chromedriver.
        if self.open {
            let session = self.base.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async { reqwest::Client::new().delete(session).send().await.ok() })
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
