//! The roles over `amqps://`, against a RabbitMQ node with only a TLS listener whose
//! certificate a CA made up for the test process signed (`amqp.tls_ca_file`).

use std::time::Duration;

use qr3_testkit::{Behaviour, Receiver, TlsRabbitMq};
use serde_json::json;

use crate::helpers::spawn_app_with;

async fn node() -> &'static TlsRabbitMq {
    tokio::task::spawn_blocking(TlsRabbitMq::shared)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn every_role_delivers_over_amqps_trusting_the_configured_ca() {
    let node = node().await;
    let app = spawn_app_with(|s| {
        s.amqp.url = qr3_config::Redacted::new(node.url());
        s.amqp.tls_ca_file = node.ca_file.display().to_string();
    })
    .await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    app.webhook(&receiver.url(), &["qr.scanned"]).await;
    // The CLI's publish, ingest, the sender: all on the TLS node.
    let id = app.publish("qr.scanned", None, json!({"n": 1})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["id"], id.as_str());
}

#[tokio::test]
async fn amqps_without_the_ca_is_refused_with_a_clear_error() {
    let node = node().await;
    let error = qr3_broker::tls::connect(&node.url(), "test", &qr3_broker::BrokerTls::default())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    // A CA file that is not there is named.
    let error = qr3_broker::tls::connect(
        &node.url(),
        "test",
        &qr3_broker::BrokerTls::with_ca_file("/nonexistent/ca.pem"),
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("amqp.tls_ca_file /nonexistent/ca.pem"),
        "{error}"
    );
}
