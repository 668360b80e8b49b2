//! The operator interface: subcommands, `--help`, `--config`, `QR3__` environment.

use std::process::Command;

use qr3_testkit::TestDb;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn help_lists_every_subcommand_at_every_level() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "migrate",
        "api",
        "ingest",
        "sender",
        "all",
        "maintain",
        "workspace",
        "publish",
        "--config",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}: {text}");
    }
    for args in [
        &["workspace", "--help"][..],
        &["workspace", "create", "--help"],
        &["publish", "--help"],
        &["sender", "--help"],
    ] {
        assert!(
            bin().args(args).output().unwrap().status.success(),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn workspace_create_prints_json_and_config_layers_apply() {
    let db = TestDb::new().await.unwrap();
    let dir = std::env::temp_dir().join(qr3_testkit::unique_name("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("qr3.toml");
    // The file points at a database that does not exist; the environment wins.
    std::fs::write(&file, "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/does_not_exist\"\n[secrets]\nallow_insecure_dev_key = true\n").unwrap();
    let out = bin()
        .args([
            "--config",
            file.to_str().unwrap(),
            "workspace",
            "create",
            "Acme GmbH",
        ])
        .env("QR3__DATABASE__URL", &db.url)
        .env("QR3__DELIVERY__RETRY_DELAYS_MS", "1000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ws = json["workspace_id"].as_str().unwrap();
    let key = json["api_key"].as_str().unwrap();
    assert!(ws.starts_with("ws_") && key.starts_with("qr3k_"));
    assert_eq!(json.as_object().unwrap().len(), 2);
    assert_eq!(
        db.store.authenticate(key).await.unwrap().unwrap().as_str(),
        ws
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn invalid_configuration_is_refused_with_a_clear_message() {
    let out = bin()
        .args(["migrate"])
        .env("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true")
        .env("QR3__DELIVERY__TIMEOUT_MS", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.timeout_ms must be positive"));
    let out = bin()
        .args(["migrate"])
        .env_remove("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "no encryption key, no start");
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets.encryption_key is not set"));
}

#[tokio::test]
async fn maintain_runs_once_on_a_migrated_database_and_refuses_an_unmigrated_one() {
    let db = TestDb::new().await.unwrap();
    let run = |url: &str| {
        bin()
            .arg("maintain")
            .env("QR3__DATABASE__URL", url)
            .env("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true")
            .output()
            .unwrap()
    };
    // A coming day's delivery-log partition is missing (nobody ran maintenance for a
    // week, say): one run creates it again.
    let client = db.store.pool().get().await.unwrap();
    let partition = client
        .query_one(
            "SELECT 'delivery_attempts_p' || to_char(current_date + 5, 'YYYYMMDD')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    client
        .execute(&format!("DROP TABLE {partition}"), &[])
        .await
        .unwrap();
    let exists = || async {
        client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&partition])
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    assert!(!exists().await);
    let out = run(&db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(exists().await, "{partition} was created again");

    let empty = TestDb::empty().await.unwrap();
    let out = run(&empty.url);
    assert!(!out.status.success(), "an unmigrated database is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("qr3-webhooks migrate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
