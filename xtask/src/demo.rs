//! `cargo xtask up`: one command that brings the system up and shows it working.
//!
//! Builds the binary, migrates, starts `qr3-webhooks all` with local-development
//! settings, starts a small receiver on 127.0.0.1 that verifies `X-QR3-Signature`,
//! creates a workspace and a webhook through the API, publishes one event and shows the
//! delivery as the receiver got it and as `GET /v1/webhooks/:id/deliveries` logs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use hmac::Mac;
use qr3_testkit::deployment::READY_WITHIN;
use qr3_testkit::{Deployment, Logs};
use serde_json::Value;

const DEMO_SECRET: &str = "demo-secret-key-0123456789";

pub fn up(root: &Path, listen: &str, exit: bool) -> anyhow::Result<()> {
    crate::cargo(root, &["build", "-p", "qr3-webhooks"])?;
    // The deployment the default settings (and the environment) name, kept when the
    // demo ends; its processes log to this terminal.
    let mut deployment = Deployment::existing(qr3_config::Settings::defaults())
        .with_binary(&root.join("target/debug/qr3-webhooks"), Logs::Inherit)?;
    deployment.set("QR3__API__LISTEN", listen);
    let run = |args: &[&str]| deployment.run(args);

    println!("==> qr3-webhooks migrate");
    deployment.migrate()?;

    println!("==> qr3-webhooks all (api on http://{listen})");
    // Killed when the demo ends, however it ends.
    let mut service = deployment.spawn("all", "all")?;
    service.wait_ready(READY_WITHIN)?;
    let api = format!("http://{listen}");

    let (receiver_url, deliveries) = start_receiver()?;
    println!("==> demo receiver on {receiver_url}");

    let workspace: Value = serde_json::from_str(&run(&["workspace", "create", "demo"])?)?;
    let workspace_id = workspace["workspace_id"]
        .as_str()
        .context("workspace_id")?
        .to_owned();
    let api_key = workspace["api_key"].as_str().context("api_key")?.to_owned();
    println!(
        "==> workspace {workspace_id} (API key printed once by `qr3-webhooks workspace create`)"
    );

    let body = serde_json::json!({ "url": receiver_url, "events": ["qr.scanned", "qr.created"], "secret": DEMO_SECRET });
    let webhook = curl(&[
        "-X",
        "POST",
        &format!("{api}/v1/webhooks"),
        "-H",
        &format!("Authorization: Bearer {api_key}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
    ])?;
    let webhook_id = webhook["id"]
        .as_str()
        .context("the API did not return a webhook id")?
        .to_owned();
    println!(
        "==> POST /v1/webhooks\n{}",
        serde_json::to_string_pretty(&webhook)?
    );

    let data = r#"{"code_id":"qr_abc123","short_code":"r7f3Kx","scan_id":"scn_xyz","country":"AT","device_type":"mobile","os":"iOS"}"#;
    let published = run(&[
        "publish",
        "--workspace",
        &workspace_id,
        "--type",
        "qr.scanned",
        "--data",
        data,
    ])?;
    println!(
        "==> qr3-webhooks publish --type qr.scanned: {}",
        published.trim()
    );

    let (headers, payload, valid) = deliveries
        .recv_timeout(Duration::from_secs(30))
        .context("no delivery reached the demo receiver within 30 s")?;
    println!(
        "==> the receiver got a POST, signature {}:\n{headers}\n{payload}",
        if valid { "VALID" } else { "INVALID" }
    );
    if !valid {
        bail!("the delivery's signature did not verify");
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = curl(&[
        &format!("{api}/v1/webhooks/{webhook_id}/deliveries"),
        "-H",
        &format!("Authorization: Bearer {api_key}"),
    ])?;
    println!(
        "==> GET /v1/webhooks/{webhook_id}/deliveries\n{}",
        serde_json::to_string_pretty(&log)?
    );

    if exit {
        return Ok(());
    }
    println!("\nThe system is up. Try it (ctrl-c stops everything):");
    println!("  export QR3_API_KEY={api_key}");
    println!("  curl -s {api}/v1/webhooks -H \"Authorization: Bearer $QR3_API_KEY\"");
    println!("  QR3__SECRETS__ALLOW_INSECURE_DEV_KEY=true target/debug/qr3-webhooks publish --workspace {workspace_id} --type qr.created --data '{{\"code_id\":\"qr_1\"}}'");
    println!("  curl -s {api}/v1/webhooks/{webhook_id}/deliveries -H \"Authorization: Bearer $QR3_API_KEY\"");
    if let Some(delivery_id) = log["data"][0]["id"].as_str() {
        println!("  curl -s {api}/v1/webhooks/{webhook_id}/deliveries/{delivery_id} -H \"Authorization: Bearer $QR3_API_KEY\"");
    }
    println!(
        "  curl -s {api}/v1/webhooks/{webhook_id}/stats -H \"Authorization: Bearer $QR3_API_KEY\""
    );
    println!("  curl -s {api}/metrics | grep qr3_delivery");
    loop {
        if let Ok((headers, payload, valid)) = deliveries.recv() {
            println!(
                "==> delivery (signature {}):\n{headers}\n{payload}",
                if valid { "VALID" } else { "INVALID" }
            );
        }
    }
}

fn curl(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!(
            "curl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

/// What the demo receiver saw of one request: headers, body, signature valid.
type Seen = (String, String, bool);

/// A one-thread HTTP/1.1 receiver that verifies each request's signature.
fn start_receiver() -> anyhow::Result<(String, mpsc::Receiver<Seen>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/webhooks/qr3", listener.local_addr()?);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                });
                let mut stream = stream;
                loop {
                    let mut head = Vec::new();
                    let mut line = String::new();
                    let mut length = 0usize;
                    let mut signature = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let trimmed = line.trim_end().to_owned();
                        if trimmed.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = trimmed.split_once(':') {
                            let name = name.to_ascii_lowercase();
                            if name == "content-length" {
                                length = value.trim().parse().unwrap_or(0);
                            }
                            if name == "x-qr3-signature" {
                                signature = value.trim().to_owned();
                            }
                            if name.starts_with("x-qr3") || name == "content-type" {
                                head.push(trimmed.clone());
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut mac =
                        hmac::Hmac::<sha2::Sha256>::new_from_slice(DEMO_SECRET.as_bytes())
                            .expect("any key length");
                    mac.update(&body);
                    let valid =
                        signature == format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"received\":true}";
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                    let _ = tx.send((
                        head.join("\n"),
                        String::from_utf8_lossy(&body).into_owned(),
                        valid,
                    ));
                }
            });
        }
    });
    Ok((url, rx))
}
