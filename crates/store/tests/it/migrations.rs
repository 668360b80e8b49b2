//! Migrations apply once, concurrently, and create the delivery-log partitions; the
//! schema check; the maintenance database is needed only to create the database.

use qr3_store::SchemaCheck;
use qr3_testkit::proxy::postgres_startup_database;
use qr3_testkit::{TcpProxy, TestDb};

#[tokio::test]
async fn concurrent_migrators_do_not_conflict() {
    let db = TestDb::new().await.unwrap();
    let pool = db.store.pool().clone();
    let runs = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { qr3_store::migrate(&pool, 30).await })
    });
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let rows = db
        .query("SELECT count(*) FROM pg_class WHERE relname LIKE 'delivery_attempts_p%' AND relkind = 'r'")
        .await
        .unwrap();
    assert!(
        rows[0].get::<_, i64>(0) >= 8,
        "a week of daily partitions exists"
    );
}

#[tokio::test]
async fn retention_drops_old_partitions() {
    let db = TestDb::new().await.unwrap();
    db.query("SELECT qr3_ensure_delivery_partitions(current_date - 40, 2)")
        .await
        .unwrap();
    qr3_store::run_retention(db.store.pool(), 30).await.unwrap();
    let rows = db
        .query("SELECT count(*) FROM pg_class WHERE relname = 'delivery_attempts_p' || to_char(current_date - 40, 'YYYYMMDD')")
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
}

#[tokio::test]
async fn the_schema_check_compares_the_applied_migrations_with_this_build() {
    let required = qr3_store::required_schema_version();
    assert!(required >= 3, "V1..V3 are embedded");

    let migrated = TestDb::new().await.unwrap();
    assert_eq!(
        qr3_store::check_schema(migrated.store.pool())
            .await
            .unwrap(),
        SchemaCheck::UpToDate {
            applied: required,
            required
        }
    );

    let empty = TestDb::empty().await.unwrap();
    assert_eq!(
        qr3_store::check_schema(empty.store.pool()).await.unwrap(),
        SchemaCheck::Behind {
            applied: None,
            required
        }
    );
    qr3_store::migrate_to(empty.store.pool(), required - 1)
        .await
        .unwrap();
    // The migration before the newest (numbers may have gaps).
    let behind = qr3_store::check_schema(empty.store.pool()).await.unwrap();
    assert!(
        matches!(behind, SchemaCheck::Behind { applied: Some(v), required: r } if v < required && r == required),
        "{behind:?}"
    );

    let missing = TestDb::missing().unwrap();
    assert_eq!(
        qr3_store::check_schema(missing.store.pool()).await.unwrap(),
        SchemaCheck::NoDatabase
    );
    assert!(!missing.exists().await.unwrap(), "checking creates nothing");
}

/// A proxy to the test server that refuses connections to the `postgres` maintenance
/// database, as a managed Postgres role without CONNECT on it would be.
async fn without_maintenance_database() -> TcpProxy {
    let server = qr3_testkit::host_port(&qr3_testkit::database_server_url(), 5432);
    let proxy = TcpProxy::closed(&server)
        .await
        .unwrap()
        .refusing(|first| postgres_startup_database(first).as_deref() == Some("postgres"));
    proxy.open();
    proxy
}

#[tokio::test]
async fn an_existing_database_is_used_without_the_maintenance_database() {
    let db = TestDb::new().await.unwrap();
    let gate = without_maintenance_database().await;
    let url = format!(
        "{}?sslmode=disable",
        qr3_testkit::url_via(&db.url, gate.addr())
    );

    qr3_store::create_database_if_missing(&url).await.unwrap();
    let pool = qr3_store::connect(&url, 2).unwrap();
    qr3_store::migrate(&pool, 30).await.unwrap();
    assert!(matches!(
        qr3_store::check_schema(&pool).await.unwrap(),
        SchemaCheck::UpToDate { .. }
    ));
    assert_eq!(
        gate.refused(),
        0,
        "nothing asked for the maintenance database"
    );
}

#[tokio::test]
async fn creating_a_missing_database_needs_the_maintenance_database() {
    let db = TestDb::missing().unwrap();
    let gate = without_maintenance_database().await;
    let url = format!(
        "{}?sslmode=disable",
        qr3_testkit::url_via(&db.url, gate.addr())
    );

    let error = qr3_store::create_database_if_missing(&url)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("maintenance database"),
        "{error:#}"
    );
    assert_eq!(gate.refused(), 1);
    assert!(!db.exists().await.unwrap());

    // With the maintenance database reachable, it is created.
    qr3_store::create_database_if_missing(&db.url)
        .await
        .unwrap();
    assert!(db.exists().await.unwrap());
}
