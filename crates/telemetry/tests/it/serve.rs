//! The server loop on a real socket.

use std::time::Duration;

use qr3_telemetry::{ops_router, ready_check, serve, Metrics, Startup};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn serves_until_the_token_is_cancelled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let router = ops_router(
        Metrics::new(),
        Startup::new(),
        ready_check(|| async { Ok(()) }),
        shutdown.clone(),
    );
    let server = tokio::spawn(serve(listener, router, shutdown.clone()));

    // The client keeps its connection alive: shutdown must not wait for it.
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"status":"ok"}"#);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops within 5 s of cancellation")
        .unwrap()
        .unwrap();
    assert!(client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
}
