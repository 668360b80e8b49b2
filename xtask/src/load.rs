//! `cargo xtask load`: does the platform hold under load?
//!
//! 1. The API (release build, one process, in a throwaway deployment) under `wrk`: `GET /v1/webhooks`
//!    (a full page of 20) and then `POST /v1/webhooks` (a create, with a generated
//!    secret), each for `--seconds` with `--connections` connections. Prints requests/s,
//!    latency p50/p90/p99/max and error counts; fails on any socket error, any answer
//!    that is not 2xx, or a p99 above `--p99-ms`. wrk's one key would hit the per-key
//!    rate limit at once, so the run raises `api.rate_limit_*` (and says so); the
//!    other API limits keep their defaults.
//! 2. The sender with a large backlog: `--backlog` delivery jobs are put in the delivery
//!    queue of a running sender (`delivery.concurrency` 32) whose receiver answers after
//!    50 ms. Its resident memory is sampled before and while it works through them; it
//!    fails when memory grows by more than `MAX_RSS_GROWTH_MIB`, which a sender taking
//!    more jobs than its prefetch window would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use qr3_testkit::{amqp_url, Deployment, Logs};

/// How much the sender's resident memory may grow while a backlog waits in the broker.
const MAX_RSS_GROWTH_MIB: f64 = 64.0;
/// The sender's concurrency (and prefetch) during the backlog phase.
const SENDER_CONCURRENCY: &str = "32";
/// How long the backlog phase's receiver takes to answer.
const RECEIVER_DELAY: Duration = Duration::from_millis(50);
/// `api.rate_limit_per_second` and `api.rate_limit_burst` for the wrk runs.
const LOAD_RATE_LIMIT: &str = "1000000";

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub seconds: u32,
    pub connections: u32,
    pub p99_ms: f64,
    pub backlog: usize,
}

