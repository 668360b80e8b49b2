//! A throwaway deployment: a database and a broker prefix of its own, the settings and
//! the environment that point `qr3-webhooks` at them, role processes started from a
//! built binary and waited for, and a teardown that removes it all (the processes, the
//! prefix's queues and exchanges, the database) however the run ends. The tests, the
//! benchmark and `cargo xtask` all make their deployments with it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qr3_broker::Topology;
use qr3_config::{Redacted, Settings};
use qr3_store::Store;

use crate::{amqp_url, database_server_url, procfs, service::free_port, unique_name, TestDb};

/// How long a role may take to answer `/readyz` with 200 after it started.
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a role may drain after SIGTERM before it is killed.
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// One deployment; dropping it tears it down.
pub struct Deployment {
    /// `qr3_<kind>_<ulid>`: the database's name and the broker prefix (for a deployment
    /// made with [`Deployment::existing`], the prefix its settings name).
    pub name: String,
    /// The deployment as this process sees it: database, broker, prefix, and whatever
    /// an in-process user sets on top. Child processes get [`Deployment::env`] instead.
    pub settings: Settings,
    /// `None` for an existing deployment, which is left in place.
    db: Option<TestDb>,
    bin: Option<PathBuf>,
    /// Where each process's output goes (`<logs>/<name>.log`); inherited when `None`.
    logs: Option<PathBuf>,
    /// Whether `logs` goes with the deployment.
    temporary_logs: bool,
    /// `QR3__…` variables every child process gets on top of the namespace's.
    env: Vec<(String, String)>,
    /// Queues of the prefix declared by the user rather than by `qr3-webhooks`.
    own_queues: Vec<String>,
}

impl Deployment {
    /// A throwaway deployment on the test servers (`QR3_TEST_DATABASE_URL`,
    /// `QR3_TEST_AMQP_URL`); nothing exists until it is migrated.
    pub fn new(kind: &str) -> anyhow::Result<Self> {
        Self::on(kind, &database_server_url(), &amqp_url())
    }

    /// A throwaway deployment on the Postgres server `database_server` reaches (through
    /// its maintenance database) and the broker (or node list) `amqp`.
    pub fn on(kind: &str, database_server: &str, amqp: &str) -> anyhow::Result<Self> {
        let db = TestDb::missing_on(database_server, unique_name(kind))?;
        let mut settings = Settings::defaults();
        settings.database.url = Redacted::new(db.url.clone());
        settings.amqp.url = Redacted::new(amqp.to_owned());
        settings.secrets.allow_insecure_dev_key = true;
        Ok(Self::around_with(db, settings))
    }

    /// A throwaway deployment around `db`, already made (and perhaps migrated) by a
    /// test, with [`crate::test_settings`]' millisecond timings.
    pub fn around(db: TestDb) -> Self {
        let settings = crate::test_settings(&db.url);
        Self::around_with(db, settings)
    }

    fn around_with(db: TestDb, mut settings: Settings) -> Self {
        settings.amqp.prefix = db.name.clone();
        settings.amqp.events_exchange = format!("{}.events", db.name);
        Self {
            name: db.name.clone(),
            settings,
            db: Some(db),
            bin: None,
            logs: None,
            temporary_logs: false,
            env: local_env(),
            own_queues: Vec::new(),
        }
    }

    /// The deployment `settings` already name (`cargo xtask up`'s): its processes
    /// read their database and broker from the inherited environment, and nothing is
    /// removed at the end but the processes.
    pub fn existing(settings: Settings) -> Self {
        Self {
            name: settings.amqp.prefix.clone(),
            settings,
            db: None,
            bin: None,
            logs: None,
            temporary_logs: false,
            env: local_env(),
            own_queues: Vec::new(),
        }
    }

