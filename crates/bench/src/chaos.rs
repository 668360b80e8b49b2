//! `cargo xtask chaos`: the pipeline under a steady event stream to real receivers on
//! 127.0.0.1 while processes are killed, connections dropped, the database taken away
//! and receivers misbehave. Each scenario ends by comparing what every receiver got
//! with what was published and with the delivery log.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lapin::BasicProperties;
use qr3_broker::{Outgoing, SharedPublisher};
use serde::Serialize;
use serde_json::json;

use crate::chaos_receiver::{ChaosReceiver, Mode};
use crate::cluster_nodes::Cluster;
use crate::procs::Proc;
use crate::Common;
use qr3_testkit::Deployment;

#[derive(clap::Args, Clone)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub common: Common,
    /// A smaller stream per scenario (for CI).
    #[arg(long)]
    pub quick: bool,
}

/// The fault a scenario injects.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    KillSender {
        times: usize,
    },
    KillIngest {
        times: usize,
    },
    DropBrokerConnections,
    TerminateDatabaseConnections,
    RefuseDatabase {
        millis: u64,
    },
    Receiver(Mode),
    /// Before the stream: a webhook disabled, pinged (so a sender reads it disabled)
    /// and re-enabled just before its events are published.
    StaleCache,
    /// Before the stream: a webhook row names an event type this build does not know.
    PoisonRow,
    /// One webhook's secret does not decrypt for a while (and another's previous secret
    /// never does).
    BrokenSecret {
        millis: u64,
    },
    /// The retry queues refuse every publish for a while, as receivers fail.
    RefusePublish {
        millis: u64,
    },
    /// The sender's log writer panics (a fault-injection point): the process must exit
    /// non-zero by itself, and a new sender (as Kubernetes would start) takes over.
    KillTask,
    /// The RabbitMQ cluster node holding most of the workers' connections stops
    /// (`rabbitmqctl stop`, or SIGKILL of its Erlang VM when `kill`), and starts again
    /// `millis` after the workers have reconnected to the other nodes.
    StopNode {
        millis: u64,
        kill: bool,
    },
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    scenario: String,
    events: usize,
    expected: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    attempts_not_logged: usize,
    /// Messages on the run's `.dead` queues after the scenario (drained).
    dead_lettered: usize,
    recovery_ms: u64,
    /// Node loss: from the first worker seen without its connection until every
    /// worker that lost its connection is connected again (to another node).
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_ms: Option<u64>,
}

/// What the scenarios of one run share: the run, its processes and API, the harness's
/// publisher, the store, and the cluster when the run has one.
pub struct Stage<'a> {
    pub run: &'a Deployment,
    /// The broker URL (or node list) of the harness's own connections.
    pub amqp: String,
    pub api: String,
    pub publisher: std::sync::Arc<SharedPublisher>,
    pub store: qr3_store::Store,
    pub procs: Vec<Proc>,
    pub cluster: Option<&'a mut Cluster>,
}

const RETRY_DELAYS: &str = "500,1500";
const WEBHOOKS: usize = 3;
/// The main queues' `x-delivery-limit` for the whole run: far below RabbitMQ 4's
/// default of 20, so that an outage waited out by handing messages back to the broker
/// would show as dead letters.
const DELIVERY_LIMIT: &str = "5";

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let mut run = crate::deployment("chaos", &args.common)?;
    configure(&mut run);
    run.migrate()?;
    let result = scenarios(&args, &run).await;
    // Removes the run's queues, exchanges and database.
    drop(run);
    let outcomes = result?;
    report(&args.common.out.join("chaos.json"), &outcomes)
}

/// The scenarios' settings for the run's processes.
pub fn configure(run: &mut Deployment) {
    // Short retry delays and timeout so a scenario ends in seconds; disabling is not
    // what is under test here.
    for (key, value) in [
        ("QR3__DELIVERY__RETRY_DELAYS_MS", RETRY_DELAYS),
        ("QR3__DELIVERY__TIMEOUT_MS", "1000"),
        ("QR3__DELIVERY__DISABLE_AFTER_FAILURES", "1000000"),
        ("QR3__DELIVERY__WEBHOOK_CACHE_MS", "200"),
        ("QR3__DELIVERY__DEFER_MS", "1000"),
        ("QR3__SHUTDOWN__GRACE_PERIOD_MS", "5000"),
        ("QR3__AMQP__DELIVERY_LIMIT", DELIVERY_LIMIT),
    ] {
        run.set(key, value);
    }
}

