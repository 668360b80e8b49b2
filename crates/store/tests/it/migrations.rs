//! Migrations apply once, concurrently, and create the delivery-log partitions.

use qr3_testkit::TestDb;

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