    /// Runs `bin` for its processes and commands, their output going where `logs` says.
    pub fn with_binary(mut self, bin: &Path, logs: Logs) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!("{} does not exist: build it first", bin.display());
        }
        self.temporary_logs = matches!(logs, Logs::Temporary);
        let dir = match logs {
            Logs::Inherit => None,
            Logs::In(dir) => Some(dir),
            Logs::Temporary => Some(std::env::temp_dir().join(&self.name)),
        };
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        self.bin = Some(bin.to_owned());
        self.logs = dir;
        Ok(self)
    }

    /// Sets `QR3__SECTION__KEY` (or any variable) for every child process from now on.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.unset(key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Removes a variable [`Deployment::set`] (or the local profile) gave the children.
    pub fn unset(&mut self, key: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// A queue of the prefix that the user declares (not `qr3-webhooks`), deleted with
    /// the rest.
    pub fn owns_queue(&mut self, name: String) {
        self.own_queues.push(name);
    }

    /// The database's URL.
    pub fn database_url(&self) -> &str {
        self.settings.database.url.expose()
    }

    /// The Postgres server's maintenance database (statements about the database).
    pub fn admin_url(&self) -> &str {
        self.db().admin_url()
    }

    /// The database of a throwaway deployment (store, raw queries).
    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("a throwaway deployment")
    }

    /// A store on the database, with the development key.
    pub fn store(&self) -> &Store {
        &self.db().store
    }

    /// Creates the database and migrates it from this process.
    pub async fn migrate_here(&self) -> anyhow::Result<()> {
        qr3_store::create_database_if_missing(self.database_url()).await?;
        qr3_store::migrate(
            self.store().pool(),
            self.settings.retention.delivery_log_days,
        )
        .await?;
        Ok(())
    }

    /// Every variable a child process gets: the namespace (database, broker, prefix)
    /// of a throwaway deployment, then the local profile and [`Deployment::set`]'s.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = match self.db {
            Some(_) => namespace_env(&self.settings),
            None => Vec::new(),
        };
        env.extend(self.env.iter().cloned());
        env
    }

    /// The settings a child process runs with (from its environment; no file).
    pub fn child_settings(&self) -> Settings {
        let env = self.env();
        Settings::from_vars(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_or_else(|_| self.settings.clone())
    }

    /// The binary, with the children's environment. Their log level is their
    /// settings' (`log.level`): an inherited `RUST_LOG` would win over it.
    pub fn command(&self) -> Command {
        let bin = self.bin.as_deref().expect("with_binary() names the binary");
        let mut command = Command::new(bin);
        command.env_remove("RUST_LOG").envs(self.env());
        command
    }

    /// Runs a short `qr3-webhooks` command to completion and returns its stdout (its
    /// stderr goes to ours).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run qr3-webhooks {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("qr3-webhooks {} failed", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `qr3-webhooks migrate`: creates the database, migrates it, declares the topology.
    pub fn migrate(&self) -> anyhow::Result<()> {
        self.run(&["migrate"]).map(drop).context("migrate")
    }

    /// Creates a workspace with the binary; returns its id and API key.
    pub fn create_workspace(&self, name: &str) -> anyhow::Result<(String, String)> {
        let out: serde_json::Value =
            serde_json::from_str(&self.run(&["workspace", "create", name])?)
                .context("`workspace create` did not print JSON")?;
        let field = |key: &str| -> anyhow::Result<String> {
            Ok(out[key]
                .as_str()
                .with_context(|| format!("`workspace create` printed no {key}"))?
                .to_owned())
        };
        Ok((field("workspace_id")?, field("api_key")?))
    }

    /// Starts `qr3-webhooks <role>` as `name`.
    pub fn spawn(&self, role: &str, name: &str) -> anyhow::Result<Process> {
        self.spawn_with(role, name, &[])
    }

    /// Starts `qr3-webhooks <role>` as `name` with `extra` variables on top. It serves
    /// HTTP on a port of its own: the API's when it runs the API (unless `extra` or
    /// [`Deployment::set`] fix `QR3__API__LISTEN`), else its ops endpoints'.
    pub fn spawn_with(
        &self,
        role: &str,
        name: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let serves_api = matches!(role, "api" | "all");
        let key = if serves_api {
            "QR3__API__LISTEN"
        } else {
            "QR3__METRICS__LISTEN"
        };
        let fixed = extra
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.to_socket_addrs().ok()?.next())
            .filter(|addr| addr.port() != 0);
        let addr = match fixed {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let mut command = self.command();
        command
            .arg(role)
            .env(key, addr.to_string())
            .envs(extra.iter().copied().filter(|(k, _)| *k != key));
        let log = match &self.logs {
            Some(logs) => {
                let path = logs.join(format!("{name}.log"));
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
                Some(path)
            }
            None => None,
        };
        let child = command
            .spawn()
            .with_context(|| format!("cannot start qr3-webhooks {role}"))?;
        Ok(Process {
            name: name.to_owned(),
            role: role.to_owned(),
            addr,
            metrics: format!("http://{addr}/metrics"),
            log,
            child,
        })
    }

    /// Starts the API as `api` and waits until it is ready.
    pub fn start_api(&self) -> anyhow::Result<Process> {
        let mut api = self.spawn("api", "api")?;
        api.wait_ready(READY_WITHIN)?;
        Ok(api)
    }

    /// Removes the prefix's queues and exchanges, as the processes (and this process)
    /// declared them; the processes using them have stopped first (dropping their
    /// [`Process`]es, declared after the deployment, does that).
    async fn remove_broker_objects(&self) {
        let mut topologies = vec![Topology::from_settings(&self.settings)];
        if self.bin.is_some() {
            topologies.push(Topology::from_settings(&self.child_settings()));
        }
        // Only names under the prefix: never another deployment's.
        let ours = |name: &String| name.starts_with(&format!("{}.", self.name));
        let mut queues: Vec<String> = topologies.iter().flat_map(Topology::queues).collect();
        queues.extend(self.own_queues.iter().cloned());
        queues.retain(ours);
        queues.sort();
        queues.dedup();
        let mut exchanges: Vec<String> = topologies.iter().flat_map(Topology::exchanges).collect();
        exchanges.retain(ours);
        exchanges.sort();
        exchanges.dedup();
        delete(self.settings.amqp.url.expose(), &queues, &exchanges).await;
    }
}