pub fn load(root: &Path, options: LoadOptions) -> anyhow::Result<()> {
    ensure_wrk()?;
    crate::cargo(
        root,
        &["build", "--release", "--quiet", "-p", "qr3-webhooks"],
    )?;
    let mut deployment = Deployment::new("load")?.with_binary(
        &root.join("target/release/qr3-webhooks"),
        Logs::In(root.join("target/load")),
    )?;
    for (key, value) in [
        // Only so the backlog phase's receiver may live on 127.0.0.1.
        ("QR3__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
        // wrk sends thousands of requests a second with one key: far above the
        // per-key limit (50/s by default), which would answer 429. Raised so the
        // run measures the API, not the limiter; the other limits (timeouts,
        // connection cap) stay at their defaults.
        ("QR3__API__RATE_LIMIT_PER_SECOND", LOAD_RATE_LIMIT),
        ("QR3__API__RATE_LIMIT_BURST", LOAD_RATE_LIMIT),
        ("QR3__LOG__LEVEL", "warn"),
    ] {
        deployment.set(key, value);
    }
    deployment.migrate()?;
    let api = deployment.start_api()?;
    let api_addr = api.addr.to_string();
    let (workspace, api_key) = deployment.create_workspace("load")?;
    let auth = format!("Bearer {api_key}");
    let create = |url: &str| -> anyhow::Result<String> {
        let body = serde_json::json!({"url": url, "events": ["*"]}).to_string();
        match http_request(
            &api_addr,
            "POST",
            "/v1/webhooks",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        ) {
            Some((201, body)) => {
                let created: Value = serde_json::from_str(&body)?;
                Ok(created["id"].as_str().context("no id")?.to_owned())
            }
            other => bail!("creating a webhook answered {other:?}"),
        }
    };
    for n in 0..100 {
        create(&format!("https://example.com/{n}"))?;
    }

    let script = root.join("xtask/load/webhooks.lua");
    let base = api.url();
    let mut failures = Vec::new();
    println!(
        "(per-key rate limit raised to {LOAD_RATE_LIMIT}/s for wrk's single key; \
         timeouts and connection cap at their defaults)"
    );
    for (name, method) in [("GET /v1/webhooks", "GET"), ("POST /v1/webhooks", "POST")] {
        let result = wrk(&script, &base, &api_key, method, options)?;
        println!("{}", result.describe(name, options));
        failures.extend(result.failures(name, options));
    }

    let (receiver_url, answered) = start_receiver()?;
    let mut hooks = Vec::new();
    for _ in 0..4 {
        hooks.push(create(&receiver_url)?);
    }
    let rss = sender_backlog(&deployment, &workspace, &hooks, options.backlog, &answered)?;
    println!("{}", rss.describe(options.backlog));
    if rss.growth_mib() > MAX_RSS_GROWTH_MIB {
        failures.push(format!(
            "the sender's memory grew by {:.1} MiB with {} jobs waiting (limit {MAX_RSS_GROWTH_MIB} MiB)",
            rss.growth_mib(),
            options.backlog
        ));
    }
    if !failures.is_empty() {
        bail!("load did not hold:\n  {}", failures.join("\n  "));
    }
    println!("==> load held");
    Ok(())
}

/// What one wrk run measured.
struct WrkResult {
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    socket_errors: u64,
    status_errors: u64,
    timeouts: u64,
}

impl WrkResult {
    fn describe(&self, name: &str, options: LoadOptions) -> String {
        format!(
            "{name}: {:.0} requests/s over {:.1} s with {} connections; latency p50 {:.2} ms, \
             p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms; errors: {} socket, {} non-2xx, {} timeouts",
            self.requests as f64 / self.seconds,
            self.seconds,
            options.connections,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.socket_errors,
            self.status_errors,
            self.timeouts,
        )
    }

    fn failures(&self, name: &str, options: LoadOptions) -> Vec<String> {
        let mut failures = Vec::new();
        if self.socket_errors + self.status_errors + self.timeouts > 0 {
            failures.push(format!("{name}: requests failed"));
        }
        if self.p99_ms > options.p99_ms {
            failures.push(format!(
                "{name}: p99 {:.2} ms is above the {} ms target",
                self.p99_ms, options.p99_ms
            ));
        }
        if self.requests == 0 {
            failures.push(format!("{name}: no request completed"));
        }
        failures
    }
}

fn wrk(
    script: &Path,
    base: &str,
    api_key: &str,
    method: &str,
    options: LoadOptions,
) -> anyhow::Result<WrkResult> {
    let out = Command::new("wrk")
        .args([
            "--threads",
            "2",
            "--connections",
            &options.connections.to_string(),
            "--duration",
            &format!("{}s", options.seconds),
            "--timeout",
            "2s",
            "--script",
        ])
        .arg(script)
        .arg(format!("{base}/v1/webhooks"))
        .env("QR3_LOAD_API_KEY", api_key)
        .env("QR3_LOAD_METHOD", method)
        .output()
        .context("cannot run wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("QR3_LOAD "))
        .with_context(|| format!("wrk printed no summary:\n{stdout}"))?;
    let v: Value = serde_json::from_str(line).context("wrk's summary is not JSON")?;
    let n = |key: &str| v[key].as_u64().unwrap_or_default();
    let ms = |key: &str| n(key) as f64 / 1000.0;
    Ok(WrkResult {
        requests: n("requests"),
        seconds: n("duration_us") as f64 / 1e6,
        p50_ms: ms("p50_us"),
        p90_ms: ms("p90_us"),
        p99_ms: ms("p99_us"),
        max_ms: ms("max_us"),
        socket_errors: n("connect_errors") + n("read_errors") + n("write_errors"),
        status_errors: n("status_errors"),
        timeouts: n("timeouts"),
    })
}

/// Installs wrk with apt when it is missing.
fn ensure_wrk() -> anyhow::Result<()> {
    let present = Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty());
    if present {
        return Ok(());
    }
    println!("==> apt-get install wrk");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "wrk"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .status()
            .context("cannot run apt-get (install wrk yourself)")?;
        if !status.success() {
            bail!("apt-get {} failed", args.join(" "));
        }
    }
    Ok(())
}

/// The sender's resident memory around a backlog.
struct RssReport {
    idle_kib: u64,
    peak_kib: u64,
    delivered: usize,
    waiting_after: u32,
    seconds: f64,
}

impl RssReport {
    fn growth_mib(&self) -> f64 {
        self.peak_kib.saturating_sub(self.idle_kib) as f64 / 1024.0
    }

    fn describe(&self, backlog: usize) -> String {
        format!(
            "sender with {backlog} jobs queued (concurrency {SENDER_CONCURRENCY}, receiver {} ms): \
             RSS {:.1} MiB idle, peak {:.1} MiB over the {:.1} s after queueing (+{:.1} MiB); \
             {} delivered since queueing began, \
             {} still waiting in the broker",
            RECEIVER_DELAY.as_millis(),
            self.idle_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0,
            self.seconds,
            self.growth_mib(),
            self.delivered,
            self.waiting_after,
        )
    }
}

