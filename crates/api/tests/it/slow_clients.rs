//! Slow and numerous clients: connections that stall mid-header are closed once the
//! header read timeout is up while normal requests are served meanwhile, a body sent
//! too slowly gets 408, and at the connection cap new connections wait for a free slot.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, TestApp};

/// What a stalled client sends: a request line and one header, never the blank line
/// that ends the headers.
const HALF_A_HEADER: &[u8] = b"GET /v1/webhooks HTTP/1.1\r\nHost: localhost\r\n";

fn addr(app: &TestApp) -> SocketAddr {
    app.base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .expect("the test app listens on an address")
}

/// Opens `n` connections that each send [`HALF_A_HEADER`] and stall; returns each with
/// the moment it was connected.
async fn stall(addr: SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    let mut stalled = Vec::with_capacity(n);
    // In rounds, so the listen backlog never overflows.
    for _ in 0..n.div_ceil(100) {
        let round = (n - stalled.len()).min(100);
        let opened = join_all((0..round).map(|_| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let connected = Instant::now();
            stream.write_all(HALF_A_HEADER).await.expect("write");
            (stream, connected)
        }))
        .await;
        stalled.extend(opened);
    }
    stalled
}

/// Waits until the server closes `stream` (EOF or reset); returns when that was.
async fn closed_at(mut stream: TcpStream, give_up: Duration) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(give_up, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_thousand_stalled_connections_are_closed_by_the_header_timeout_while_a_normal_request_is_served(
) {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    const SLACK: Duration = Duration::from_millis(2500);
    let app = spawn_app_with(|s| {
        s.api.header_read_timeout_ms = TIMEOUT.as_millis() as u64;
        s.api.max_connections = 2000;
    })
    .await;
    let stalled = stall(addr(&app), 1000).await;
    let last_connected = stalled.iter().map(|(_, at)| *at).max().unwrap();

    // A normal request while all of them are open.
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(app.url("/v1/webhooks"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    let latency = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    eprintln!("a normal request with 1000 stalled connections open: {latency:?}");
    assert!(
        Instant::now() < last_connected + TIMEOUT,
        "the normal request took {latency:?}: not served while the stalled ones were open"
    );

    let closes = join_all(stalled.into_iter().map(|(stream, connected)| async move {
        (connected, closed_at(stream, TIMEOUT + SLACK).await)
    }))
    .await;
    let mut longest = Duration::ZERO;
    for (connected, closed) in closes {
        let closed = closed.expect("a stalled connection outlived the header timeout");
        let held = closed - connected;
        // Not before the timeout (so it is the timeout that closed it), and soon after.
        assert!(
            held >= TIMEOUT - Duration::from_millis(50),
            "closed after {held:?}"
        );
        assert!(held <= TIMEOUT + SLACK, "closed after {held:?}");
        longest = longest.max(held);
    }
    eprintln!("1000 stalled connections closed, the last after {longest:?} (timeout {TIMEOUT:?})");
    // The server serves on after the storm.
    assert_eq!(app.get("/v1/webhooks").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_by_the_header_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let app = spawn_app_with(|s| s.api.header_read_timeout_ms = TIMEOUT.as_millis() as u64).await;
    let stream = TcpStream::connect(addr(&app)).await.unwrap();
    let connected = Instant::now();
    let closed = closed_at(stream, Duration::from_secs(5))
        .await
        .expect("a silent connection stayed open");
    assert!(closed - connected >= TIMEOUT - Duration::from_millis(50));
}

/// Reads one HTTP/1.1 response (with `Content-Length`): its status line and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read the response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("Content-Length");
        if body.len() >= length {
            let status = head.lines().next().unwrap().to_owned();
            return (status, body[..length].to_owned());
        }
    }
}

#[tokio::test]
async fn a_body_sent_too_slowly_gets_408_with_the_json_error() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let app = spawn_app_with(|s| {
        s.api.ping_wait_ms = 100;
        s.api.request_timeout_ms = TIMEOUT.as_millis() as u64;
    })
    .await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    let request = format!(
        "POST /v1/webhooks HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"url\":",
        app.api_key
    );
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("no answer to a stalled body");
    let took = started.elapsed();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(took >= TIMEOUT - Duration::from_millis(50), "{took:?}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("400 ms"));
}

/// Log lines written while the guard lives, on this thread (a `#[tokio::test]` runs its
/// spawned tasks on the test's one thread).
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        let log = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || log.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_for_a_free_slot() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let log = CapturedLog::default();
    let _capturing = log.start();
    let app = spawn_app_with(|s| {
        s.api.header_read_timeout_ms = TIMEOUT.as_millis() as u64;
        s.api.max_connections = 4;
    })
    .await;
    let stalled = stall(addr(&app), 4).await;
    let first_connected = stalled.iter().map(|(_, at)| *at).min().unwrap();

    // Connected by the kernel, but not accepted until a stalled one is closed.
    let response = reqwest::Client::new()
        .get(app.url("/v1/webhooks"))
        .bearer_auth(&app.api_key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let waited = first_connected.elapsed();
    assert!(
        waited >= TIMEOUT - Duration::from_millis(50),
        "served after {waited:?}, before any slot was free"
    );
    let text = log.text();
    let warning = text
        .lines()
        .find(|l| l.contains("API connection limit reached"))
        .unwrap_or_else(|| panic!("no warning at the cap:\n{text}"));
    assert!(
        warning.contains("WARN") && warning.contains("max_connections=4"),
        "{warning}"
    );
    drop(stalled);
}
