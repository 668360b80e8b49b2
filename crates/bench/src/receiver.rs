//! A fast local receiver: keep-alive HTTP/1.1, records arrival time and event id of every
//! POST, verifies the signature of a sample, and can be told to hang on one path or to
//! behave per path (`Behaviour`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use crate::behaviour::Behaviour;

#[derive(Default)]
pub struct Log {
    /// (webhook index, event id, arrival)
    pub arrivals: Mutex<Vec<(usize, String, Instant)>>,
    pub bad_signatures: AtomicU64,
    pub checked_signatures: AtomicU64,
    /// Requests to this webhook index never get an answer.
    pub hang: Mutex<Option<usize>>,
    /// Every answer waits this long first (milliseconds).
    pub delay_ms: AtomicU64,
    /// Per webhook index, what to do instead of `delay_ms` (arrivals are still recorded,
    /// except for `Behaviour::Hang`, like `hang`).
    pub behaviours: Mutex<HashMap<usize, Behaviour>>,
}

impl Log {
    pub fn reset(&self) {
        self.arrivals.lock().expect("lock").clear();
        self.bad_signatures.store(0, Ordering::Relaxed);
        self.checked_signatures.store(0, Ordering::Relaxed);
        *self.hang.lock().expect("lock") = None;
        self.delay_ms.store(0, Ordering::Relaxed);
        self.behaviours.lock().expect("lock").clear();
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().expect("lock").len()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Log>,
}

impl Receiver {
    pub async fn start(secret: &str) -> anyhow::Result<Self> {
        let log = Arc::new(Log::default());
        let state = (log.clone(), Arc::new(secret.to_owned()));
        let app = Router::new()
            .route("/w/{index}", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, log })
    }

    pub fn url(&self, index: usize) -> String {
        format!("http://{}/w/{index}", self.addr)
    }
}

type AppState = (Arc<Log>, Arc<String>);

async fn receive(
    State((log, secret)): State<AppState>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    let behaviour = log.behaviours.lock().expect("lock").get(&index).copied();
    let hang = *log.hang.lock().expect("lock") == Some(index);
    if hang || behaviour == Some(Behaviour::Hang) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let id = headers
        .get("x-qr3-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let n = {
        let mut arrivals = log.arrivals.lock().expect("lock");
        arrivals.push((index, id, now));
        arrivals.len()
    };
    if n % 97 == 1 {
        let signature = headers
            .get("x-qr3-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let secret =
            qr3_domain::WebhookSecret::parse(secret.as_str()).expect("bench secret is valid");
        log.checked_signatures.fetch_add(1, Ordering::Relaxed);
        if !qr3_domain::signature::verify(&secret, &body, signature) {
            log.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(behaviour) = behaviour {
        return behaviour.apply().await;
    }
    let delay = log.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::OK
}