/// Prints the outcomes, writes them to `path` and fails when anything was lost.
pub fn report(path: &std::path::Path, outcomes: &[Outcome]) -> anyhow::Result<()> {
    println!(
        "\n{:<40} {:>7} {:>9} {:>7} {:>5} {:>10} {:>10} {:>5} {:>13}",
        "scenario",
        "events",
        "expected",
        "deliv.",
        "lost",
        "duplicates",
        "not logged",
        "dead",
        "recovery (ms)"
    );
    for o in outcomes {
        println!(
            "{:<40} {:>7} {:>9} {:>7} {:>5} {:>10} {:>10} {:>5} {:>13}",
            o.scenario,
            o.events,
            o.expected,
            o.delivered,
            o.lost,
            o.duplicates,
            o.attempts_not_logged,
            o.dead_lettered,
            o.reconnect_ms.unwrap_or(o.recovery_ms)
        );
    }
    std::fs::write(path, serde_json::to_string_pretty(&outcomes)?)?;
    let lost: usize = outcomes
        .iter()
        .map(|o| o.lost + o.attempts_not_logged + o.dead_lettered)
        .sum();
    let passed = outcomes
        .iter()
        .filter(|o| o.lost == 0 && o.attempts_not_logged == 0 && o.dead_lettered == 0)
        .count();
    println!(
        "\nchaos: {passed} passed, {} failed",
        outcomes.len() - passed
    );
    if lost > 0 {
        bail!("deliveries were lost, attempts went unlogged or messages were dead-lettered");
    }
    Ok(())
}

async fn scenarios(args: &ChaosArgs, run: &Deployment) -> anyhow::Result<Vec<Outcome>> {
    let procs = vec![
        run.spawn("ingest", "chaos-ingest")?,
        run.spawn("sender", "chaos-sender")?,
        run.spawn("api", "chaos-api")?,
    ];
    let mut stage = Stage::new(run, &args.common.amqp, procs, None).await?;
    let (events, rate) = if args.quick { (300, 150) } else { (1500, 300) };
    let kill_times = if args.quick { 2 } else { 3 };
    let list: Vec<(&str, Fault)> = vec![
        (
            "sender SIGKILL mid-burst",
            Fault::KillSender { times: kill_times },
        ),
        (
            "ingest SIGKILL mid-fan-out",
            Fault::KillIngest { times: kill_times },
        ),
        ("broker connections dropped", Fault::DropBrokerConnections),
        (
            "database connections terminated",
            Fault::TerminateDatabaseConnections,
        ),
        (
            "database refuses connections 2 s",
            Fault::RefuseDatabase { millis: 2000 },
        ),
        ("receiver answers 500", Fault::Receiver(Mode::Status500)),
        (
            "receiver hangs past the timeout",
            Fault::Receiver(Mode::Hang),
        ),
        (
            "receiver closes mid-response",
            Fault::Receiver(Mode::CloseMidResponse),
        ),
        (
            "receiver answers a 32 MiB body",
            Fault::Receiver(Mode::HugeBody),
        ),
        ("receiver redirects", Fault::Receiver(Mode::Redirect)),
        (
            "database refuses connections 30 s",
            Fault::RefuseDatabase { millis: 30_000 },
        ),
        (
            "retry queues refuse publishes 30 s",
            Fault::RefusePublish { millis: 30_000 },
        ),
        ("stale cache: webhook re-enabled", Fault::StaleCache),
        ("webhook row with an unknown type", Fault::PoisonRow),
        (
            "secret does not decrypt 2 s",
            Fault::BrokenSecret { millis: 2000 },
        ),
        ("sender's log writer dies", Fault::KillTask),
    ];
    let mut outcomes = Vec::new();
    for (index, (name, fault)) in list.into_iter().enumerate() {
        println!("chaos: {name}…");
        let outcome = scenario(&mut stage, index, name, fault, (events, rate)).await?;
        outcomes.push(outcome);
    }
    stage.terminate();
    Ok(outcomes)
}