/// A throwaway deployment's queues, exchanges and database go with it (and its logs
/// when they were temporary).
impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(dir) = self.logs.as_ref().filter(|_| self.temporary_logs) {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.db.is_none() {
            return;
        }
        on_own_runtime(|| self.remove_broker_objects());
        // The database goes last.
        drop(self.db.take());
    }
}

/// Runs the future `make` makes to completion from synchronous code or a `Drop`
/// (which cannot await, and may run inside a runtime): on a short-lived thread with a
/// runtime of its own, waited for.
fn on_own_runtime<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future,
{
    std::thread::scope(|scope| {
        let _ = scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(make());
                Some(())
            })
            .join();
    });
}

/// Where a deployment's processes write their output.
#[derive(Debug, Clone)]
pub enum Logs {
    /// To this process's stdout and stderr.
    Inherit,
    /// To `<dir>/<process name>.log`, kept.
    In(PathBuf),
    /// To a directory named after the deployment under the system's temporary
    /// directory, removed with the deployment.
    Temporary,
}

/// Deletes the queues and exchanges of `settings`' topology (for a test that made its
/// settings without a [`Deployment`]).
pub async fn remove_topology(settings: &Settings) {
    let topology = Topology::from_settings(settings);
    delete(
        settings.amqp.url.expose(),
        &topology.queues(),
        &topology.exchanges(),
    )
    .await;
}

/// [`remove_topology`] from synchronous code or a `Drop`.
pub fn remove_topology_now(settings: &Settings) {
    on_own_runtime(|| remove_topology(settings));
}

async fn delete(amqp: &str, queues: &[String], exchanges: &[String]) {
    let Ok(connection) = qr3_broker::connect(amqp, "qr3-teardown").await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        for exchange in exchanges {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    }
    let _ = connection.close(200, "torn down".into()).await;
}

