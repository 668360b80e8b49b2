//! The outbound HTTP client: hyper with rustls (HTTP/1.1 and HTTP/2 by ALPN), pooled
//! keep-alive connections, no redirects followed, a timeout per attempt, and a resolver
//! that refuses internal addresses after DNS resolution (so DNS rebinding cannot reach
//! them) unless `delivery.allow_private_targets` is set.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use qr3_domain::target::is_forbidden_ip;

/// How much of a response body is read (then discarded) so the connection can be reused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Resolves with the system resolver, then drops forbidden addresses.
#[derive(Clone)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_forbidden_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "host resolves to no address webhooks may target",
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// What one POST produced.
#[derive(Debug, Clone)]
pub struct HttpOutcome {
    /// The response status, when a response arrived.
    pub status: Option<u16>,
    pub elapsed: Duration,
    /// Why no acceptable response arrived (network error, timeout), for the log.
    pub error: Option<String>,
}

impl HttpOutcome {
    /// 2xx is success; everything else (including 3xx, never followed) is a failure.
    pub fn is_success(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        Ok(Self { client, timeout })
    }

    /// POSTs `body` to `url` with `headers`. Never fails: every problem is an outcome.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> HttpOutcome {
        let started = Instant::now();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("qr3-webhooks/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = match builder.body(Full::new(body)) {
            Ok(request) => request,
            Err(e) => {
                return HttpOutcome {
                    status: None,
                    elapsed: started.elapsed(),
                    error: Some(format!("invalid request: {e}")),
                }
            }
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => {
                return HttpOutcome {
                    status: None,
                    elapsed: started.elapsed(),
                    error: Some(format!("timed out after {} ms", self.timeout.as_millis())),
                }
            }
            Ok(Err(e)) => {
                return HttpOutcome {
                    status: None,
                    elapsed: started.elapsed(),
                    error: Some(describe(&e)),
                }
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        // Drain a bounded amount of the body so the connection returns to the pool; a
        // huge or slow body just closes the connection.
        let drain = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect();
        let _ = tokio::time::timeout_at(deadline, drain).await;
        HttpOutcome {
            status: Some(status),
            elapsed,
            error: None,
        }
    }
}

fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}