impl<'a> Stage<'a> {
    /// Waits for the API among `procs` and opens the harness's publisher and store.
    pub async fn new(
        run: &'a Deployment,
        amqp: &str,
        mut procs: Vec<Proc>,
        cluster: Option<&'a mut Cluster>,
    ) -> anyhow::Result<Self> {
        let api = procs
            .iter_mut()
            .find(|p| p.role == "api")
            .context("an API process")?;
        api.wait_ready(qr3_testkit::deployment::READY_WITHIN)?;
        let api = api.url();
        // Reconnects (to another node of a cluster) when its connection is lost.
        let publisher = std::sync::Arc::new(SharedPublisher::new(amqp, "qr3-chaos-publisher"));
        let store = {
            let pool = qr3_store::connect(run.database_url(), 2)?;
            let mut settings = qr3_config::Settings::defaults();
            settings.secrets.allow_insecure_dev_key = true;
            qr3_store::Store::new(
                pool,
                qr3_store::SecretCipher::new(&settings.encryption_key()?),
            )
        };
        Ok(Self {
            run,
            amqp: amqp.to_owned(),
            api,
            publisher,
            store,
            procs,
            cluster,
        })
    }

    /// Stops every process with SIGTERM.
    pub fn terminate(self) {
        for p in self.procs {
            p.terminate();
        }
    }
}