/// The variables that point a child process at `settings`' database, broker and prefix.
pub fn namespace_env(settings: &Settings) -> Vec<(String, String)> {
    [
        (
            "QR3__DATABASE__URL",
            settings.database.url.expose().as_str(),
        ),
        ("QR3__AMQP__URL", settings.amqp.url.expose().as_str()),
        ("QR3__AMQP__PREFIX", settings.amqp.prefix.as_str()),
        (
            "QR3__AMQP__EVENTS_EXCHANGE",
            settings.amqp.events_exchange.as_str(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Local development on this machine: the well-known development key, plain-http
/// receivers on loopback addresses, ports chosen by the OS.
fn local_env() -> Vec<(String, String)> {
    [
        ("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true"),
        ("QR3__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
        ("QR3__API__REQUIRE_HTTPS", "false"),
        ("QR3__API__LISTEN", "127.0.0.1:0"),
        ("QR3__METRICS__LISTEN", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A running `qr3-webhooks` role; killed when dropped.
pub struct Process {
    pub name: String,
    pub role: String,
    /// Where it serves `/healthz`, `/readyz` and `/metrics` (the API's address when it
    /// runs the API).
    pub addr: SocketAddr,
    /// Its Prometheus endpoint.
    pub metrics: String,
    log: Option<PathBuf>,
    child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Current resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        procfs::rss_kib(self.pid())
    }

    /// The process's exit status, once it has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Where its output goes, when it goes to a file.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Its output so far (empty when inherited).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Some(Ok(mut file)) = self.log.as_ref().map(std::fs::File::open) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Waits until `/readyz` answers 200, blocking this thread; fails when `within`
    /// passes first or the process exits.
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.answers("/readyz", deadline, within)? {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// [`Process::wait_ready`] for async code whose runtime must keep running
    /// meanwhile (a receiver on the same runtime, say).
    pub async fn ready_within(&mut self, within: Duration) -> anyhow::Result<()> {
        self.answers_within("/readyz", within).await
    }

    /// Waits until it serves HTTP at all (`/healthz` answers 200), ready or not.
    pub async fn listening_within(&mut self, within: Duration) -> anyhow::Result<()> {
        self.answers_within("/healthz", within).await
    }

    async fn answers_within(&mut self, path: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.answers(path, deadline, within)? {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// One look: whether `path` answers 200; an error once the process has exited or
    /// `deadline` has passed.
    fn answers(&mut self, path: &str, deadline: Instant, within: Duration) -> anyhow::Result<bool> {
        if http_status(self.addr, path) == Some(200) {
            return Ok(true);
        }
        if let Some(status) = self.exited() {
            bail!(
                "qr3-webhooks {} ({}) exited with {status}:\n{}",
                self.role,
                self.name,
                self.log()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "qr3-webhooks {} ({}) at {} did not answer {path} within {within:?}",
                self.role,
                self.name,
                self.addr
            );
        }
        Ok(false)
    }

    /// Sends SIGTERM, asking it to drain and exit, and returns at once.
    pub fn signal_stop(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// Sends SIGTERM and waits for the process to drain and exit; its exit status, or
    /// `None` when it had not exited within [`STOP_WITHIN`] (it is killed then).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_stop();
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// [`Process::stop`], consuming the handle.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        self.stop()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET <path>` at `addr`, or `None` when nothing answers in time.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    // Longer than the readiness check's own timeout.
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_one_name_and_children_see_what_is_set() {
        let mut deployment = Deployment::new("unit").unwrap();
        assert!(deployment.name.starts_with("qr3_unit_"));
        assert_eq!(deployment.settings.amqp.prefix, deployment.name);
        assert!(deployment.database_url().ends_with(&deployment.name));
        deployment.set("QR3__DELIVERY__RETRY_DELAYS_MS", "500,1500");
        let child = deployment.child_settings();
        assert_eq!(child.amqp.prefix, deployment.name);
        assert_eq!(
            child.amqp.events_exchange,
            format!("{}.events", deployment.name)
        );
        assert_eq!(child.delivery.retry_delays_ms, vec![500, 1500]);
        assert!(child.secrets.allow_insecure_dev_key);
        deployment.unset("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY");
        assert!(!deployment.child_settings().secrets.allow_insecure_dev_key);
    }
}
