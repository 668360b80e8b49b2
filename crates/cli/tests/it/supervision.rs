//! A role that ends before shutdown was requested stops the whole process with an
//! error, promptly, instead of leaving it alive doing nothing.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use qr3_webhooks::{app, Roles};

use crate::helpers::{delete_broker_objects, spawn_app};

#[tokio::test]
async fn a_role_that_fails_stops_every_role_and_the_process_fails() {
    let mut app = spawn_app().await;
    let running = app.running.take().unwrap();
    let api = app.api.clone();
    // Ready once the workers have their first broker connections, which start-up does
    // not wait for.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{api}/readyz"))
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "the app never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let failing_at = Instant::now() + Duration::from_millis(50);
    running
        .supervise("doomed", async move {
            tokio::time::sleep_until(failing_at.into()).await;
            Err(anyhow!("lost its connection for good"))
        })
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.failed())
        .await
        .expect("the failure is noticed");
    assert!(
        failing_at.elapsed() < Duration::from_secs(1),
        "noticed {:?} after the role failed",
        failing_at.elapsed()
    );

    let error = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("the other roles drain within the grace period")
        .unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "role doomed failed: lost its connection for good"
    );
    assert!(
        reqwest::get(format!("{api}/healthz")).await.is_err(),
        "the API has stopped listening"
    );
    delete_broker_objects(&app.settings).await;
}

#[tokio::test]
async fn a_worker_process_whose_role_returns_or_panics_fails() {
    let app = spawn_app().await;
    for (task, expected) in [
        (
            Box::pin(async { Ok(()) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
            "role early stopped before shutdown was requested",
        ),
        (
            Box::pin(async { panic!("an invariant broke") }),
            "role early panicked: an invariant broke",
        ),
    ] {
        let sender = app::start(app.settings.clone(), Roles::SENDER)
            .await
            .unwrap();
        let ops = format!("http://{}", sender.ops_addr.unwrap());
        sender.supervise("early", task).unwrap();
        tokio::time::timeout(Duration::from_secs(5), sender.failed())
            .await
            .expect("the failure is noticed");
        // Draining, as after SIGTERM: the ops endpoints say so until the end.
        let readyz = reqwest::get(format!("{ops}/readyz")).await.unwrap();
        assert_eq!(readyz.status(), 503);
        assert!(readyz.text().await.unwrap().contains("draining"));

        let error = sender.stop().await.unwrap_err();
        assert_eq!(format!("{error:#}"), expected);
    }
    app.stop().await;
}
