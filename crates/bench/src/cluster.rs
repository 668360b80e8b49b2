//! `cargo xtask cluster` (also the last scenario of `cargo xtask chaos`): a three-node
//! RabbitMQ cluster on this machine, the roles (ingest, two senders, the API) given
//! every node's URL, and under the chaos harness's steady stream the node holding most
//! of the workers' connections is stopped (`rabbitmqctl stop`) and later started
//! again, then, in a second scenario, killed (SIGKILL) and started again. Nothing may
//! be lost; duplicates and the time until every worker is connected again are
//! reported.

use anyhow::bail;

use crate::chaos::{self, Fault, Outcome, Stage};
use crate::cluster_nodes::Cluster;
use crate::Common;

#[derive(clap::Args, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
    /// A smaller stream and a shorter outage (for CI).
    #[arg(long)]
    pub quick: bool,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    let dir = args.common.out.join("cluster");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cluster = Cluster::start(&dir, &id).await?;
    let result = tokio::select! {
        result = on_cluster(&args, &mut cluster) => result,
        // Ctrl-C still stops the nodes (the roles are killed as their handles drop).
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Stops every node and removes its data, whatever the result.
    drop(cluster);
    let outcomes = result?;
    chaos::report(&args.common.out.join("cluster.json"), &outcomes)
}

async fn on_cluster(args: &ClusterArgs, cluster: &mut Cluster) -> anyhow::Result<Vec<Outcome>> {
    let common = Common {
        amqp: cluster.urls(),
        ..args.common.clone()
    };
    let mut run = crate::deployment("cluster", &common)?;
    chaos::configure(&mut run);
    run.migrate()?;
    let result = async {
        check_replication(cluster, &run.name).await?;
        let procs = vec![
            run.spawn("ingest", "cluster-ingest")?,
            run.spawn("sender", "cluster-sender-1")?,
            run.spawn("sender", "cluster-sender-2")?,
            run.spawn("api", "cluster-api")?,
        ];
        let mut stage = Stage::new(&run, &common.amqp, procs, Some(&mut *cluster)).await?;
        let (events, rate, down_ms) = if args.quick {
            (1500, 100, 2000)
        } else {
            (4000, 200, 5000)
        };
        let mut outcomes = Vec::new();
        for (index, (name, kill)) in [
            ("cluster node stopped and restarted", false),
            ("cluster node SIGKILLed and restarted", true),
        ]
        .into_iter()
        .enumerate()
        {
            println!("cluster: {name}…");
            let outcome = chaos::scenario(
                &mut stage,
                index,
                name,
                Fault::StopNode {
                    millis: down_ms,
                    kill,
                },
                (events, rate),
            )
            .await;
            match outcome {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => {
                    stage.terminate();
                    return Err(error);
                }
            }
        }
        stage.terminate();
        anyhow::Ok(outcomes)
    }
    .await;
    // Removes the run's queues, exchanges and database while the cluster still runs.
    drop(run);
    result
}

/// Every queue of the run is a quorum queue with a member on each of the three nodes.
async fn check_replication(cluster: &Cluster, prefix: &str) -> anyhow::Result<()> {
    let text = cluster
        .ctl(
            &cluster.nodes[0].name,
            &[
                "list_queues",
                "name",
                "type",
                "members",
                "-q",
                "--no-table-headers",
            ],
        )
        .await?;
    let ours: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(&format!("{prefix}.")))
        .collect();
    if ours.is_empty() {
        bail!("the run's queues are not on the cluster");
    }
    for line in &ours {
        let on_every_node = cluster
            .nodes
            .iter()
            .all(|node| line.contains(node.name.as_str()));
        if !line.contains("quorum") || !on_every_node {
            bail!("queue not replicated to every node: {line}");
        }
    }
    // Declared through one node, every queue has its leader there: spread the
    // leaders, so that losing a node also moves some leaders.
    let pattern = format!("^{}\\.", prefix.replace('.', "\\."));
    cluster
        .cli(
            "rabbitmq-queues",
            &cluster.nodes[0].name,
            &["rebalance", "quorum", "--queue-pattern", &pattern, "-q"],
        )
        .await?;
    let mut leaders = Vec::new();
    for i in 0..cluster.nodes.len() {
        leaders.push(cluster.leaders(i, &format!("{prefix}.")).await?);
    }
    println!(
        "cluster: {} quorum queues, each with a member on all 3 nodes; leaders per node {leaders:?}",
        ours.len()
    );
    Ok(())
}
