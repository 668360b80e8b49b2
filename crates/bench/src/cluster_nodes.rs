//! A RabbitMQ cluster of three nodes on this machine for `cargo xtask cluster`: each
//! node with its own name, AMQP and distribution ports (chosen free by the operating
//! system), data and log directories and configuration file, one Erlang cookie shared
//! by the nodes and the CLI calls, joined with `stop_app` / `join_cluster` /
//! `start_app`. No management plugin. Every node is stopped and its data removed when
//! the [`Cluster`] is dropped, whatever happened before.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qr3_testkit::service::free_port;
use tokio::process::{Child, Command};

/// How long a node may take to boot (or to boot again) before the run fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// One node of the cluster.
pub struct Node {
    /// Erlang node name, `qr3-<run>-<n>@localhost`.
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// The `rabbitmq-server` script while the node runs.
    server: Option<Child>,
}

impl Node {
    /// This node's AMQP URL (the stock `guest` user, which may log in over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }
}

/// Three nodes clustered together; stopped and removed on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
    /// Where `rabbitmq-server` and `rabbitmqctl` live.
    scripts: PathBuf,
}

impl Cluster {
    /// Starts three nodes under `dir` and joins the second and third to the first.
    pub async fn start(dir: &Path, run_id: &str) -> anyhow::Result<Self> {
        let scripts = scripts_dir()?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        // The cookie the nodes and our CLI calls share (HOME points here); a run's own.
        let cookie = dir.join(".erlang.cookie");
        if !cookie.exists() {
            std::fs::write(
                &cookie,
                format!("QR3CLUSTER{}", run_id.to_ascii_uppercase()),
            )?;
            set_owner_only(&cookie)?;
        }
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let short = &run_id[run_id.len().saturating_sub(6)..];
        let mut nodes = Vec::new();
        for n in 1..=3 {
            let node_dir = dir.join(format!("node{n}"));
            std::fs::create_dir_all(&node_dir)?;
            let (amqp_port, dist_port) = (free_port()?, free_port()?);
            std::fs::write(
                node_dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.1 = 127.0.0.1:{amqp_port}\n\
                     log.file.level = info\n\
                     log.console = false\n"
                ),
            )?;
            nodes.push(Node {
                name: format!("qr3-{short}-{n}@localhost"),
                amqp_port,
                dist_port,
                dir: node_dir,
                server: None,
            });
        }
        let mut cluster = Self {
            nodes,
            dir,
            scripts,
        };
        let started = Instant::now();
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        for i in 0..3 {
            cluster.wait_up(i).await?;
        }
        for i in 1..3 {
            let node = cluster.nodes[i].name.clone();
            let first = cluster.nodes[0].name.clone();
            cluster.ctl(&node, &["stop_app"]).await?;
            cluster.ctl(&node, &["join_cluster", &first]).await?;
            cluster.ctl(&node, &["start_app"]).await?;
        }
        for i in 0..3 {
            cluster.wait_up(i).await?;
        }
        println!(
            "cluster: 3 nodes up and joined in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            cluster
                .nodes
                .iter()
                .map(|n| format!("{} on :{}", n.name, n.amqp_port))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(cluster)
    }

    /// Every node's URL, comma-separated: the `amqp.url` of the roles.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `rabbitmqctl -n <node> <args>` with the cluster's cookie; its stdout.
    pub async fn ctl(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        self.cli("rabbitmqctl", node, args).await
    }

