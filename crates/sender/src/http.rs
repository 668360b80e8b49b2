//! The outbound HTTP client: hyper with rustls (HTTP/1.1 and HTTP/2 by ALPN), pooled
//! keep-alive connections, no redirects followed, a timeout per attempt, and an address
//! guard at connection time, unless `delivery.allow_private_targets` is set: the
//! resolver drops internal addresses after DNS resolution (so DNS rebinding cannot
//! reach them), and the connector refuses an internal IP literal, which never goes
//! through the resolver.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use qr3_domain::target::is_forbidden_ip;

/// How much of a response body is read so the connection can be reused; the first
/// `keep_body` bytes of it are kept for the log, the rest is discarded.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The `User-Agent` of every delivery.
pub const USER_AGENT_VALUE: &str = concat!("qr3-webhooks/", env!("CARGO_PKG_VERSION"));

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The TCP connector with the address rule applied to IP literals as well: hyper's
/// `HttpConnector` connects to `http://10.0.0.1/` directly, without asking the resolver.
#[derive(Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    allow_private: bool,
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = <HttpConnector<GuardedResolver> as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if !self.allow_private {
            if let Some(ip) = literal_ip(&uri).filter(|ip| is_forbidden_ip(*ip)) {
                let refused = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{ip} is an address webhooks may not target"),
                );
                return Box::pin(std::future::ready(Err(refused.into())));
            }
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The host of `uri` when it is an IP address (IPv6 without its brackets).
fn literal_ip(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// What one POST produced.
#[derive(Debug, Clone)]
pub struct HttpOutcome {
    /// The response status, when a response arrived.
    pub status: Option<u16>,
    pub elapsed: Duration,
    /// Why no acceptable response arrived (network error, timeout), for the log.
    pub error: Option<String>,
    /// The first bytes of the response body, up to the client's `keep_body`.
    pub body: Option<Bytes>,
}

impl HttpOutcome {
    /// 2xx is success; everything else (including 3xx, never followed) is a failure.
    pub fn is_success(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    timeout: Duration,
    keep_body: usize,
}

impl HttpClient {
    /// A client whose attempts end after `timeout` and keep the first `keep_body` bytes
    /// of each response body (0: none), keeping up to `idle_per_host` idle connections
    /// to each host for the next attempts.
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        keep_body: usize,
        idle_per_host: usize,
    ) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let guarded = GuardedConnector {
            inner: http,
            allow_private,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(guarded);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle_per_host)
            .build(https);
        Ok(Self {
            client,
            timeout,
            keep_body,
        })
    }

    /// POSTs `body` to `url` with `headers`. Never fails: every problem is an outcome.
    pub async fn post(
        &self,
        url: &str,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> HttpOutcome {
        let started = Instant::now();
        let request = match request(url, headers, body) {
            Ok(request) => request,
            Err(e) => {
                return HttpOutcome {
                    status: None,
                    elapsed: started.elapsed(),
                    error: Some(format!("invalid request: {e}")),
                    body: None,
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
                    body: None,
                }
            }
            Ok(Err(e)) => {
                return HttpOutcome {
                    status: None,
                    elapsed: started.elapsed(),
                    error: Some(describe(&e)),
                    body: None,
                }
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        // Drain a bounded amount of the body so the connection returns to the pool,
        // keeping its start for the log; a huge or slow body just closes the connection.
        let mut kept = bytes::BytesMut::new();
        let keep = self.keep_body;
        let drain = async {
            let mut body = Limited::new(response.into_body(), MAX_RESPONSE_BODY);
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    let room = keep.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..room.min(data.len())]);
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, drain).await;
        HttpOutcome {
            status: Some(status),
            elapsed,
            error: None,
            body: (keep > 0).then(|| kept.freeze()),
        }
    }
}

/// The POST of `body` to `url`: its header map sized once for every header, rather than
/// grown header by header as `Request::builder` does.
fn request(
    url: &str,
    headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let uri = Uri::try_from(url)?;
    let headers = headers.into_iter();
    let mut map = HeaderMap::with_capacity(headers.size_hint().0 + 2);
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    map.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    for (name, value) in headers {
        map.append(name, value);
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    Ok(request)
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

#[cfg(test)]
mod tests {
    //! The connection-time guard, through the real system resolver and real loopback
    //! receivers: nothing is sent to an internal address unless private targets are
    //! allowed, whatever the URL's spelling.

    use std::str::FromStr;

    use qr3_testkit::{Behaviour, Receiver};
    use tower::ServiceExt;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(2000);

    async fn resolve(allow_private: bool, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let name = Name::from_str(host).expect("a valid host name");
        GuardedResolver { allow_private }
            .oneshot(name)
            .await
            .map(Iterator::collect)
    }

    async fn post(allow_private: bool, url: &str) -> HttpOutcome {
        HttpClient::new(TIMEOUT, allow_private, 16, 4)
            .expect("client")
            .post(url, [], Bytes::from_static(b"{}"))
            .await
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses_after_resolution() {
        // Names and numeric spellings the system resolver turns into 127.0.0.1.
        for host in [
            "localhost",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
        ] {
            let refused = resolve(false, host).await.expect_err(host);
            assert_eq!(
                refused.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{host}"
            );
            let allowed = resolve(true, host).await.expect(host);
            assert!(allowed.iter().any(|a| a.ip().is_loopback()), "{host}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connection_time() {
        let receiver = Receiver::start(Behaviour::Status(200)).await;
        let port = receiver.addr.port();
        // What a row written before the rule, or a DNS answer changed after
        // registration (rebinding), would give the sender.
        for host in ["localhost", "2130706433", "0x7f000001"] {
            let url = format!("http://{host}:{port}/webhooks/qr3");
            let outcome = post(false, &url).await;
            assert_eq!(outcome.status, None, "{url}");
            let error = outcome.error.unwrap_or_default();
            assert!(
                error.contains("host resolves to no address webhooks may target"),
                "{url}: {error}"
            );
        }
        assert!(
            receiver.received().is_empty(),
            "nothing reached the receiver"
        );

        let outcome = post(true, &format!("http://localhost:{port}/webhooks/qr3")).await;
        assert_eq!(outcome.status, Some(200), "{:?}", outcome.error);
        assert_eq!(receiver.received().len(), 1);
    }

    #[tokio::test]
    async fn an_internal_ip_literal_is_refused_without_connecting() {
        let receiver = Receiver::start(Behaviour::Status(200)).await;
        let port = receiver.addr.port();
        for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"] {
            let url = format!("http://{host}:{port}/webhooks/qr3");
            let outcome = post(false, &url).await;
            assert_eq!(outcome.status, None, "{url}");
            let error = outcome.error.unwrap_or_default();
            assert!(
                error.contains("is an address webhooks may not target"),
                "{url}: {error}"
            );
        }
        // https takes the same path through the connector.
        let outcome = post(false, &format!("https://127.0.0.1:{port}/")).await;
        assert!(outcome
            .error
            .unwrap_or_default()
            .contains("is an address webhooks may not target"),);
        assert!(
            receiver.received().is_empty(),
            "nothing reached the receiver"
        );

        let outcome = post(true, &format!("http://127.0.0.1:{port}/webhooks/qr3")).await;
        assert_eq!(outcome.status, Some(200), "{:?}", outcome.error);
        assert_eq!(receiver.received().len(), 1);
    }

    #[tokio::test]
    async fn an_endless_response_body_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A receiver that answers 200 and then streams a body that never ends.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let started = Instant::now();
        let outcome = post(true, &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(outcome.status, Some(200));
        assert!(
            started.elapsed() < TIMEOUT,
            "the attempt ends once {MAX_RESPONSE_BODY} bytes are read, not at the timeout"
        );
    }

    #[test]
    fn literal_ips_are_read_from_the_uri() {
        let ip = |s: &str| literal_ip(&s.parse::<Uri>().unwrap());
        assert_eq!(
            ip("http://10.1.2.3:80/x"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(ip("http://[fe80::1]/"), Some("fe80::1".parse().unwrap()));
        assert_eq!(ip("https://example.com/"), None);
        assert_eq!(ip("http://2130706433/"), None, "left to the resolver");
    }
}
