//! Idempotent ingest: claiming events, finishing them, and what a claim leaves behind
//! on its pooled connection.

use std::time::Duration;

use qr3_config::Settings;
use qr3_domain::{EventId, EventType};
use qr3_store::{ClaimOutcome, EventKey, SecretCipher, Store};
use qr3_testkit::TestDb;

fn key(workspace: &qr3_domain::WorkspaceId) -> EventKey {
    EventKey {
        workspace_id: workspace.clone(),
        event_id: EventId::generate(),
        event_type: EventType::QrScanned,
    }
}

#[tokio::test]
async fn a_claim_is_taken_once_and_a_finished_event_is_a_duplicate() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap().id;
    let (a, b) = (key(&ws), key(&ws));
    let lease = Duration::from_secs(10);
    let claims = db
        .store
        .claim_events(&[a.clone(), b.clone()], lease)
        .await
        .unwrap();
    assert_eq!(claims, [ClaimOutcome::Claimed, ClaimOutcome::Claimed]);
    // Claimed by another worker and not finished: busy, until its lease runs out.
    let again = db
        .store
        .claim_events(std::slice::from_ref(&a), lease)
        .await
        .unwrap();
    assert_eq!(again, [ClaimOutcome::InProgress]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken_over = db
        .store
        .claim_events(std::slice::from_ref(&a), Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(taken_over, [ClaimOutcome::Claimed]);
    db.store.finish_events(&[(&a, 3), (&b, 0)]).await.unwrap();
    let after = db.store.claim_events(&[a, b], lease).await.unwrap();
    assert_eq!(
        after,
        [ClaimOutcome::AlreadyDone, ClaimOutcome::AlreadyDone]
    );
    let rows = db
        .query("SELECT webhooks FROM ingested_events ORDER BY webhooks")
        .await
        .unwrap();
    let counts: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(counts, [0, 3]);
}

#[tokio::test]
async fn a_claim_leaves_its_connection_committing_durably() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap().id;
    // One connection, so the check below runs on the one the claim used.
    let mut settings = Settings::defaults();
    settings.secrets.allow_insecure_dev_key = true;
    let store = Store::new(
        qr3_store::connect(&db.url, 1).unwrap(),
        SecretCipher::new(&settings.encryption_key().unwrap()),
    );
    let event = key(&ws);
    store
        .claim_events(std::slice::from_ref(&event), Duration::from_secs(10))
        .await
        .unwrap();
    store.finish_events(&[(&event, 1)]).await.unwrap();
    let client = store.pool().get().await.unwrap();
    let setting: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        setting, "on",
        "the delivery log on this connection stays durable"
    );
    drop(client);
    store.pool().close();
}

#[tokio::test]
async fn events_of_a_workspace_that_is_not_live_are_not_claimed() {
    let db = TestDb::new().await.unwrap();
    let live = db.store.create_workspace("live").await.unwrap().id;
    let erasing = db.store.create_workspace("erasing").await.unwrap().id;
    let platform = qr3_domain::WorkspaceId::parse("acme-42").unwrap();
    // What a crash in the middle of an erasure leaves: the workspace marked.
    db.query(&format!(
        "UPDATE workspaces SET deleted_at = now() WHERE id = '{erasing}'"
    ))
    .await
    .unwrap();
    let lease = Duration::from_secs(10);
    let keys = [key(&live), key(&erasing), key(&platform)];
    let claims = db.store.claim_events(&keys, lease).await.unwrap();
    assert_eq!(
        claims,
        [
            ClaimOutcome::Claimed,
            ClaimOutcome::UnknownWorkspace,
            ClaimOutcome::UnknownWorkspace
        ]
    );
    let rows = db
        .query("SELECT workspace_id FROM ingested_events")
        .await
        .unwrap();
    let claimed: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(claimed, [live.to_string()], "no row for the others");

    // Once the platform creates it under its own id, its events are claimed.
    let name = qr3_domain::WorkspaceName::parse("Acme").unwrap();
    db.store.upsert_workspace(&platform, &name).await.unwrap();
    let claims = db
        .store
        .claim_events(&[key(&platform)], lease)
        .await
        .unwrap();
    assert_eq!(claims, [ClaimOutcome::Claimed]);
}
