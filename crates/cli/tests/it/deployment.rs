//! The harness's throwaway deployment as the benchmark and `cargo xtask` use it: the
//! binary's roles as processes on a database and prefix of their own, ready when it
//! says so, read from /proc, and nothing left once it is dropped.

use std::path::Path;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use qr3_testkit::{procfs, Deployment, Logs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_get_ready_and_nothing_outlives_the_deployment() {
    let mut deployment = Deployment::new("it")
        .unwrap()
        .with_binary(
            Path::new(env!("CARGO_BIN_EXE_qr3-webhooks")),
            Logs::Temporary,
        )
        .unwrap();
    // A topology of the children's own: the teardown must find it from their settings.
    deployment.set("QR3__DELIVERY__RETRY_DELAYS_MS", "150");
    deployment.migrate().unwrap();
    let (_, api_key) = deployment.create_workspace("w").unwrap();
    let api = deployment.start_api().unwrap();
    let mut sender = deployment.spawn("sender", "sender").unwrap();
    sender.ready_within(Duration::from_secs(20)).await.unwrap();

    let listed = reqwest::Client::new()
        .get(format!("{}/v1/webhooks", api.url()))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let metrics = reqwest::get(&sender.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("qr3_"), "{metrics}");
    assert!(sender.rss_kib().unwrap() > 0);
    assert!(procfs::peak_rss_kib(sender.pid()).unwrap() >= sender.rss_kib().unwrap() / 2);
    assert_eq!(procfs::cpu_time(sender.pid()).unwrap().comm, "qr3-webhooks");
    let exit = sender.stop().expect("the sender drains and exits");
    assert!(exit.success(), "{exit:?}");
    assert!(sender.log().contains("sender"), "{}", sender.log());

    let name = deployment.name.clone();
    let admin_url = deployment.admin_url().to_owned();
    let logs = api.log_path().unwrap().parent().unwrap().to_owned();
    assert!(deployment.db().exists().await.unwrap());
    drop(api);
    drop(sender);
    drop(deployment);

    let client = qr3_store::connect_once(&admin_url).await.unwrap();
    let left = client
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap();
    assert!(left.is_empty(), "the database {name} is still there");
    let connection = qr3_broker::connect(&qr3_testkit::amqp_url(), "test")
        .await
        .unwrap();
    for queue in [format!("{name}.deliveries"), format!("{name}.retry.150ms")] {
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        assert!(declared.is_err(), "{queue} is still there");
    }
    assert!(!logs.exists(), "{} is still there", logs.display());
}