    /// Runs one of the RabbitMQ CLI tools (`rabbitmqctl`, `rabbitmq-queues`) against
    /// `node` with the cluster's cookie; its stdout.
    pub async fn cli(&self, tool: &str, node: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(tool)
            .arg("-n")
            .arg(node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} -n {node} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops node `i` (the whole Erlang node, as an operator or a crash would) and
    /// waits for its server process to exit.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.nodes[i].name.clone();
        self.ctl(&name, &["stop"]).await?;
        if let Some(mut server) = self.nodes[i].server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server.wait()).await;
        }
        Ok(())
    }

    /// Kills node `i`'s Erlang VM with SIGKILL (a crash: no goodbye to clients or
    /// peers) and waits for its server process to exit.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let pid_file = node.dir.join("mnesia").join(format!("{}.pid", node.name));
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("cannot read {}", pid_file.display()))?;
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -KILL {} failed", pid.trim());
        }
        if let Some(mut server) = self.nodes[i].server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server.wait()).await;
        }
        Ok(())
    }

    /// Starts node `i` again on its data directory (it rejoins the cluster) and waits
    /// until it accepts AMQP connections.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)?;
        self.wait_up(i).await
    }

    /// How many connections whose name contains one of `names` each node holds
    /// (`list_connections` answers for the whole cluster; a connection's process id,
    /// `<node.n.m>`, names its node).
    pub async fn connections(&self, names: &[String]) -> anyhow::Result<Vec<usize>> {
        let running = self
            .nodes
            .iter()
            .find(|n| n.server.is_some())
            .context("no node is running")?;
        let text = self
            .ctl(
                &running.name,
                &["list_connections", "pid", "client_properties", "-q"],
            )
            .await?;
        Ok(self
            .nodes
            .iter()
            .map(|node| {
                text.lines()
                    .filter(|line| line.starts_with(&format!("<{}.", node.name)))
                    .filter(|line| names.iter().any(|n| line.contains(n.as_str())))
                    .count()
            })
            .collect())
    }

    /// How many of the queues whose name starts with `prefix` have their leader on
    /// node `i`.
    pub async fn leaders(&self, i: usize, prefix: &str) -> anyhow::Result<usize> {
        let text = self
            .ctl(
                &self.nodes[i].name,
                &["list_queues", "name", "leader", "-q", "--no-table-headers"],
            )
            .await?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with(prefix) && line.ends_with(self.nodes[i].name.as_str()))
            .count())
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.scripts.join(tool));
        command
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .current_dir(&self.dir)
            .kill_on_drop(false);
        command
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("server.out"))?;
        let mut command = self.command("rabbitmq-server");
        command
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node.dir.join("advanced.config"),
            )
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", node.name))?;
        self.nodes[i].server = Some(child);
        Ok(())
    }

    /// Waits until node `i` accepts AMQP connections (its listener opens last in boot).
    async fn wait_up(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let addr = format!("127.0.0.1:{}", self.nodes[i].amqp_port);
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(());
            }
            if let Some(server) = self.nodes[i].server.as_mut() {
                if let Some(status) = server.try_wait()? {
                    bail!(
                        "{} exited while booting ({status}); see {}",
                        self.nodes[i].name,
                        self.nodes[i].dir.join("server.out").display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept AMQP connections within {} s",
                    self.nodes[i].name,
                    BOOT_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    /// Stops every node still running: gracefully (at most [`STOP_TIMEOUT`]; a node
    /// still booting, waiting for peers already stopped, would not answer), then by
    /// SIGKILL to the Erlang VM whose pid the node wrote and to the script we started.
    /// Then removes the data.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let Some(mut server) = node.server.take() else {
                continue;
            };
            let stopped = std::process::Command::new(self.scripts.join("rabbitmqctl"))
                .env("HOME", &self.dir)
                .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
                .args(["-n", &node.name, "stop", "-q"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .is_ok_and(|mut ctl| {
                    let done = wait_child(|| ctl.try_wait().ok().flatten(), STOP_TIMEOUT);
                    if done.is_none() {
                        let _ = ctl.kill();
                        let _ = ctl.wait();
                    }
                    done.is_some_and(|s| s.success())
                });
            if !stopped {
                let pid_file = node.dir.join("mnesia").join(format!("{}.pid", node.name));
                if let Ok(pid) = std::fs::read_to_string(pid_file) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", pid.trim()])
                        .status();
                }
                let _ = server.start_kill();
            }
            let _ = wait_child(|| server.try_wait().ok().flatten(), STOP_TIMEOUT);
        }
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(node.dir.join("mnesia"));
        }
    }
}

/// How long dropping the cluster waits for one node to stop by itself.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `exited` every 100 ms until it says the process exited, or `timeout`.
fn wait_child(
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = exited() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The directory of `rabbitmq-server` and `rabbitmqctl`: Debian's own scripts (not the
/// `/usr/sbin` wrappers, which switch to the `rabbitmq` user and its cookie), or
/// `RABBITMQ_SCRIPTS_DIR`, or wherever `rabbitmq-server` is on the `PATH`.
fn scripts_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RABBITMQ_SCRIPTS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").exists() {
        return Ok(debian);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("rabbitmq-server").exists())
        .context("rabbitmq-server not found (set RABBITMQ_SCRIPTS_DIR)")
}

fn set_owner_only(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))?;
    Ok(())
}
