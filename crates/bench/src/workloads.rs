//! The workloads W1–W5 and W7 (W6 in `mixed`) against the running processes, and the ceilings around them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use lapin::BasicProperties;
use qr3_broker::{Outgoing, Publisher};
use qr3_testkit::Deployment;
use serde_json::json;

use crate::procs::Proc;
use crate::receiver::Receiver;
use crate::report::{Ceilings, Latency, LatencyFloor, Memory, Report, Throughput};
use crate::{ceilings, Args, Sizes};

const SECRET: &str = "bench-secret-0123456789abcdef";
/// The sender's concurrency in production settings (delivery.concurrency).
const SENDER_CONCURRENCY: usize = 512;

pub struct Workspace {
    id: String,
    key: String,
}

/// Peak RSS per process, per phase.
#[derive(Default)]
struct Sampler {
    phase: Mutex<String>,
    peaks: Mutex<HashMap<(String, String), u64>>,
}

pub async fn run_all(args: &Args, sizes: Sizes, env: &Deployment) -> anyhow::Result<Report> {
    // Ceilings first, while nothing else runs.
    let prefix = env.name.clone();
    let db_url = env.database_url();
    let payload_size = 260;
    println!(
        "ceiling: RabbitMQ alone ({} persistent {payload_size}-byte messages)…",
        sizes.ceiling_messages
    );
    let broker = ceilings::broker(
        &args.common.amqp,
        &format!("{prefix}.ceiling"),
        sizes.ceiling_messages,
        payload_size,
    )
    .await?;
    let hop_seconds = sizes.w3_seconds.min(5);
    println!(
        "ceiling: RabbitMQ alone, two confirmed hops at {}/s for {hop_seconds} s…",
        sizes.w3_rate
    );
    let hops = ceilings::broker_two_hops(
        &args.common.amqp,
        &format!("{prefix}.ceiling.hops"),
        sizes.w3_rate,
        hop_seconds,
    )
    .await?;
    let broker_two_hops = LatencyFloor::from_sorted(sizes.w3_rate, hop_seconds, &hops);
    let receiver = Receiver::start(SECRET).await?;
    println!("ceiling: receiver alone ({SENDER_CONCURRENCY} keep-alive clients)…");
    let body = bytes::Bytes::from(vec![b'x'; payload_size]);
    let receiver_alone = ceilings::receiver(
        &receiver.url(999),
        sizes.ceiling_messages * 2,
        SENDER_CONCURRENCY,
        body,
    )
    .await?;
    let store = {
        let pool = qr3_store::connect(db_url, 4)?;
        let mut settings = qr3_config::Settings::defaults();
        settings.secrets.allow_insecure_dev_key = true;
        qr3_store::Store::new(
            pool,
            qr3_store::SecretCipher::new(&settings.encryption_key()?),
        )
    };
    println!("ceiling: Postgres alone (attempt-log batches of 256)…");
    let postgres = ceilings::postgres(&store, sizes.ceiling_messages, 256).await?;
    receiver.log.reset();
    let ceilings = Ceilings {
        broker_msgs_per_s: broker,
        receiver_req_per_s: receiver_alone,
        postgres_rows_per_s: postgres,
        broker_two_hops,
    };

    // The system under test.
    let mut procs: Vec<Proc> = Vec::new();
    for i in 0..args.ingests {
        procs.push(env.spawn("ingest", &format!("ingest-{i}"))?);
    }
    for i in 0..args.senders {
        procs.push(env.spawn("sender", &format!("sender-{i}"))?);
    }
    let mut api_process = env.spawn("api", "api")?;
    api_process.wait_ready(qr3_testkit::deployment::READY_WITHIN)?;
    let api = api_process.url();
    procs.push(api_process);
    let sampler = Arc::new(Sampler::default());
    let pids: Vec<(String, u32)> = procs.iter().map(|p| (p.name.clone(), p.pid())).collect();
    let sampling = tokio::spawn(sample(sampler.clone(), pids.clone()));

    let ws1 = workspace(env)?;
    let ws2 = workspace(env)?;
    let ws3 = workspace(env)?;
    create_webhook(&api, &ws1, &receiver.url(0), &["qr.scanned"]).await?;
    for i in 0..10 {
        create_webhook(&api, &ws2, &receiver.url(10 + i), &["*"]).await?;
        create_webhook(&api, &ws3, &receiver.url(20 + i), &["*"]).await?;
    }
    // Subscriptions are cached for up to 2 s by ingest.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let connection = qr3_broker::connect(&args.common.amqp, "qr3-bench-publisher").await?;
    let publisher = Publisher::open(&connection).await?;
    let exchange = format!("{prefix}.events");
    let rig = Rig {
        pids: &pids,
        receiver: &receiver,
        publisher: &publisher,
        exchange: &exchange,
    };

    // W1: one webhook, as fast as possible, from a quiet machine (the ceilings leave
    // RabbitMQ and Postgres with housekeeping to do).
    settle(&pids).await;
    set_phase(&sampler, "W1");
    println!("W1: {} events to 1 webhook…", sizes.w1_events);
    let counts = sender_counts(&procs).await;
    let probe = crate::cost::Probe::start(db_url, &pids).await?;
    let w1 = throughput(rig, &ws1, "w1", sizes.w1_events, |i| (0..1).contains(&i), 1).await?;
    let w1 = with_sender_counts(w1, &procs, counts).await;
    let mut costs = vec![probe.finish("W1", w1.delivered).await?];

    // W2: fan-out to ten webhooks.
    settle(&pids).await;
    set_phase(&sampler, "W2");
    println!("W2: {} events to 10 webhooks…", sizes.w2_events);
    let counts = sender_counts(&procs).await;
    let probe = crate::cost::Probe::start(db_url, &pids).await?;
    let w2 = throughput(
        rig,
        &ws2,
        "w2",
        sizes.w2_events,
        |i| (10..20).contains(&i),
        10,
    )
    .await?;
    let w2 = with_sender_counts(w2, &procs, counts).await;
    costs.push(probe.finish("W2", w2.delivered).await?);

    // W3: steady rate, latency, from a quiet machine.
    settle(&pids).await;
    set_phase(&sampler, "W3");
    println!("W3: {} events/s for {} s…", sizes.w3_rate, sizes.w3_seconds);
    let w3 = latency(&receiver, &publisher, &exchange, &ws1, sizes).await?;

    // W4: W2 with one receiver hanging past the timeout.
    settle(&pids).await;
    set_phase(&sampler, "W4");
    println!("W4: W2 with one of the ten receivers hanging…");
    *receiver.log.hang.lock().expect("lock") = Some(29);
    let counts = sender_counts(&procs).await;
    let probe = crate::cost::Probe::start(db_url, &pids).await?;
    let w4 = throughput(
        rig,
        &ws3,
        "w4",
        sizes.w2_events,
        |i| (20..29).contains(&i),
        9,
    )
    .await?;
    let w4 = with_sender_counts(w4, &procs, counts).await;
    costs.push(probe.finish("W4", w4.delivered).await?);
    *receiver.log.hang.lock().expect("lock") = None;

    // W7: one webhook answering in W7_LATENCY_MS, against its bound (each sender's
    // in-flight cap ÷ the latency).
    settle(&pids).await;
    set_phase(&sampler, "W7");
    let w7_bound_per_s =
        (in_flight_cap(&args.settings) * args.senders) as f64 * 1000.0 / W7_LATENCY_MS as f64;
    println!(
        "W7: {} events to 1 webhook answering in {W7_LATENCY_MS} ms (bound {w7_bound_per_s:.0}/s)…",
        sizes.w7_events
    );
    receiver
        .log
        .delay_ms
        .store(W7_LATENCY_MS, std::sync::atomic::Ordering::Relaxed);
    let counts = sender_counts(&procs).await;
    let w7 = throughput(rig, &ws1, "w7", sizes.w7_events, |i| i == 0, 1).await?;
    let w7 = with_sender_counts(w7, &procs, counts).await;
    receiver
        .log
        .delay_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);

    // W6: 1,000 webhooks with a realistic receiver mix, a steady stream fanned out.
    settle(&pids).await;
    set_phase(&sampler, "W6");
    println!(
        "W6: {} event/s for {} s to {} webhooks (50 % at 20 ms, 30 % at 200 ms, 15 % at 1 s, 4 % answer 500, 1 % hang)…",
        sizes.w6_rate,
        sizes.w6_seconds,
        crate::mixed::WEBHOOKS
    );
    let ws6 = workspace(env)?;
    let w6 = crate::mixed::run(rig, &api, &ws6, &procs, sizes).await?;
    // Later retries to the failing and hanging webhooks succeed at once.
    receiver.log.behaviours.lock().expect("lock").clear();

    // W5: memory with 1,000 deliveries in flight.
    set_phase(&sampler, "W5");
    println!("W5: 1,000 deliveries in flight…");
    let in_flight_rss = in_flight(env, &mut procs, &receiver, &publisher, &exchange, &ws1).await?;

    sampling.abort();
    let signatures_checked = receiver
        .log
        .checked_signatures
        .load(std::sync::atomic::Ordering::Relaxed);
    let bad_signatures = receiver
        .log
        .bad_signatures
        .load(std::sync::atomic::Ordering::Relaxed);
    for p in procs {
        p.terminate();
    }
    let peaks = sampler.peaks.lock().expect("lock").clone();
    let mut memory: Vec<Memory> = peaks
        .into_iter()
        .map(|((phase, process), kib)| Memory {
            phase,
            process,
            peak_rss_mib: kib as f64 / 1024.0,
        })
        .collect();
    memory.push(Memory {
        phase: "W5 (1,000 in flight)".into(),
        process: "sender".into(),
        peak_rss_mib: in_flight_rss,
    });
    memory.sort_by(|a, b| (&a.phase, &a.process).cmp(&(&b.phase, &b.process)));
    if bad_signatures > 0 {
        bail!("{bad_signatures} of {signatures_checked} sampled signatures did not verify");
    }
    Ok(Report {
        quick: args.quick,
        senders: args.senders,
        ingests: args.ingests,
        settings: args
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        machine: machine(),
        ceilings,
        w1,
        w2,
        w3,
        w4,
        w7,
        w7_bound_per_s,
        w6,
        memory,
        signatures_checked,
        costs,
    })
}

