//! Developer tasks, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! - `up`: bring the whole system up on this machine (Postgres and RabbitMQ running),
//!   show one signed delivery end to end, and keep running until ctrl-c.
//! - `test`: the full test suite, as CI runs it.
//! - `fuzz`: Schemathesis against the served OpenAPI document.
//! - `load`: the API under `wrk`, and the sender's memory with a large backlog.
//! - `chaos`: the fault-injection suite, then `cluster` (`--quick` runs in `test`).
//! - `cluster`: a three-node RabbitMQ cluster on this machine loses the workers' node.
//! - `bench`: the end-to-end benchmark against ceilings measured in the same run.
//! - `tidy`: the docs cannot drift from the code (code map, configuration keys, metrics).

mod demo;
mod fuzz;
mod load;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "qr3 webhooks developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Migrate, start api + ingest + sender, demonstrate one signed delivery, keep running.
    Up {
        /// Stop after the demonstration instead of running until ctrl-c.
        #[arg(long)]
        exit: bool,
        /// Address of the API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Run formatting and lint checks and every test against the local services.
    Test,
    /// Fuzz the API with Schemathesis from its OpenAPI document.
    Fuzz {
        /// Test cases per API operation.
        #[arg(long, default_value_t = 25)]
        examples: u32,
        /// Seed, to reproduce a run; random by default.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure the API under wrk and the sender's memory with a large backlog.
    Load {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Latency target: p99 of each route, in milliseconds.
        #[arg(long, default_value_t = 100.0)]
        p99_ms: f64,
        /// Delivery jobs queued for the sender.
        #[arg(long, default_value_t = 50_000)]
        backlog: usize,
    },
    /// Fault injection: kills, dropped connections, database outages, bad receivers.
    Chaos {
        /// A smaller stream per scenario, as CI runs it.
        #[arg(long)]
        quick: bool,
        /// Build and run release binaries (default: debug, as the tests build them).
        #[arg(long)]
        release: bool,
    },
    /// A three-node RabbitMQ cluster on this machine; the node the workers use stops
    /// under a steady stream and starts again. Fails if anything is lost.
    Cluster {
        /// A smaller stream and a shorter outage, as CI runs it.
        #[arg(long)]
        quick: bool,
        /// Build and run release binaries (default: debug, as the tests build them).
        #[arg(long)]
        release: bool,
    },
    /// The end-to-end benchmark (release build, separate processes, ceilings).
    Bench {
        /// About a minute instead of several.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        #[arg(long, default_value_t = 1)]
        ingests: usize,
        /// Also copy the report and plots into docs/benchmarks/.
        #[arg(long)]
        docs: bool,
        /// A setting for every process, `section.key=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Check that the docs name only modules, configuration keys and metrics that exist.
    Tidy,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Up { exit, listen } => demo::up(&root(), &listen, exit),
        Task::Test => test(&root()),
        Task::Fuzz { examples, seed } => fuzz::fuzz(&root(), examples, seed),
        Task::Load {
            seconds,
            connections,
            p99_ms,
            backlog,
        } => load::load(
            &root(),
            load::LoadOptions {
                seconds,
                connections,
                p99_ms,
                backlog,
            },
        ),
        Task::Chaos { quick, release } => chaos(&root(), quick, release),
        Task::Cluster { quick, release } => cluster(&root(), quick, release),
        Task::Bench {
            quick,
            senders,
            ingests,
            docs,
            settings,
        } => bench(&root(), quick, senders, ingests, docs, &settings),
        Task::Tidy => tidy::tidy(&root()),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn test(root: &Path) -> anyhow::Result<()> {
    install_test_receivers(root)?;
    install_test_browser(root)?;
    tidy::tidy(root)?;
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo(root, &["test", "--workspace"])?;
    fuzz::fuzz(root, 10, None)?;
    // The fault-injection suite and the cluster's node loss, at CI size.
    chaos(root, true, false)?;
    // Kubernetes manifests, alert rules and the dashboard, validated offline.
    let status = Command::new("bash")
        .arg(root.join("deploy/check.sh"))
        .status()
        .context("cannot run deploy/check.sh")?;
    if !status.success() {
        bail!("deploy/check.sh failed");
    }
    Ok(())
}

/// The end-to-end tests run the documentation's Express receiver and receivers using the
/// `standardwebhooks` libraries: install their npm packages (from the lock file) and the
/// PyPI package when they are missing.
fn install_test_receivers(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("crates/cli/tests/receivers");
    if !["express", "standardwebhooks"]
        .iter()
        .all(|package| dir.join("node_modules").join(package).exists())
    {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .context("cannot run npm (Node.js is needed by the end-to-end tests)")?;
        if !status.success() {
            bail!("npm ci failed in {}", dir.display());
        }
    }
    let installed = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "standardwebhooks==1.1.0"])
            .status()
            .context("cannot run python3 -m pip (Python is needed by the end-to-end tests)")?;
        if !status.success() {
            bail!("pip could not install standardwebhooks");
        }
    }
    Ok(())
}