fn sender_backlog(
    deployment: &Deployment,
    workspace: &str,
    hooks: &[String],
    backlog: usize,
    answered: &AtomicUsize,
) -> anyhow::Result<RssReport> {
    let sender = deployment.spawn_with(
        "sender",
        "sender",
        &[
            ("QR3__DELIVERY__CONCURRENCY", SENDER_CONCURRENCY),
            (
                "QR3__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK",
                SENDER_CONCURRENCY,
            ),
        ],
    )?;
    // Warm up: one delivery through every code path, then the idle baseline.
    let settings = deployment.settings.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(publish_jobs(&settings, workspace, hooks, hooks.len()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::SeqCst) < hooks.len() {
        if Instant::now() > deadline {
            bail!("the sender delivered nothing within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle_kib = sender
        .rss_kib()
        .context("cannot read the sender's memory")?;

    let before = answered.load(Ordering::SeqCst);
    runtime.block_on(publish_jobs(&settings, workspace, hooks, backlog))?;
    let started = Instant::now();
    let mut peak_kib = idle_kib;
    while started.elapsed() < Duration::from_secs(5) {
        peak_kib = peak_kib.max(sender.rss_kib().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let waiting_after = runtime.block_on(waiting(&settings))?;
    sender.terminate();
    Ok(RssReport {
        idle_kib,
        peak_kib,
        delivered: answered.load(Ordering::SeqCst) - before,
        waiting_after,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Puts `count` delivery jobs for `hooks` straight into the delivery queue.
async fn publish_jobs(
    settings: &qr3_config::Settings,
    workspace: &str,
    hooks: &[String],
    count: usize,
) -> anyhow::Result<()> {
    use qr3_domain::{EventId, EventType, Timestamp, WebhookId, WorkspaceId};
    let workspace = WorkspaceId::parse(workspace)?;
    let hooks = hooks
        .iter()
        .map(|h| WebhookId::parse(h))
        .collect::<Result<Vec<_>, _>>()?;
    let queue = qr3_broker::Topology::from_settings(settings).deliveries_queue();
    let publisher = qr3_broker::SharedPublisher::new(amqp_url(), "xtask-load");
    let now = Timestamp::now();
    let body = br#"{"id":"evt_load","type":"qr.scanned","created":"2026-01-01T00:00:00.000Z","data":{"code_id":"qr_abc123","short_code":"r7f3Kx","country":"AT"}}"#;
    let jobs: Vec<qr3_broker::Outgoing> = (0..count)
        .map(|i| {
            let job = qr3_broker::DeliveryJob {
                webhook_id: hooks[i % hooks.len()].clone(),
                workspace_id: workspace.clone(),
                event_id: EventId::generate(),
                event_type: EventType::QrScanned,
                event_created: now,
                attempt: 1,
                trigger: qr3_broker::Trigger::Event,
                body: body.to_vec(),
            };
            qr3_broker::Outgoing {
                exchange: String::new(),
                routing_key: queue.clone(),
                properties: job.properties(),
                body: job.body,
            }
        })
        .collect();
    for chunk in jobs.chunks(1000) {
        publisher
            .publish_all(chunk)
            .await
            .context("cannot publish the backlog")?;
    }
    Ok(())
}

/// Jobs waiting in the delivery queue.
async fn waiting(settings: &qr3_config::Settings) -> anyhow::Result<u32> {
    let connection = qr3_broker::connect(&amqp_url(), "xtask-load").await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            qr3_broker::Topology::from_settings(settings)
                .deliveries_queue()
                .as_str()
                .into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    let _ = connection.close(200, "measured".into()).await;
    Ok(queue.message_count())
}

/// A minimal HTTP/1.1 request to `addr`; the status and body, or `None` on any failure.
fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A receiver on 127.0.0.1 that answers every request 200 after [`RECEIVER_DELAY`],
/// one thread per connection; returns its URL and the count of requests answered.
fn start_receiver() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || serve_connection(stream, &count));
        }
    });
    Ok((url, answered))
}

fn serve_connection(stream: std::net::TcpStream, answered: &AtomicUsize) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        std::thread::sleep(RECEIVER_DELAY);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(answer).is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}
