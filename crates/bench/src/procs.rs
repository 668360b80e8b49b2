//! The system under test as separate processes, as production runs it, with their
//! resident memory sampled from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// Where to find things and how to configure every process of one run.
#[derive(Clone)]
pub struct Env {
    pub bin: PathBuf,
    pub logs: PathBuf,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn with(&self, key: &str, value: &str) -> Env {
        let mut env = self.clone();
        env.vars.retain(|(k, _)| k != key);
        env.vars.push((key.to_owned(), value.to_owned()));
        env
    }

    /// Runs a one-shot subcommand and returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run qr3-webhooks {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("qr3-webhooks {} failed", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running role; its logs go to `<logs>/<name>.log`.
    pub fn spawn(&self, role: &str, name: &str) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(&self.logs)?;
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        // A port of its own for /metrics, so the benchmark can read its counters.
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&self.bin)
            .arg(role)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("QR3__METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start qr3-webhooks {role}"))?;
        Ok(Proc {
            name: name.to_owned(),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            child,
        })
    }
}

/// A running role; killed when dropped.
pub struct Proc {
    pub name: String,
    /// Its Prometheus endpoint.
    pub metrics: String,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        status_field(self.pid(), "VmRSS:")
    }

    /// The process's exit status, once it has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The sum of every series of each counter in `names` on a process's /metrics (0 for a
/// counter not exported yet, or when the process does not answer).
pub async fn counters(metrics: &str, names: &[&str]) -> Vec<f64> {
    let text = match reqwest::get(metrics).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    names
        .iter()
        .map(|name| {
            text.lines()
                .filter(|line| {
                    line.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect()
}

/// Waits until the API at `api` answers `/readyz` with 200 (30 s at most).
pub async fn wait_ready(api: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if reqwest::get(format!("{api}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("the API at {api} did not become ready")
}

/// The value of an unlabelled gauge on a process's /metrics; `None` when the process
/// does not answer or does not export it.
pub async fn gauge(metrics: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(metrics).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
