//! SIGTERM cancels the shutdown token.

use std::time::Duration;

use qr3_telemetry::shutdown_token;

#[tokio::test]
async fn sigterm_cancels_the_token() {
    let token = shutdown_token();
    assert!(!token.is_cancelled());

    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());

    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("SIGTERM cancels the token within 5 s");
}
