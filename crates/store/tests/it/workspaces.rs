//! Workspaces (created, renamed, paged, erased), API keys and secrets at rest.

use std::time::Duration;

use qr3_domain::Trigger;
use qr3_domain::{
    DeliveryId, EventId, EventType, Subscriptions, TargetPolicy, Timestamp, WebhookId,
    WebhookSecret, WebhookUrl, WorkspaceId, WorkspaceName,
};
use qr3_store::{AttemptRecord, AttemptStatus, Erasure, EventKey, NewWebhook, Upserted};
use qr3_testkit::TestDb;

#[tokio::test]
async fn api_keys_authenticate_only_their_workspace() {
    let db = TestDb::new().await.unwrap();
    let a = db.store.create_workspace("a").await.unwrap();
    let b = db.store.create_workspace("b").await.unwrap();
    assert_eq!(
        db.store.authenticate(a.api_key.token()).await.unwrap(),
        Some(a.id.clone())
    );
    assert_eq!(
        db.store.authenticate(b.api_key.token()).await.unwrap(),
        Some(b.id.clone())
    );
    let mut forged = a.api_key.token().to_owned();
    forged.pop();
    forged.push('x');
    assert_eq!(db.store.authenticate(&forged).await.unwrap(), None);
    assert_eq!(db.store.authenticate("nonsense").await.unwrap(), None);
    let rows = db
        .query("SELECT secret_sha256 FROM api_keys")
        .await
        .unwrap();
    for row in rows {
        let hash: Vec<u8> = row.get(0);
        assert_eq!(hash.len(), 32, "only a hash is stored");
    }
}

