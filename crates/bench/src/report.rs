//! The benchmark's report: a table on stdout, `report.json`, and two SVG plots.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Ceilings {
    pub broker_msgs_per_s: f64,
    pub receiver_req_per_s: f64,
    pub postgres_rows_per_s: f64,
    /// The broker alone on W3's path: two quorum-queue hops with a confirm each.
    pub broker_two_hops: LatencyFloor,
}

/// Publish-to-consume latency of the broker alone, at W3's rate.
#[derive(Debug, Serialize)]
pub struct LatencyFloor {
    pub rate_per_s: usize,
    pub seconds: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl LatencyFloor {
    pub fn from_sorted(rate_per_s: usize, seconds: u64, sorted_ms: &[f64]) -> Self {
        Self {
            rate_per_s,
            seconds,
            p50_ms: percentile(sorted_ms, 0.50),
            p95_ms: percentile(sorted_ms, 0.95),
            p99_ms: percentile(sorted_ms, 0.99),
        }
    }
}

/// The `p` quantile of sorted samples (nearest rank); NaN without samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub events: usize,
    pub expected_deliveries: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub seconds: f64,
    pub deliveries_per_s: f64,
    pub publish_seconds: f64,
    /// Deliveries per second in each 250 ms from the first publish.
    pub timeline_per_s: Vec<f64>,
    /// Cores used by each group of processes during the workload.
    pub cpu_cores: std::collections::BTreeMap<String, f64>,
    /// Jobs the senders parked in a defer queue during the workload (their webhook was
    /// at its in-flight cap): each arrives at least `delivery.defer_ms` later.
    pub sender_parked: u64,
    /// Jobs the senders skipped (already delivered, webhook gone or disabled).
    pub sender_skipped: u64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub rate_per_s: usize,
    pub seconds: u64,
    pub delivered: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

/// W6: publish-to-receipt of the healthy webhooks answering in one latency.
#[derive(Debug, Serialize)]
pub struct LatencyClass {
    pub latency_ms: u64,
    pub webhooks: usize,
    pub expected: usize,
    pub delivered: usize,
    /// Publish to the end of the receiver's answer (its arrival plus `latency_ms`).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// W6: 1,000 webhooks with a realistic receiver mix under a steady stream of events.
#[derive(Debug, Serialize)]
pub struct Mixed {
    pub webhooks: usize,
    /// Events per second, each fanned out to every webhook.
    pub rate_per_s: usize,
    pub seconds: u64,
    pub events: usize,
    pub healthy_expected: usize,
    pub healthy_delivered: usize,
    pub healthy_duplicates: usize,
    /// Deliveries to the 2xx webhooks per second, from the first publish to the last receipt.
    pub healthy_deliveries_per_s: f64,
    pub classes: Vec<LatencyClass>,
    /// Requests the webhooks answering 500 received (first attempts; retries come later).
    pub failing_requests: usize,
    pub sender_parked: u64,
    pub sender_skipped: u64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub phase: String,
    pub process: String,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    pub senders: usize,
    pub ingests: usize,
    /// Settings changed from the defaults for this run (environment variables).
    pub settings: Vec<String>,
    pub machine: String,
    pub ceilings: Ceilings,
    pub w1: Throughput,
    pub w2: Throughput,
    pub w3: Latency,
    pub w4: Throughput,
    /// One webhook answering in 100 ms, and its bound: in-flight cap × senders ÷ latency.
    pub w7: Throughput,
    pub w7_bound_per_s: f64,
    /// 1,000 webhooks with a realistic receiver mix.
    pub w6: Mixed,
    pub memory: Vec<Memory>,
    pub signatures_checked: u64,
    /// CPU time and Postgres bytes per delivery, per throughput workload.
    pub costs: Vec<crate::cost::Cost>,
}

/// W6's target: a healthy webhook's p99 publish-to-receipt is within its own latency
/// plus this.
const W6_MARGIN_MS: u64 = 100;

/// One target line: the figure, the target, and whether it is met.
struct Check {
    name: &'static str,
    value: String,
    target: &'static str,
    met: bool,
}

fn checks(r: &Report) -> Vec<Check> {
    let w1_ratio = r.w1.deliveries_per_s / r.ceilings.broker_msgs_per_s;
    let w4_ratio = r.w4.deliveries_per_s / r.w2.deliveries_per_s;
    let w2_ratio = r.w2.deliveries_per_s / r.ceilings.broker_msgs_per_s;
    let w2_cost = r.costs.iter().find(|c| c.workload == "W2");
    let w2_cpu = w2_cost.map_or(f64::NAN, |c| c.qr3_cpu_us);
    let w2_bytes = w2_cost.map_or(f64::NAN, |c| c.log_bytes);
    let sender_inflight = r
        .memory
        .iter()
        .find(|m| m.phase.starts_with("W5 ("))
        .map(|m| m.peak_rss_mib)
        .unwrap_or(f64::NAN);
    let w6_class = |latency_ms: u64| {
        let p99 =
            r.w6.classes
                .iter()
                .find(|c| c.latency_ms == latency_ms)
                .map_or(f64::NAN, |c| c.p99_ms);
        (
            format!("{p99:.0} ms"),
            p99 <= (latency_ms + W6_MARGIN_MS) as f64,
        )
    };
    let (w6_20, w6_20_met) = w6_class(20);
    let (w6_200, w6_200_met) = w6_class(200);
    let (w6_1000, w6_1000_met) = w6_class(1_000);
    vec![
        Check {
            name: "W6 p99, 20 ms receivers",
            value: w6_20,
            target: "<= 120 ms",
            met: w6_20_met,
        },
        Check {
            name: "W6 p99, 200 ms receivers",
            value: w6_200,
            target: "<= 300 ms",
            met: w6_200_met,
        },
        Check {
            name: "W6 p99, 1 s receivers",
            value: w6_1000,
            target: "<= 1100 ms",
            met: w6_1000_met,
        },
        Check {
            name: "W7 / its bound (cap / latency)",
            value: format!("{:.0} %", r.w7.deliveries_per_s / r.w7_bound_per_s * 100.0),
            target: ">= 90 %",
            met: r.w7.deliveries_per_s >= 0.9 * r.w7_bound_per_s,
        },
        Check {
            name: "W1 deliveries/s",
            value: format!("{:.0}", r.w1.deliveries_per_s),
            target: ">= 4000",
            met: r.w1.deliveries_per_s >= 4000.0,
        },
        Check {
            name: "W1 / RabbitMQ-alone",
            value: format!("{:.0} %", w1_ratio * 100.0),
            target: ">= 50 %",
            met: w1_ratio >= 0.5,
        },
        Check {
            name: "W2 deliveries/s",
            value: format!("{:.0}", r.w2.deliveries_per_s),
            target: ">= 12000",
            met: r.w2.deliveries_per_s >= 12000.0,
        },
        Check {
            name: "W3 p99 latency",
            value: format!("{:.1} ms", r.w3.p99_ms),
            target: "<= 20 ms",
            met: r.w3.p99_ms <= 20.0,
        },
        Check {
            name: "W4 healthy / W2",
            value: format!("{:.0} %", w4_ratio * 100.0),
            target: ">= 90 %",
            met: w4_ratio >= 0.9,
        },
        Check {
            name: "W5 sender RSS, 1,000 in flight",
            value: format!("{sender_inflight:.1} MiB"),
            target: "<= 64 MiB",
            met: sender_inflight <= 64.0,
        },
        Check {
            name: "W2 / RabbitMQ-alone",
            value: format!("{:.0} %", w2_ratio * 100.0),
            target: ">= 150 %",
            met: w2_ratio >= 1.5,
        },
        Check {
            name: "W2 qr3 CPU per delivery",
            value: format!("{w2_cpu:.1} µs"),
            target: "<= 35 µs",
            met: w2_cpu <= 35.0,
        },
        Check {
            name: "W2 Postgres log bytes per delivery",
            value: format!("{w2_bytes:.0} B"),
            target: "<= 300 B",
            met: w2_bytes <= 300.0,
        },
        Check {
            name: "exactly once (W1, W2)",
            value: format!(
                "{} missing, {} duplicates",
                (r.w1.expected_deliveries - r.w1.delivered)
                    + (r.w2.expected_deliveries - r.w2.delivered),
                r.w1.duplicates + r.w2.duplicates
            ),
            target: "0 and 0",
            met: r.w1.delivered == r.w1.expected_deliveries
                && r.w2.delivered == r.w2.expected_deliveries
                && r.w1.duplicates + r.w2.duplicates == 0,
        },
    ]
}

pub fn print(r: &Report) {
    let c = &r.ceilings;
    println!(
        "\nqr3-bench on {} ({} sender(s), {} ingest(s){}{})",
        r.machine,
        r.senders,
        r.ingests,
        if r.quick { ", quick" } else { "" },
        r.settings
            .iter()
            .map(|s| format!(", {s}"))
            .collect::<String>()
    );
    println!("\nCeilings measured in this run");
    println!(
        "  RabbitMQ alone (persistent, confirms, acks)   {:>10.0} msg/s",
        c.broker_msgs_per_s
    );
    println!(
        "  receiver alone (512 keep-alive clients)       {:>10.0} req/s",
        c.receiver_req_per_s
    );
    println!(
        "  Postgres alone (attempt log, batches of 256)  {:>10.0} rows/s",
        c.postgres_rows_per_s
    );
    let f = &c.broker_two_hops;
    println!(
        "  RabbitMQ alone, W3's two hops at {}/s       p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        f.rate_per_s, f.p50_ms, f.p95_ms, f.p99_ms
    );
    println!("\nWorkloads                       deliveries/s   of broker  of receiver  of postgres   delivered   dup");
    for (name, t) in [
        ("W1 single webhook", &r.w1),
        ("W2 fan-out x10", &r.w2),
        ("W4 one of ten hanging", &r.w4),
        ("W7 one webhook at 100 ms", &r.w7),
    ] {
        println!(
            "  {name:<28} {:>12.0} {:>10.0} % {:>10.1} % {:>10.0} % {:>8}/{:<8} {}",
            t.deliveries_per_s,
            t.deliveries_per_s / c.broker_msgs_per_s * 100.0,
            t.deliveries_per_s / c.receiver_req_per_s * 100.0,
            t.deliveries_per_s / c.postgres_rows_per_s * 100.0,
            t.delivered,
            t.expected_deliveries,
            t.duplicates
        );
    }
    println!("\nCPU cores used during each workload (2 cores on this machine)");
    for (name, t) in [("W1", &r.w1), ("W2", &r.w2), ("W4", &r.w4)] {
        let parts: Vec<String> = t
            .cpu_cores
            .iter()
            .map(|(g, c)| format!("{g} {c:.2}"))
            .collect();
        println!("  {name}: {}", parts.join(", "));
    }
    println!("\nCost per delivery: CPU µs of each process group; Postgres bytes (log = attempts and payloads with their indexes, tables = every table, WAL = the whole server's)");
    for c in &r.costs {
        let parts: Vec<String> = c
            .cpu_us
            .iter()
            .map(|(g, us)| format!("{g} {us:.1}"))
            .collect();
        println!(
            "  {}: qr3 {:.1} µs ({}); log {:.0} B, tables {:.0} B, WAL {:.0} B",
            c.workload,
            c.qr3_cpu_us,
            parts.join(", "),
            c.log_bytes,
            c.table_bytes,
            c.wal_bytes
        );
    }
    println!("\nJobs the senders parked (admission or max_per_second) and skipped");
    for (name, t) in [("W1", &r.w1), ("W2", &r.w2), ("W4", &r.w4), ("W7", &r.w7)] {
        println!(
            "  {name}: {} parked, {} skipped",
            t.sender_parked, t.sender_skipped
        );
    }
    let m = &r.w6;
    println!(
        "\nW6: {} webhooks, {} event/s for {} s ({} events): healthy {:.0} deliveries/s, {}/{} delivered, {} dup; {} requests to the 500 webhooks; {} parked, {} skipped",
        m.webhooks,
        m.rate_per_s,
        m.seconds,
        m.events,
        m.healthy_deliveries_per_s,
        m.healthy_delivered,
        m.healthy_expected,
        m.healthy_duplicates,
        m.failing_requests,
        m.sender_parked,
        m.sender_skipped
    );
    for c in &m.classes {
        println!(
            "  W6 {:>5} ms receivers ({:>3} webhooks): publish-to-receipt p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({}/{} delivered)",
            c.latency_ms, c.webhooks, c.p50_ms, c.p99_ms, c.max_ms, c.delivered, c.expected
        );
    }
    let l = &r.w3;
    println!("\nW3 latency at {}/s for {} s: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} delivered)", l.rate_per_s, l.seconds, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.delivered);
    println!(
        "  of which the broker alone takes: p50 {:.0} %, p99 {:.0} % (its two hops measured above)",
        f.p50_ms / l.p50_ms * 100.0,
        f.p99_ms / l.p99_ms * 100.0
    );
    println!("\nPeak RSS");
    for m in &r.memory {
        println!(
            "  {:<24} {:<16} {:>8.1} MiB",
            m.phase, m.process, m.peak_rss_mib
        );
    }
    println!("\nTargets");
    for check in checks(r) {
        println!(
            "  {:<34} {:>28}  target {:<10} {}",
            check.name,
            check.value,
            check.target,
            if check.met { "met" } else { "NOT MET" }
        );
    }
    println!("\nSampled signatures verified: {}", r.signatures_checked);
}

pub fn write(dir: &Path, r: &Report) -> anyhow::Result<()> {
    let targets: Vec<serde_json::Value> = checks(r)
        .into_iter()
        .map(|c| serde_json::json!({"name": c.name, "value": c.value, "target": c.target, "met": c.met}))
        .collect();
    let mut json = serde_json::to_value(r)?;
    json["targets"] = serde_json::Value::Array(targets);
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    plot_throughput(&dir.join("throughput.svg"), r)?;
    plot_latency(&dir.join("latency.svg"), &r.w3)?;
    Ok(())
}

fn plot_throughput(path: &Path, r: &Report) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let series = [
        ("W1 single", &r.w1.timeline_per_s, RED),
        ("W2 fan-out x10", &r.w2.timeline_per_s, BLUE),
        ("W4 healthy nine", &r.w4.timeline_per_s, GREEN),
    ];
    let max_x = series.iter().map(|(_, s, _)| s.len()).max().unwrap_or(1) as f64 * 0.25;
    let max_y = series
        .iter()
        .flat_map(|(_, s, _)| s.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Deliveries per second over time", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("seconds since first publish")
        .y_desc("deliveries/s")
        .draw()?;
    for (name, s, color) in series {
        chart
            .draw_series(LineSeries::new(
                s.iter().enumerate().map(|(i, v)| (i as f64 * 0.25, *v)),
                color,
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_latency(path: &Path, l: &Latency) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = l.samples_ms.last().copied().unwrap_or(1.0).max(1.0) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("W3: publish-to-receipt latency at {}/s (CDF)", l.rate_per_s),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("% of deliveries")
        .draw()?;
    let n = l.samples_ms.len().max(1) as f64;
    chart.draw_series(LineSeries::new(
        l.samples_ms
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, (i + 1) as f64 / n * 100.0)),
        BLUE,
    ))?;
    root.present()?;
    Ok(())
}