/// W7's receiver latency.
const W7_LATENCY_MS: u64 = 100;

/// `delivery.max_in_flight_per_webhook` as this run sets it (`--set`), else the default.
fn in_flight_cap(settings: &[(String, String)]) -> usize {
    settings
        .iter()
        .find(|(key, _)| {
            key.to_ascii_lowercase()
                .ends_with("max_in_flight_per_webhook")
        })
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(
            qr3_config::Settings::defaults()
                .delivery
                .max_in_flight_per_webhook,
        )
}

fn set_phase(sampler: &Sampler, phase: &str) {
    *sampler.phase.lock().expect("lock") = phase.to_owned();
}

async fn sample(sampler: Arc<Sampler>, pids: Vec<(String, u32)>) {
    loop {
        let phase = sampler.phase.lock().expect("lock").clone();
        for (name, pid) in &pids {
            if let Some(kib) = qr3_testkit::procfs::rss_kib(*pid) {
                let mut peaks = sampler.peaks.lock().expect("lock");
                let peak = peaks.entry((phase.clone(), name.clone())).or_default();
                *peak = (*peak).max(kib);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workspace(env: &Deployment) -> anyhow::Result<Workspace> {
    let (id, key) = env.create_workspace("bench")?;
    Ok(Workspace { id, key })
}

pub async fn create_webhook(
    api: &str,
    ws: &Workspace,
    url: &str,
    events: &[&str],
) -> anyhow::Result<()> {
    // The API limits each key's request rate (W6 creates 1,000 webhooks): wait as
    // told by Retry-After and ask again.
    let response = loop {
        let response = reqwest::Client::new()
            .post(format!("{api}/v1/webhooks"))
            .bearer_auth(&ws.key)
            .json(&json!({"url": url, "events": events, "secret": SECRET}))
            .send()
            .await?;
        if response.status() != 429 {
            break response;
        }
        let wait_s: u64 = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait_s.max(1))).await;
    };
    if response.status() != 201 {
        bail!(
            "creating a webhook answered {}: {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

pub fn event(exchange: &str, ws: &Workspace, id: &str) -> Outgoing {
    let body = json!({
        "id": id,
        "type": "qr.scanned",
        "workspace_id": ws.id,
        "created": qr3_domain::Timestamp::now(),
        "data": {"code_id": "qr_abc123", "short_code": "r7f3Kx", "scan_id": "scn_xyz", "country": "AT", "device_type": "mobile", "os": "iOS"},
    });
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: "qr.scanned".into(),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
        body: body.to_string().into_bytes(),
    }
}

/// Waits until the machine is quiet again, every process group (RabbitMQ, Postgres, our
/// roles, the benchmark) under 0.05 core over half a second, or 30 s at most, so a
/// workload does not measure the previous one's aftermath: the sender's last log
/// batches and acks, RabbitMQ's and Postgres's housekeeping after a burst.
async fn settle(pids: &[(String, u32)]) {
    let started = Instant::now();
    loop {
        let before = crate::cpu::snapshot(pids);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = crate::cpu::cores(&before, &crate::cpu::snapshot(pids), 0.5);
        let quiet = busy.values().all(|cores| *cores < 0.05);
        if quiet || started.elapsed() > Duration::from_secs(30) {
            println!(
                "  settled in {:.1} s{}",
                started.elapsed().as_secs_f64(),
                if quiet {
                    ""
                } else {
                    " (still busy: measuring anyway)"
                }
            );
            return;
        }
    }
}

/// Publishes `events` as fast as the broker confirms them and waits for the deliveries
/// to the receivers `counted` selects (`per_event` of them per event).
/// What every throughput workload drives: the processes it measures, the receiver, the
/// publisher and the events exchange.
#[derive(Clone, Copy)]
pub struct Rig<'a> {
    pub pids: &'a [(String, u32)],
    pub receiver: &'a Receiver,
    pub publisher: &'a Publisher,
    pub exchange: &'a str,
}

async fn throughput(
    rig: Rig<'_>,
    ws: &Workspace,
    tag: &str,
    events: usize,
    counted: impl Fn(usize) -> bool,
    per_event: usize,
) -> anyhow::Result<Throughput> {
    let Rig {
        pids,
        receiver,
        publisher,
        exchange,
    } = rig;
    let start_index = receiver.log.count();
    let expected = events * per_event;
    let messages: Vec<Outgoing> = (0..events)
        .map(|i| event(exchange, ws, &format!("evt_{tag}_{i}")))
        .collect();
    let cpu_before = crate::cpu::snapshot(pids);
    let started = Instant::now();
    for chunk in messages.chunks(500) {
        publisher.publish_all(chunk).await?;
    }
    let published_s = started.elapsed().as_secs_f64();
    wait_for_arrivals(receiver, start_index, expected, &counted).await;
    let cpu_cores = crate::cpu::cores(
        &cpu_before,
        &crate::cpu::snapshot(pids),
        started.elapsed().as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrivals: Vec<(usize, String, Instant)> = receiver.log.arrivals.lock().expect("lock")
        [start_index..]
        .iter()
        .filter(|(i, _, _)| counted(*i))
        .cloned()
        .collect();
    let distinct: HashSet<(usize, &str)> = arrivals
        .iter()
        .map(|(i, id, _)| (*i, id.as_str()))
        .collect();
    let end = arrivals
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or(started);
    let seconds = (end - started).as_secs_f64();
    // Deliveries per 250 ms bin, for the throughput plot.
    let mut timeline = vec![0usize; (seconds / 0.25).ceil() as usize + 1];
    for (_, _, at) in &arrivals {
        timeline[((*at - started).as_secs_f64() / 0.25) as usize] += 1;
    }
    Ok(Throughput {
        events,
        expected_deliveries: expected,
        delivered: distinct.len(),
        duplicates: arrivals.len() - distinct.len(),
        seconds,
        deliveries_per_s: distinct.len() as f64 / seconds,
        publish_seconds: published_s,
        timeline_per_s: timeline.into_iter().map(|n| n as f64 * 4.0).collect(),
        cpu_cores,
        sender_parked: 0,
        sender_skipped: 0,
    })
}

/// Jobs parked and skipped so far, summed over the sender processes.
pub async fn sender_counts(procs: &[Proc]) -> [u64; 2] {
    let mut sums = [0u64; 2];
    for p in procs.iter().filter(|p| p.name.starts_with("sender")) {
        let counts = crate::procs::counters(
            &p.metrics,
            &[
                "qr3_deliveries_deferred_total",
                "qr3_deliveries_skipped_total",
            ],
        )
        .await;
        for (sum, count) in sums.iter_mut().zip(counts) {
            *sum += count as u64;
        }
    }
    sums
}

/// Fills in what the senders parked and skipped since `before`.
async fn with_sender_counts(mut t: Throughput, procs: &[Proc], before: [u64; 2]) -> Throughput {
    let after = sender_counts(procs).await;
    t.sender_parked = after[0].saturating_sub(before[0]);
    t.sender_skipped = after[1].saturating_sub(before[1]);
    t
}

/// `w3_rate` events per second for `w3_seconds` to the one-webhook workspace: the
/// latency from each publish to its arrival.
async fn latency(
    receiver: &Receiver,
    publisher: &Publisher,
    exchange: &str,
    ws: &Workspace,
    sizes: Sizes,
) -> anyhow::Result<Latency> {
    let start_index = receiver.log.count();
    let total = sizes.w3_rate * sizes.w3_seconds as usize;
    let per_tick = sizes.w3_rate / 100;
    let mut published: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut i = 0;
    while i < total {
        tick.tick().await;
        let batch: Vec<Outgoing> = (i..(i + per_tick).min(total))
            .map(|n| event(exchange, ws, &format!("evt_w3_{n}")))
            .collect();
        let now = Instant::now();
        for n in i..(i + batch.len()) {
            published.insert(format!("evt_w3_{n}"), now);
        }
        i += batch.len();
        publisher.publish_all(&batch).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.log.arrivals.lock().expect("lock")[start_index..]
        .iter()
        .filter(|(w, _, _)| *w == 0)
        .count()
        < total
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies: Vec<f64> = receiver.log.arrivals.lock().expect("lock")[start_index..]
        .iter()
        .filter_map(|(_, id, at)| published.get(id).map(|p| (*at - *p).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| crate::report::percentile(&latencies, p);
    Ok(Latency {
        rate_per_s: sizes.w3_rate,
        seconds: sizes.w3_seconds,
        delivered: latencies.len(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        samples_ms: latencies,
    })
}

/// Replaces the senders with one whose concurrency is 1,000, holds 1,000 deliveries at
/// a slow receiver, and returns the sender's peak RSS in MiB meanwhile.
async fn in_flight(
    env: &Deployment,
    procs: &mut Vec<Proc>,
    receiver: &Receiver,
    publisher: &Publisher,
    exchange: &str,
    ws: &Workspace,
) -> anyhow::Result<f64> {
    let senders: Vec<usize> = procs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.name.starts_with("sender"))
        .map(|(i, _)| i)
        .collect();
    for i in senders.into_iter().rev() {
        procs.remove(i).terminate();
    }
    let sender = env.spawn_with(
        "sender",
        "sender-inflight",
        &[
            ("QR3__DELIVERY__CONCURRENCY", "1000"),
            ("QR3__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "1000"),
        ],
    )?;
    receiver
        .log
        .delay_ms
        .store(3000, std::sync::atomic::Ordering::Relaxed);
    let start_index = receiver.log.count();
    let messages: Vec<Outgoing> = (0..1000)
        .map(|i| event(exchange, ws, &format!("evt_w5_{i}")))
        .collect();
    for chunk in messages.chunks(500) {
        publisher.publish_all(chunk).await?;
    }
    let mut peak = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        peak = peak.max(sender.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = receiver.log.arrivals.lock().expect("lock")[start_index..]
        .iter()
        .filter(|(w, _, _)| *w == 0)
        .count();
    println!("  {held} requests reached the slow receiver at once");
    receiver
        .log
        .delay_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);
    procs.push(sender);
    Ok(peak as f64 / 1024.0)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpus} CPUs ({model}), {:.0} GiB",
        mem as f64 / 1024.0 / 1024.0
    )
}

/// Waits until the receiver has recorded `expected` arrivals since `start_index` whose
/// receiver index is `counted`, or until none has come for 30 s (then says where it
/// stalled and returns: the report shows what was missing).
pub async fn wait_for_arrivals(
    receiver: &Receiver,
    start_index: usize,
    expected: usize,
    counted: impl Fn(usize) -> bool,
) {
    let count_now = || {
        receiver.log.arrivals.lock().expect("lock")[start_index..]
            .iter()
            .filter(|(i, _, _)| counted(*i))
            .count()
    };
    let mut last = (0, Instant::now());
    loop {
        let n = count_now();
        if n >= expected {
            return;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            println!("  stalled at {n} of {expected}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
