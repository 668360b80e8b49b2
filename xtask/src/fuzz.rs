//! `cargo xtask fuzz`: Schemathesis against the served OpenAPI document.
//!
//! Starts `qr3-webhooks api` in a throwaway deployment (fresh database, own broker namespace,
//! production target rules: private addresses refused, no sender running so nothing is
//! ever delivered anywhere, an admin token of its own), creates a workspace, and lets
//! Schemathesis generate valid and invalid requests for every operation from
//! `/v1/openapi.json`: first the `/v1` operations with the workspace's API key, then the
//! operator's `/admin/v1` (tag `admin`) with the admin token. The run fails on any 5xx,
//! any response that breaks the document (status, content type, headers, body schema),
//! any accepted invalid request, and any API key or admin token in the API's log.
//!
//! One check is left out: `positive_data_acceptance` expects every request that fits
//! the schema to succeed, but some rules cannot be written in JSON Schema (a `cursor`
//! is opaque and only valid as the server issued it; a `url` must not reach an
//! internal address), so schema-valid requests are rightly refused with 422 there.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use qr3_domain::WorkspaceId;

use qr3_testkit::{Deployment, Logs};

/// Schemathesis 4's command line is what the arguments below are written for.
const SCHEMATHESIS: &str = "schemathesis>=4,<5";

pub fn fuzz(root: &Path, examples: u32, seed: Option<u64>) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_schemathesis()?;
    crate::cargo(root, &["build", "--quiet", "-p", "qr3-webhooks"])?;
    let logs = root.join("target/fuzz");
    // This deployment's own, from the OS CSPRNG (two ULIDs' random bits).
    let admin_token = format!(
        "fuzz-admin-{}-{}",
        WorkspaceId::generate(),
        WorkspaceId::generate()
    );
    let mut deployment = Deployment::new("fuzz")?.with_binary(
        &root.join("target/debug/qr3-webhooks"),
        Logs::In(logs.clone()),
    )?;
    for (key, value) in [
        // Production rules for targets; no sender runs, so nothing is delivered.
        ("QR3__DELIVERY__ALLOW_PRIVATE_TARGETS", "false"),
        // The ping endpoint waits for an attempt no sender will make.
        ("QR3__API__PING_WAIT_MS", "20"),
        // Schemathesis sends hundreds of requests a second with one key; at the
        // default per-key limit most would be 429s and test nothing else.
        ("QR3__API__RATE_LIMIT_PER_SECOND", "1000000"),
        ("QR3__API__RATE_LIMIT_BURST", "1000000"),
        ("QR3__LOG__LEVEL", "info"),
        ("QR3__API__ADMIN_TOKEN", &admin_token),
    ] {
        deployment.set(key, value);
    }
    deployment.migrate()?;
    let mut api = deployment.start_api()?;
    let api_log_path = logs.join(format!("{}.log", api.name));
    let (_, api_key) = deployment.create_workspace("fuzz")?;

    let schema = format!("{}/v1/openapi.json", api.url());
    let examples = examples.to_string();
    let seed = seed.map(|s| s.to_string());
    // Each credential opens only its own API, so each part of the document is run with
    // its own; the other part would only ever answer 401.
    for (part, credential, filter) in [
        ("/v1 with the API key", &api_key, "--exclude-tag"),
        (
            "/admin/v1 with the admin token",
            &admin_token,
            "--include-tag",
        ),
    ] {
        let authorization = format!("Authorization: Bearer {credential}");
        let mut args = vec![
            "-m",
            "schemathesis.cli",
            "run",
            &schema,
            filter,
            "admin",
            "--header",
            &authorization,
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            &examples,
            "--request-timeout",
            "10",
            "--max-failures",
            "10",
        ];
        if let Some(seed) = &seed {
            args.extend(["--seed", seed]);
        }
        println!("==> schemathesis run {schema}: {part} ({examples} examples per operation)");
        let status = Command::new("python3")
            .args(&args)
            .current_dir(&logs)
            .env("NO_COLOR", "1")
            .status()
            .context("cannot run schemathesis")?;
        if api.exited().is_some() {
            bail!("the API died during the fuzz run:\n{}", api.log());
        }
        if !status.success() {
            bail!(
                "schemathesis found problems in {part} (API log: {})",
                api_log_path.display()
            );
        }
    }
    let api_log = api.log();
    // The key and the token went out with every request; neither may come back in a
    // log line.
    let key_secret = api_key.rsplit('_').next().unwrap_or(&api_key);
    if api_log.contains(key_secret) {
        bail!("the API key appeared in the API's log");
    }
    if api_log.contains(&admin_token) {
        bail!("the admin token appeared in the API's log");
    }
    if api_log.contains("panicked") {
        bail!("the API panicked:\n{api_log}");
    }
    println!(
        "==> fuzz: no server error and no response outside the document ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs Schemathesis 4 with pip unless it is already there.
fn ensure_schemathesis() -> anyhow::Result<()> {
    let installed = Command::new("python3")
        .args([
            "-c",
            "import schemathesis, sys; sys.exit(0 if schemathesis.__version__.startswith('4.') else 1)",
        ])
        .output()
        .context("cannot run python3 (the fuzz run needs Python 3 and pip)")?
        .status
        .success();
    if installed {
        return Ok(());
    }
    println!("==> python3 -m pip install {SCHEMATHESIS}");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ])
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!("pip could not install {SCHEMATHESIS}");
    }
    Ok(())
}