#[tokio::test]
async fn webhook_secrets_are_encrypted_at_rest() {
    let db = TestDb::new().await.unwrap();
    let ws = db.store.create_workspace("a").await.unwrap();
    let secret = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
    let hook = db
        .store
        .insert_webhook(
            &ws.id,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/hook", TargetPolicy::default())
                    .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: secret.clone(),
                max_per_second: None,
            },
        )
        .await
        .unwrap();
    let rows = db
        .query("SELECT secret_ciphertext::text, secret_hint FROM webhooks")
        .await
        .unwrap();
    let raw: String = rows[0].get(0);
    assert!(
        !raw.contains(&hex_of(b"my-secret")),
        "the secret is not stored in clear"
    );
    assert_eq!(rows[0].get::<_, String>(1), "my-s\u{2026}");
    assert_eq!(
        db.store.webhook_secret(&ws.id, &hook.id).await.unwrap(),
        Some(secret)
    );
    let other = db.store.create_workspace("b").await.unwrap();
    assert!(db
        .store
        .get_webhook(&other.id, &hook.id)
        .await
        .unwrap()
        .is_none());
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_platform_creates_renames_and_pages_through_its_workspaces() {
    let db = TestDb::new().await.unwrap();
    let id = WorkspaceId::parse("acme-42").unwrap();
    let created = match db.store.upsert_workspace(&id, &name("Acme")).await.unwrap() {
        Upserted::Created(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (created.id.as_str(), created.name.as_str()),
        ("acme-42", "Acme")
    );
    let renamed = match db
        .store
        .upsert_workspace(&id, &name("Acme GmbH"))
        .await
        .unwrap()
    {
        Upserted::Updated(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(renamed.name, "Acme GmbH");
    assert_eq!(renamed.created_at, created.created_at, "a rename keeps it");
    assert_eq!(db.store.get_workspace(&id).await.unwrap(), Some(renamed));
    // `--id` refuses an id that is taken.
    assert!(db
        .store
        .create_workspace_as(&id, "again")
        .await
        .unwrap()
        .is_none());

    for i in 0..4 {
        let id = WorkspaceId::parse(&format!("tenant-{i}")).unwrap();
        db.store.upsert_workspace(&id, &name("t")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<(Timestamp, WorkspaceId)> = None;
    loop {
        let page = db
            .store
            .list_workspaces(after.as_ref().map(|(t, id)| (*t, id)), 2)
            .await
            .unwrap();
        let more = page.len() > 2;
        let page: Vec<_> = page.into_iter().take(2).collect();
        after = page.last().map(|w| (w.created_at, w.id.clone()));
        seen.extend(page);
        if !more {
            break;
        }
    }
    assert_eq!(seen.len(), 5);
    for pair in seen.windows(2) {
        assert!(
            (pair[0].created_at, &pair[0].id) > (pair[1].created_at, &pair[1].id),
            "newest first, no repeats: {pair:?}"
        );
    }
}

#[tokio::test]
async fn keys_are_minted_listed_and_revoked_within_their_workspace() {
    let db = TestDb::new().await.unwrap();
    let a = db.store.create_workspace("a").await.unwrap();
    let b = db.store.create_workspace("b").await.unwrap();
    let second = db.store.create_api_key(&a.id).await.unwrap().unwrap();
    assert_eq!(
        db.store.authenticate(second.token()).await.unwrap(),
        Some(a.id.clone())
    );
    let keys = db
        .store
        .list_api_keys(&a.id, None, 10)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<_> = keys.iter().map(|k| k.id.clone()).collect();
    assert_eq!(
        ids,
        [second.id.clone(), a.api_key.id.clone()],
        "newest first"
    );
    let page = db
        .store
        .list_api_keys(&a.id, Some(&second.id), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.len(), 1);

    // Not through another workspace.
    assert!(db
        .store
        .revoke_api_key(&b.id, &second.id)
        .await
        .unwrap()
        .is_none());
    let revoked = db
        .store
        .revoke_api_key(&a.id, &second.id)
        .await
        .unwrap()
        .unwrap();
    let at = revoked.revoked_at.expect("revoked");
    assert_eq!(db.store.authenticate(second.token()).await.unwrap(), None);
    assert!(db
        .store
        .authenticate(a.api_key.token())
        .await
        .unwrap()
        .is_some());
    let again = db
        .store
        .revoke_api_key(&a.id, &second.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(at),
        "the first revocation time stays"
    );

    let nobody = WorkspaceId::parse("nobody").unwrap();
    assert!(db.store.create_api_key(&nobody).await.unwrap().is_none());
    assert!(db
        .store
        .list_api_keys(&nobody, None, 10)
        .await
        .unwrap()
        .is_none());
    let empty = WorkspaceId::parse("no-keys").unwrap();
    db.store.upsert_workspace(&empty, &name("n")).await.unwrap();
    assert_eq!(
        db.store.list_api_keys(&empty, None, 10).await.unwrap(),
        Some(vec![])
    );
}

/// Every row of `table` that belongs to `ws`.
async fn rows_of(db: &TestDb, table: &str, ws: &WorkspaceId) -> i64 {
    let column = if table == "workspaces" {
        "id"
    } else {
        "workspace_id"
    };
    db.query(&format!(
        "SELECT count(*) FROM {table} WHERE {column} = '{ws}'"
    ))
    .await
    .unwrap()[0]
        .get(0)
}

async fn previous_secrets_of(db: &TestDb, hook: &WebhookId) -> i64 {
    db.query(&format!(
        "SELECT count(*) FROM webhook_previous_secrets WHERE webhook_id = '{hook}'"
    ))
    .await
    .unwrap()[0]
        .get(0)
}

/// A workspace with a webhook (and a rotated-out secret), two keys, `claims` ingest
/// claims and delivery-log rows yesterday, today and in the default partition.
async fn populated(db: &TestDb, name: &str, claims: usize) -> (WorkspaceId, WebhookId) {
    let ws = db.store.create_workspace(name).await.unwrap().id;
    db.store.create_api_key(&ws).await.unwrap().unwrap();
    let hook = db
        .store
        .insert_webhook(
            &ws,
            NewWebhook {
                url: WebhookUrl::parse("https://example.com/hook", TargetPolicy::default())
                    .unwrap(),
                events: Subscriptions::parse(&["*"]).unwrap(),
                secret: WebhookSecret::generate(),
                max_per_second: None,
            },
        )
        .await
        .unwrap();
    db.store
        .rotate_webhook_secret(
            &ws,
            &hook.id,
            &WebhookSecret::generate(),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<EventKey> = (0..claims)
        .map(|_| EventKey {
            workspace_id: ws.clone(),
            event_id: EventId::generate(),
            event_type: EventType::QrScanned,
        })
        .collect();
    db.store
        .claim_events(&keys, Duration::from_secs(10))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    // A day with no partition yet (a year ahead) lands in the default partition.
    let days = [
        now - chrono::Duration::days(1),
        now,
        now + chrono::Duration::days(365),
    ];
    let rows: Vec<AttemptRecord> = days
        .iter()
        .map(|at| AttemptRecord {
            id: DeliveryId::generate(),
            webhook_id: hook.id.clone(),
            workspace_id: ws.clone(),
            event_id: EventId::generate(),
            event_type: EventType::QrScanned,
            status: AttemptStatus::Success,
            status_code: Some(200),
            response_time_ms: 3,
            attempt: 1,
            trigger: Trigger::Event,
            error: None,
            created_at: Timestamp::from(*at),
            detail: None,
        })
        .collect();
    db.store.record_attempts(&rows, 10).await.unwrap();
    (ws, hook.id)
}

const TABLES: [&str; 5] = [
    "workspaces",
    "api_keys",
    "webhooks",
    "ingested_events",
    "delivery_log_all",
];

#[tokio::test]
async fn erasing_a_workspace_leaves_no_row_of_it_and_touches_no_other() {
    let db = TestDb::new().await.unwrap();
    // More claims than one erasure statement deletes.
    let (gone, gone_hook) = populated(&db, "gone", 10_050).await;
    let (kept, kept_hook) = populated(&db, "kept", 3).await;
    let partitions: i64 = db
        .query(&format!(
            "SELECT count(DISTINCT a.tableoid) FROM delivery_log a
             JOIN delivery_log_payloads p ON p.event = a.event WHERE p.workspace_id = '{gone}'"
        ))
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(
        partitions, 3,
        "log rows in three partitions, the default one included"
    );

    let erased = db.store.erase_workspace(&gone).await.unwrap().unwrap();
    assert_eq!(
        erased,
        Erasure {
            webhooks: 1,
            api_keys: 2,
            events: 10_050,
            deliveries: 3
        }
    );
    for table in TABLES {
        assert_eq!(rows_of(&db, table, &gone).await, 0, "{table}");
    }
    assert_eq!(previous_secrets_of(&db, &gone_hook).await, 0);
    let kept_rows = [1, 2, 1, 3, 3];
    for (table, n) in TABLES.iter().zip(kept_rows) {
        assert_eq!(
            rows_of(&db, table, &kept).await,
            n,
            "{table} of the other workspace"
        );
    }
    assert_eq!(previous_secrets_of(&db, &kept_hook).await, 1);
    assert_eq!(db.store.erase_workspace(&gone).await.unwrap(), None, "gone");
}

#[tokio::test]
async fn an_erasure_cut_short_is_finished_by_the_next_one() {
    let db = TestDb::new().await.unwrap();
    let (ws, _) = populated(&db, "w", 5).await;
    // What a crash after the first step leaves behind: the workspace marked, webhooks
    // and keys gone, claims and log rows still there.
    db.query(&format!(
        "WITH m AS (UPDATE workspaces SET deleted_at = now() WHERE id = '{ws}'),
              h AS (DELETE FROM webhooks WHERE workspace_id = '{ws}')
         DELETE FROM api_keys WHERE workspace_id = '{ws}'"
    ))
    .await
    .unwrap();
    // Gone for everything but the erasure.
    assert_eq!(db.store.get_workspace(&ws).await.unwrap(), None);
    assert!(db.store.list_workspaces(None, 10).await.unwrap().is_empty());
    assert!(db.store.create_api_key(&ws).await.unwrap().is_none());
    assert_eq!(
        db.store
            .upsert_workspace(&ws, &name("again"))
            .await
            .unwrap(),
        Upserted::BeingErased
    );
    let erased = db.store.erase_workspace(&ws).await.unwrap().unwrap();
    assert_eq!((erased.webhooks, erased.api_keys), (0, 0));
    assert_eq!((erased.events, erased.deliveries), (5, 3));
    for table in TABLES {
        assert_eq!(rows_of(&db, table, &ws).await, 0, "{table}");
    }
    // And the id is free for a new workspace.
    assert!(matches!(
        db.store.upsert_workspace(&ws, &name("new")).await.unwrap(),
        Upserted::Created(_)
    ));
}

fn name(s: &str) -> WorkspaceName {
    WorkspaceName::parse(s).unwrap()
}
