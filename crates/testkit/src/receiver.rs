//! A real HTTP receiver on 127.0.0.1 that records every request and answers as told.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Always this status.
    Status(u16),
    /// These statuses in turn, then the last one forever.
    Sequence(Vec<u16>),
    /// Never answer (past any timeout).
    Hang,
    /// 302 to another URL.
    Redirect,
    /// Wait this many milliseconds, then answer 200.
    Delay(u64),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the receiver got JSON")
    }
}

struct Shared {
    behaviour: Behaviour,
    answers: VecDeque<u16>,
    received: Vec<Received>,
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let answers = match &behaviour {
            Behaviour::Sequence(codes) => codes.iter().copied().collect(),
            _ => VecDeque::new(),
        };
        let shared = Arc::new(Mutex::new(Shared {
            behaviour,
            answers,
            received: Vec::new(),
        }));
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// The URL to register as a webhook.
    pub fn url(&self) -> String {
        format!("http://{}/webhooks/qr3", self.addr)
    }

    /// Changes how later requests are answered.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        let mut shared = self.shared.lock().expect("receiver lock");
        if let Behaviour::Sequence(codes) = &behaviour {
            shared.answers = codes.iter().copied().collect();
        }
        shared.behaviour = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().expect("receiver lock").received.clone()
    }

    /// Waits until at least `n` requests arrived (or `within` passes) and returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behaviour = {
        let mut s = shared.lock().expect("receiver lock");
        s.received.push(Received {
            headers,
            body,
            at: Instant::now(),
        });
        match &s.behaviour {
            Behaviour::Sequence(_) => {
                let code = if s.answers.len() > 1 {
                    s.answers.pop_front()
                } else {
                    s.answers.front().copied()
                };
                Behaviour::Status(code.unwrap_or(200))
            }
            other => other.clone(),
        }
    };
    match behaviour {
        Behaviour::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(serde_json::json!({ "received": true }))).into_response()
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Behaviour::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "received": true })),
            )
                .into_response()
        }
        Behaviour::Redirect => (
            StatusCode::FOUND,
            [("location", "http://127.0.0.1:1/elsewhere")],
        )
            .into_response(),
        Behaviour::Sequence(_) => unreachable!("resolved to a status above"),
    }
}
