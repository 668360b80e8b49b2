//! `amqp.url` as a list of nodes: connections and every role get past a node that
//! does not answer (a closed port here; `cargo xtask cluster` stops a real node).

use std::time::Duration;

use qr3_config::Redacted;
use qr3_testkit::{Behaviour, Receiver};
use serde_json::json;

use crate::helpers::spawn_app_with;

/// A URL with a password for a port nobody listens on.
fn unreachable_node() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("amqp://guest:n0t-this-one@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn a_connection_skips_an_unreachable_node_of_the_list() {
    let list = format!("{}, {}", unreachable_node(), qr3_testkit::amqp_url());
    let nodes = qr3_broker::Nodes::parse(&list).unwrap();
    assert_eq!(nodes.len(), 2);
    // The start node rotates: over a few connections both orders are tried.
    for _ in 0..4 {
        let connection = qr3_broker::connect(&list, "test-failover")
            .await
            .expect("the reachable node accepts");
        connection.create_channel().await.expect("a usable channel");
        let _ = connection.close(200, "done".into()).await;
    }
}

#[tokio::test]
async fn a_list_of_unreachable_nodes_fails_without_showing_passwords() {
    let list = format!("{},{}", unreachable_node(), unreachable_node());
    let error = qr3_broker::connect(&list, "test-failover")
        .await
        .expect_err("no node answers")
        .to_string();
    assert!(error.contains("no RabbitMQ node accepted"), "{error}");
    assert_eq!(
        error.matches("127.0.0.1:").count(),
        2,
        "each node named: {error}"
    );
    assert!(!error.contains("n0t-this-one"), "{error}");
    let error = qr3_broker::connect("amqp://guest:n0t-this-one@127.0.0.1:1/%2f,ftp://x", "t")
        .await
        .expect_err("not an AMQP list")
        .to_string();
    assert!(error.contains("entry 2"), "{error}");
    assert!(!error.contains("n0t-this-one"), "{error}");
}

#[tokio::test]
async fn every_role_works_when_the_first_node_of_the_list_is_down() {
    let app = spawn_app_with(|s| {
        s.amqp.url = Redacted::new(format!(
            "{},{}",
            unreachable_node(),
            qr3_testkit::amqp_url()
        ));
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let hook = app.webhook(&receiver.url(), &["*"]).await;
    for n in 0..3 {
        app.publish("qr.scanned", None, json!({"n": n})).await;
    }
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    // The API's publisher (a ping) goes through the list too.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/{}/ping", app.api, hook.id))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(receiver.wait_for(4, Duration::from_secs(10)).await.len(), 4);
    app.stop().await;
}

#[test]
fn the_binary_refuses_a_node_list_with_a_bad_entry_without_showing_it() {
    for list in [
        "amqp://guest:n0t-this-one@127.0.0.1:5672/%2f,http://guest:n0t-this-one@h/",
        "amqp://guest:n0t-this-one@127.0.0.1:5672/%2f,amqp://guest:n0t-this-one@[::1/",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"))
            .args(["migrate"])
            .env_remove("RUST_LOG")
            .env("QR3__SECRETS__ALLOW_INSECURE_DEV_KEY", "true")
            .env("QR3__AMQP__URL", list)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("amqp.url entry 2"), "{stderr}");
        assert!(!stderr.contains("n0t-this-one"), "{stderr}");
    }
}

#[tokio::test]
async fn no_password_of_the_list_reaches_the_logs_when_no_node_answers() {
    let db = qr3_testkit::TestDb::new().await.expect("test database");
    let mut settings = qr3_testkit::test_settings(&db.url);
    settings.amqp.url = Redacted::new(format!("{},{}", unreachable_node(), unreachable_node()));
    // `migrate` connects once and reports why it could not, at debug level.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qr3-webhooks"))
        .arg("migrate")
        .env_remove("RUST_LOG")
        .envs(crate::helpers::child_env(&settings, &[]))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.contains("no RabbitMQ node accepted"), "{output}");
    assert!(!output.contains("n0t-this-one"), "{output}");
    assert!(!output.contains("amqp://"), "{output}");
}