/// One scenario: webhooks on fresh receivers, a steady stream of `events` at `rate`
/// per second, `fault` a quarter of the way in, then the count.
pub async fn scenario(
    stage: &mut Stage<'_>,
    index: usize,
    name: &str,
    fault: Fault,
    (events, rate): (usize, usize),
) -> anyhow::Result<Outcome> {
    let run = stage.run;
    let api = stage.api.clone();
    let api = api.as_str();
    let publisher = stage.publisher.clone();
    let store = stage.store.clone();
    let procs = &mut stage.procs;
    let mut reconnect_ms = None;
    let workspace: serde_json::Value =
        serde_json::from_str(&run.run(&["workspace", "create", name])?)?;
    let workspace_id = workspace["workspace_id"]
        .as_str()
        .context("workspace_id")?
        .to_owned();
    let key = workspace["api_key"].as_str().context("api_key")?.to_owned();
    let mut receivers = Vec::new();
    let mut webhook_ids = Vec::new();
    for _ in 0..WEBHOOKS {
        let receiver = ChaosReceiver::start().await?;
        let created: serde_json::Value = reqwest::Client::new()
            .post(format!("{api}/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"url": receiver.url(), "events": ["*"], "secret": "chaos-secret-0123456789"}))
            .send()
            .await?
            .json()
            .await?;
        webhook_ids.push(created["id"].as_str().context("webhook id")?.to_owned());
        receivers.push(receiver);
    }
    // Faults that are in place before the first event.
    match fault {
        Fault::StaleCache => {
            let client = reqwest::Client::new();
            let url = format!("{api}/v1/webhooks/{}", webhook_ids[0]);
            for step in [
                client.patch(&url).json(&json!({"is_active": false})),
                client.post(format!("{url}/ping")),
                client.patch(&url).json(&json!({"is_active": true})),
            ] {
                let status = step.bearer_auth(&key).send().await?.status();
                if !status.is_success() {
                    bail!("stale-cache set-up answered {status}");
                }
            }
        }
        Fault::PoisonRow => {
            database(
                run,
                &format!(
                    "UPDATE webhooks SET events = ARRAY['*', 'qr.teleported'] WHERE id = '{}'",
                    webhook_ids[0]
                ),
            )
            .await?;
        }
        Fault::BrokenSecret { .. } => {
            database(run, &format!(
                "INSERT INTO webhook_previous_secrets (webhook_id, secret_ciphertext, rotated_at, expires_at) \
                 VALUES ('{}', '\\x00'::bytea, now(), now() + interval '1 hour')",
                webhook_ids[2]
            ))
            .await?;
        }
        _ => {}
    }

    // The steady stream, in the background.
    let exchange = format!("{}.events", run.name);
    let ids: Vec<String> = (0..events).map(|i| format!("evt_s{index}_{i}")).collect();
    let stream = {
        let (publisher, ids, exchange, workspace_id) = (
            publisher.clone(),
            ids.clone(),
            exchange.clone(),
            workspace_id.clone(),
        );
        tokio::spawn(async move {
            let per_tick = (rate / 20).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for chunk in ids.chunks(per_tick) {
                tick.tick().await;
                let messages: Vec<Outgoing> = chunk
                    .iter()
                    .map(|id| Outgoing {
                        exchange: exchange.clone(),
                        routing_key: "qr.scanned".into(),
                        properties: BasicProperties::default().with_delivery_mode(2),
                        body: json!({"id": id, "type": "qr.scanned", "workspace_id": workspace_id, "data": {"n": id}})
                            .to_string()
                            .into_bytes(),
                    })
                    .collect();
                // The publisher side is not under test: retry until confirmed.
                while publisher.publish_all(&messages).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };

    let stream_ms = (events * 1000 / rate) as u64;
    tokio::time::sleep(Duration::from_millis(stream_ms / 4)).await;
    let mut recovered_from = Vec::new();
    match fault {
        Fault::KillSender { times } | Fault::KillIngest { times } => {
            let role = if matches!(fault, Fault::KillSender { .. }) {
                "sender"
            } else {
                "ingest"
            };
            for round in 0..times {
                let at = procs
                    .iter()
                    .position(|p| p.name.contains(role))
                    .context("role process")?;
                drop(procs.remove(at)); // SIGKILL
                tokio::time::sleep(Duration::from_millis(500)).await;
                procs.push(run.spawn(role, &format!("chaos-{role}-{index}-{round}"))?);
                recovered_from.push(Instant::now());
                tokio::time::sleep(Duration::from_millis(stream_ms / 4)).await;
            }
        }
        Fault::DropBrokerConnections => {
            close_connections(&run.name)?;
            recovered_from.push(Instant::now());
        }
        Fault::TerminateDatabaseConnections => {
            database(run, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").await?;
            recovered_from.push(Instant::now());
        }
        Fault::RefuseDatabase { millis } => {
            let name = run.name.clone();
            admin(
                run,
                &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"),
            )
            .await?;
            admin(run, &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")).await?;
            tokio::time::sleep(Duration::from_millis(millis)).await;
            admin(
                run,
                &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"),
            )
            .await?;
            recovered_from.push(Instant::now());
        }
        Fault::StaleCache | Fault::PoisonRow => {}
        Fault::StopNode { millis, kill } => {
            let cluster = stage
                .cluster
                .as_deref_mut()
                .context("the node-loss scenario needs a cluster")?;
            let (stopped_at, reconnected) =
                stop_node(cluster, &run.name, procs, millis, kill).await?;
            recovered_from.push(stopped_at);
            reconnect_ms = Some(reconnected);
        }
        Fault::KillTask => {
            let at = procs
                .iter()
                .position(|p| p.name.contains("sender"))
                .context("sender process")?;
            procs.remove(at).terminate();
            // The second batch it writes: a late start can find the rest of the quick
            // stream (675 deliveries) waiting, which it writes in three batches.
            let failpoints = format!("{}/sender-log-writer=1*off->panic", run.name);
            let mut dying = run.spawn_with(
                "sender",
                &format!("chaos-sender-{index}-dying"),
                &[("FAILPOINTS", &failpoints)],
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = dying.exited() {
                    break status;
                }
                if Instant::now() > deadline {
                    // What it did meanwhile tells "no batch to write" from "stuck".
                    let metrics = format!("{}/metrics", dying.url());
                    let in_flight = crate::procs::gauge(&metrics, "qr3_deliveries_in_flight").await;
                    let connected = crate::procs::gauge(&metrics, "qr3_broker_connected").await;
                    bail!(
                        "the sender whose log writer died did not exit within 30 s \
                         (deliveries in flight {in_flight:?}, broker connected {connected:?})"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if status.success() {
                bail!("the sender whose log writer died exited with success");
            }
            println!("chaos: the sender exited by itself ({status})");
            procs.push(run.spawn("sender", &format!("chaos-sender-{index}-new"))?);
            recovered_from.push(Instant::now());
        }
        Fault::BrokenSecret { millis } => {
            let hook = &webhook_ids[1];
            database(run, &format!(
                "CREATE TABLE IF NOT EXISTS chaos_saved_secrets (id text PRIMARY KEY, ciphertext bytea);
                 INSERT INTO chaos_saved_secrets SELECT id, secret_ciphertext FROM webhooks WHERE id = '{hook}';
                 UPDATE webhooks SET secret_ciphertext = '\\x00'::bytea WHERE id = '{hook}'"
            ))
            .await?;
            tokio::time::sleep(Duration::from_millis(millis)).await;
            database(
                run,
                &format!(
                "UPDATE webhooks w SET secret_ciphertext = s.ciphertext FROM chaos_saved_secrets s \
                 WHERE w.id = s.id AND s.id = '{hook}'"
            ),
            )
            .await?;
            recovered_from.push(Instant::now());
        }
        Fault::RefusePublish { millis } => {
            let policy = format!("{}-chaos-refuse", run.name);
            let pattern = format!("^{}\\.retry\\.", run.name);
            rabbitmqctl(&[
                "set_policy",
                "-q",
                "--apply-to",
                "queues",
                "--priority",
                "10",
                &policy,
                &pattern,
                r#"{"max-length": 0}"#,
            ])?;
            // RabbitMQ refuses publishes to a queue over its max-length, so a capped
            // queue still takes one message when it is empty: filler jobs (for a
            // webhook that does not exist, which senders skip) keep the retry queues
            // occupied for the whole window.
            let filling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let filler = {
                let (publisher, filling, workspace_id) =
                    (publisher.clone(), filling.clone(), workspace_id.clone());
                let queues: Vec<String> = RETRY_DELAYS
                    .split(',')
                    .map(|ms| format!("{}.retry.{ms}ms", run.name))
                    .collect();
                tokio::spawn(async move {
                    while filling.load(std::sync::atomic::Ordering::Relaxed) {
                        for queue in &queues {
                            let _ = publisher
                                .publish_all(&[filler_job(&workspace_id, queue)])
                                .await;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            };
            // The broker applies a policy within moments; the receivers fail after.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for r in &receivers {
                r.set(Mode::Status500);
            }
            tokio::time::sleep(Duration::from_millis(1200)).await;
            for r in &receivers {
                r.set(Mode::Ok);
            }
            tokio::time::sleep(Duration::from_millis(millis.saturating_sub(1700))).await;
            filling.store(false, std::sync::atomic::Ordering::Relaxed);
            let _ = filler.await;
            rabbitmqctl(&["clear_policy", "-q", &policy])?;
            recovered_from.push(Instant::now());
        }
        Fault::Receiver(mode) => {
            // Every receiver misbehaves for 1.2 s; the retries (0.5 s and 1.5 s later)
            // reach it once it is well again.
            for r in &receivers {
                r.set(mode);
            }
            tokio::time::sleep(Duration::from_millis(1200)).await;
            for r in &receivers {
                r.set(Mode::Ok);
            }
            recovered_from.push(Instant::now());
        }
    }
    stream.await?;

    // Wait until every receiver has every event, or nothing moves for 20 s.
    let expected = events * WEBHOOKS;
    let delivered_now = |receivers: &[ChaosReceiver]| -> usize {
        receivers
            .iter()
            .map(|r| {
                r.arrivals()
                    .iter()
                    .filter(|a| a.ok)
                    .map(|a| a.event_id.clone())
                    .collect::<HashSet<_>>()
                    .len()
            })
            .sum()
    };
    let mut last = (0, Instant::now());
    loop {
        let n = delivered_now(&receivers);
        if n >= expected {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Compare with what was published and with the log. An attempt is logged before
    // its job is acknowledged, not before the receiver answers: after an outage the
    // log can trail the receivers by the writer's back-off, so wait (20 s at most)
    // until every 2xx answer has its row.
    let read_log = || async {
        let pool = store.pool().get().await?;
        let rows = pool
            .query(
                "SELECT event_id, webhook_id, attempt FROM delivery_log_all WHERE workspace_id = $1",
                &[&workspace_id],
            )
            .await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect::<HashSet<(String, String, i16)>>(),
        )
    };
    let unlogged = |logged: &HashSet<(String, String, i16)>| {
        receivers
            .iter()
            .zip(&webhook_ids)
            .flat_map(|(r, w)| r.arrivals().into_iter().map(move |a| (a, w)))
            .filter(|(a, w)| {
                a.ok && !logged.contains(&(a.event_id.clone(), (*w).clone(), a.attempt as i16))
            })
            .count()
    };
    let log_deadline = Instant::now() + Duration::from_secs(20);
    let mut logged = read_log().await?;
    while unlogged(&logged) > 0 && Instant::now() < log_deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        logged = read_log().await?;
    }
    let published: HashSet<&String> = ids.iter().collect();
    let (mut delivered, mut duplicates, mut not_logged) = (0, 0, 0);
    let mut first_ok_after: HashMap<usize, Instant> = HashMap::new();
    for (receiver, webhook) in receivers.iter().zip(&webhook_ids) {
        let arrivals = receiver.arrivals();
        let mut seen = HashSet::new();
        for a in &arrivals {
            if !logged.contains(&(a.event_id.clone(), webhook.clone(), a.attempt as i16)) && a.ok {
                not_logged += 1;
            }
            if a.ok && published.contains(&a.event_id) {
                if !seen.insert(a.event_id.clone()) {
                    duplicates += 1;
                }
                for (i, from) in recovered_from.iter().enumerate() {
                    if a.at >= *from {
                        let e = first_ok_after.entry(i).or_insert(a.at);
                        if a.at < *e {
                            *e = a.at;
                        }
                    }
                }
            }
        }
        delivered += seen.len();
    }
    let recovery_ms = recovered_from
        .iter()
        .enumerate()
        .filter_map(|(i, from)| {
            first_ok_after
                .get(&i)
                .map(|at| (*at - *from).as_millis() as u64)
        })
        .max()
        .unwrap_or(0);
    let dead_lettered = drain_dead_letters(run, &stage.amqp).await?;
    Ok(Outcome {
        scenario: name.to_owned(),
        events,
        expected,
        delivered,
        lost: expected - delivered.min(expected),
        duplicates,
        attempts_not_logged: not_logged,
        dead_lettered,
        recovery_ms,
        reconnect_ms,
    })
}

/// Takes every message off the run's two `.dead` queues and says how many there were.
async fn drain_dead_letters(run: &Deployment, amqp: &str) -> anyhow::Result<usize> {
    let connection = qr3_broker::connect(amqp, "qr3-chaos-drain").await?;
    let channel = connection.create_channel().await?;
    let mut count = 0;
    for queue in [
        format!("{}.ingest.dead", run.name),
        format!("{}.deliveries.dead", run.name),
    ] {
        while let Some(message) = channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            count += 1;
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(qr3_broker::dead_letters::REASON).cloned());
            println!("chaos: dead letter on {queue}: {reason:?}");
        }
    }
    let _ = connection.close(200, "drained".into()).await;
    Ok(count)
}

/// Stops the cluster node holding most of the workers' connections, measures how long
/// until every worker that lost its connection is connected again, and starts the
/// node again `down_ms` later. Returns the stop's instant and the reconnection time.
async fn stop_node(
    cluster: &mut Cluster,
    prefix: &str,
    procs: &[Proc],
    down_ms: u64,
    kill: bool,
) -> anyhow::Result<(Instant, u64)> {
    let names = [
        format!("qr3-ingest/{prefix}"),
        format!("qr3-sender/{prefix}"),
    ];
    let held = cluster.connections(&names).await?;
    let victim = (0..held.len()).max_by_key(|&i| held[i]).unwrap_or(0);
    if held[victim] == 0 {
        bail!("no worker connection found on any node");
    }
    let leaders = cluster.leaders(victim, &format!("{prefix}.")).await?;
    println!(
        "cluster: worker connections per node {held:?}; stopping {} (leader of {leaders} of the run's queues)",
        cluster.nodes[victim].name
    );
    let workers: Vec<String> = procs
        .iter()
        .filter(|p| p.name.contains("ingest") || p.name.contains("sender"))
        .map(|p| p.metrics.clone())
        .collect();
    let watching = watch_reconnection(workers);
    let stopped_at = Instant::now();
    if kill {
        cluster.kill(victim).await?;
    } else {
        cluster.stop(victim).await?;
    }
    println!(
        "cluster: {} {} ({} ms)",
        cluster.nodes[victim].name,
        if kill { "killed" } else { "stopped" },
        stopped_at.elapsed().as_millis()
    );
    let reconnected = tokio::time::timeout(Duration::from_secs(60), watching)
        .await
        .context("the workers did not reconnect within 60 s")???;
    let (lost_at, back_at) = reconnected;
    let reconnect_ms = (back_at - lost_at).as_millis() as u64;
    println!(
        "cluster: workers lost their node {} ms into the stop; every one connected again {reconnect_ms} ms later",
        (lost_at - stopped_at).as_millis()
    );
    tokio::time::sleep(Duration::from_millis(down_ms)).await;
    let restarting = Instant::now();
    cluster.restart(victim).await?;
    println!(
        "cluster: {} running again ({} ms to boot)",
        cluster.nodes[victim].name,
        restarting.elapsed().as_millis()
    );
    Ok((stopped_at, reconnect_ms))
}

/// Watches the workers' `qr3_broker_connected` every 50 ms (a worker stays down at
/// least 200 ms between connections): resolves to the instant a worker was first seen
/// disconnected and the instant when every worker seen so is connected again.
fn watch_reconnection(
    workers: Vec<String>,
) -> tokio::task::JoinHandle<anyhow::Result<(Instant, Instant)>> {
    tokio::spawn(async move {
        let mut first_lost = None;
        loop {
            let mut all_up = true;
            for metrics in &workers {
                let connected =
                    crate::procs::gauge(metrics, "qr3_broker_connected").await == Some(1.0);
                if !connected {
                    all_up = false;
                    first_lost.get_or_insert_with(Instant::now);
                }
            }
            if let (true, Some(lost_at)) = (all_up, first_lost) {
                return Ok((lost_at, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// A job for a webhook that does not exist (senders skip it), bound for `queue`.
fn filler_job(workspace_id: &str, queue: &str) -> Outgoing {
    let job = qr3_broker::DeliveryJob {
        webhook_id: qr3_domain::WebhookId::generate(),
        workspace_id: qr3_domain::WorkspaceId::parse(workspace_id)
            .expect("the workspace id came from the CLI"),
        event_id: qr3_domain::EventId::generate(),
        event_type: qr3_domain::EventType::QrScanned,
        event_created: qr3_domain::Timestamp::now(),
        attempt: 2,
        trigger: qr3_broker::Trigger::Event,
        body: b"{}".to_vec(),
    };
    Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        properties: job.properties(),
        body: job.body,
    }
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .context("rabbitmqctl")?;
    if !status.success() {
        bail!("rabbitmqctl {} failed", args.join(" "));
    }
    Ok(())
}

/// Closes this run's broker connections (and only those: their names carry the prefix).
fn close_connections(prefix: &str) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .context("rabbitmqctl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines() {
        let ours = [
            format!("\"qr3-sender/{prefix}\""),
            format!("\"qr3-ingest/{prefix}\""),
        ];
        if ours.iter().any(|name| line.contains(name.as_str())) {
            if let Some(pid) = line.split('\t').next() {
                let status = Command::new("rabbitmqctl")
                    .args(["close_connection", pid, "chaos: connection dropped", "-q"])
                    .status()?;
                closed += usize::from(status.success());
            }
        }
    }
    if closed == 0 {
        bail!("found no connection of this run to close");
    }
    Ok(())
}

async fn database(run: &Deployment, sql: &str) -> anyhow::Result<()> {
    let client = qr3_store::connect_once(run.database_url()).await?;
    client.batch_execute(sql).await?;
    Ok(())
}

async fn admin(run: &Deployment, sql: &str) -> anyhow::Result<()> {
    let client = qr3_store::connect_once(run.admin_url()).await?;
    client.batch_execute(sql).await?;
    Ok(())
}