/// The customer portal's browser test drives Debian's headless Chromium through
/// chromedriver: install both with `.ci/install` when either is missing (it uses
/// apt-get, so as root). Nothing downloads a browser of its own.
fn install_test_browser(root: &Path) -> anyhow::Result<()> {
    if ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|binary| Path::new(binary).exists())
    {
        return Ok(());
    }
    let status = Command::new("bash")
        .arg(root.join(".ci/install"))
        .status()
        .context("cannot run .ci/install")?;
    if !status.success() {
        bail!(".ci/install could not install chromium and chromium-driver (apt-get needs root)");
    }
    Ok(())
}

fn bench(
    root: &Path,
    quick: bool,
    senders: usize,
    ingests: usize,
    docs: bool,
    settings: &[String],
) -> anyhow::Result<()> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "qr3-webhooks",
            "-p",
            "qr3-bench",
        ],
    )?;
    let out = root.join("target/bench");
    let mut args = vec![
        "bench".to_owned(),
        "--bin".to_owned(),
        root.join("target/release/qr3-webhooks")
            .display()
            .to_string(),
        "--out".to_owned(),
        out.display().to_string(),
        "--senders".to_owned(),
        senders.to_string(),
        "--ingests".to_owned(),
        ingests.to_string(),
    ];
    if quick {
        args.push("--quick".to_owned());
    }
    for setting in settings {
        args.extend(["--set".to_owned(), setting.clone()]);
    }
    let status = Command::new(root.join("target/release/qr3-bench"))
        .args(&args)
        .current_dir(root)
        .status()
        .context("cannot run qr3-bench")?;
    if !status.success() {
        bail!("the benchmark failed");
    }
    if docs {
        let dir = root.join("docs/benchmarks");
        std::fs::create_dir_all(&dir)?;
        for file in ["report.json", "throughput.svg", "latency.svg"] {
            std::fs::copy(out.join(file), dir.join(file))
                .with_context(|| format!("cannot copy {file}"))?;
        }
    }
    Ok(())
}

fn chaos(root: &Path, quick: bool, release: bool) -> anyhow::Result<()> {
    let profile = build_fault_binaries(root, release)?;
    run_bench_mode(root, "chaos", quick, profile)
        .context("the fault-injection suite found lost deliveries or failed")?;
    // The node-loss scenario, on a cluster of its own.
    run_cluster(root, quick, profile)
}

fn cluster(root: &Path, quick: bool, release: bool) -> anyhow::Result<()> {
    let profile = build_fault_binaries(root, release)?;
    run_cluster(root, quick, profile)
}

/// Builds `qr3-webhooks` and `qr3-bench` for `chaos` and `cluster`, with the
/// fault-injection points (for the scenario where an internal task dies), so the two
/// share one build; returns the profile's directory name.
fn build_fault_binaries(root: &Path, release: bool) -> anyhow::Result<&'static str> {
    let mut build = vec![
        "build",
        "-p",
        "qr3-webhooks",
        "-p",
        "qr3-bench",
        "--features",
        "qr3-webhooks/failpoints",
    ];
    if release {
        build.push("--release");
    }
    cargo(root, &build)?;
    Ok(if release { "release" } else { "debug" })
}

/// `qr3-bench cluster` with the binaries of `profile` (already built).
fn run_cluster(root: &Path, quick: bool, profile: &str) -> anyhow::Result<()> {
    run_bench_mode(root, "cluster", quick, profile)
        .context("the cluster scenario lost deliveries or failed")
}

/// `qr3-bench MODE --bin qr3-webhooks --out target/MODE [--quick]` with the binaries
/// of `profile`.
fn run_bench_mode(root: &Path, mode: &str, quick: bool, profile: &str) -> anyhow::Result<()> {
    let target = root.join("target").join(profile);
    let mut args = vec![
        mode.to_owned(),
        "--bin".to_owned(),
        target.join("qr3-webhooks").display().to_string(),
        "--out".to_owned(),
        root.join("target").join(mode).display().to_string(),
    ];
    if quick {
        args.push("--quick".to_owned());
    }
    let status = Command::new(target.join("qr3-bench"))
        .args(&args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run qr3-bench {mode}"))?;
    if !status.success() {
        bail!("qr3-bench {mode} failed");
    }
    Ok(())
}
