//! A throw-away deployment on this machine for `fuzz` and `load`: its own database and
//! broker namespace, `qr3-webhooks` processes started from a built binary, and
//! everything removed again (processes stopped, queues and exchange deleted, database
//! dropped) when it goes out of scope, however the task ends.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Postgres server used for the sandbox's database (`QR3_TEST_DATABASE_URL`, as the tests).
fn database_server_url() -> String {
    std::env::var("QR3_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ used for the sandbox's namespace (`QR3_TEST_AMQP_URL`, as the tests).
pub fn amqp_url() -> String {
    std::env::var("QR3_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub struct Sandbox {
    bin: PathBuf,
    logs: PathBuf,
    /// `qr3_<kind>_<time>_<pid>`: the database name and the broker prefix.
    pub name: String,
    admin_url: String,
    /// The address the API listens on (`127.0.0.1:<free port>`).
    pub api_addr: String,
    env: Vec<(String, String)>,
    children: Vec<(String, Child)>,
}

impl Sandbox {
    /// A sandbox running `bin`, with local-development settings (the development key,
    /// `http://` targets) and `extra` environment on top. Logs go under `logs`.
    pub fn new(
        bin: &Path,
        kind: &str,
        logs: &Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!("{} does not exist: build it first", bin.display());
        }
        std::fs::create_dir_all(logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let millis = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let name = format!("qr3_{kind}_{millis}_{}", std::process::id());
        let admin_url = database_server_url();
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_owned())
            .unwrap_or_else(|| admin_url.clone());
        let api_addr = format!("127.0.0.1:{}", free_port()?);
        let mut env: Vec<(String, String)> = [
            ("QR3__DATABASE__URL", format!("{base}/{name}")),
            ("QR3__AMQP__URL", amqp_url()),
            ("QR3__AMQP__PREFIX", name.clone()),
            ("QR3__AMQP__EVENTS_EXCHANGE", format!("{name}.events")),
            ("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true".into()),
            ("QR3__API__REQUIRE_HTTPS", "false".into()),
            ("QR3__API__LISTEN", api_addr.clone()),
            ("QR3__METRICS__LISTEN", "127.0.0.1:0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Ok(Self {
            bin: bin.to_path_buf(),
            logs: logs.to_path_buf(),
            name,
            admin_url,
            api_addr,
            env,
            children: Vec::new(),
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs a short `qr3-webhooks` command to completion and returns its stdout.
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

    /// Starts `qr3-webhooks <role>` with its stderr in `<logs>/<role>.log` and `extra`
    /// environment on top of the sandbox's; returns the pid.
    pub fn spawn(&mut self, role: &str, extra: &[(&str, &str)]) -> anyhow::Result<u32> {
        let log = self.log_path(role);
        let child = self
            .command()
            .envs(extra.iter().copied())
            .arg(role)
            .stdout(Stdio::null())
            .stderr(File::create(&log).with_context(|| format!("cannot create {}", log.display()))?)
            .spawn()
            .with_context(|| format!("cannot start qr3-webhooks {role}"))?;
        let pid = child.id();
        self.children.push((role.to_owned(), child));
        Ok(pid)
    }

    pub fn log_path(&self, role: &str) -> PathBuf {
        self.logs.join(format!("{role}.log"))
    }

    /// Migrates, starts the API and waits until `/readyz` answers 200.
    pub fn start_api(&mut self) -> anyhow::Result<()> {
        self.run(&["migrate"])?;
        self.spawn("api", &[])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(&self.api_addr, "/readyz") {
                return Ok(());
            }
            if let Some(status) = self.exited("api") {
                bail!(
                    "qr3-webhooks api exited with {status}; see {}",
                    self.log_path("api").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the API at {} was not ready within 30 s", self.api_addr)
    }

    /// How `role` ended, if it has.
    pub fn exited(&mut self, role: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self.children.iter_mut().find(|(r, _)| r == role)?;
        child.try_wait().ok().flatten()
    }

    /// Creates a workspace; returns its id and API key.
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

    /// The broker names and settings this sandbox's processes use.
    pub fn settings(&self) -> qr3_config::Settings {
        let mut settings = qr3_config::Settings::defaults();
        settings.amqp.prefix = self.name.clone();
        settings.amqp.events_exchange = format!("{}.events", self.name);
        settings
    }

    /// Stops one role with SIGTERM (then SIGKILL after 10 s).
    pub fn stop(&mut self, role: &str) {
        if let Some(i) = self.children.iter().position(|(r, _)| r == role) {
            let (_, child) = self.children.remove(i);
            terminate(child);
        }
    }

    fn cleanup(&mut self) {
        for (_, child) in self.children.drain(..) {
            terminate(child);
        }
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("cannot clean up {}: no runtime", self.name);
            return;
        };
        let topology = qr3_broker::Topology::from_settings(&self.settings());
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        runtime.block_on(async move {
            if let Ok(connection) = qr3_broker::connect(&amqp_url(), "xtask-cleanup").await {
                if let Ok(channel) = connection.create_channel().await {
                    for queue in topology.queues() {
                        let _ = channel.queue_delete(queue.into(), Default::default()).await;
                    }
                    for exchange in topology.exchanges() {
                        let _ = channel
                            .exchange_delete(exchange.into(), Default::default())
                            .await;
                    }
                }
                let _ = connection.close(200, "cleaned up".into()).await;
            }
            if let Ok(client) = qr3_store::connect_once(&admin_url).await {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            }
        });
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A minimal HTTP/1.1 request to `addr`; the status and body, or `None` on any failure.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
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

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, &[], "")
}
