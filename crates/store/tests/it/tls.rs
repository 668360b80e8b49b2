//! `database.url` with libpq's `sslmode` and `sslrootcert`, against a cluster that
//! accepts only TLS and whose certificate names `localhost`, signed by a CA made up for
//! the test process.

use qr3_testkit::TlsPostgres;

async fn cluster() -> &'static TlsPostgres {
    tokio::task::spawn_blocking(TlsPostgres::shared)
        .await
        .unwrap()
        .unwrap()
}

async fn connect(url: &str) -> anyhow::Result<()> {
    let client = qr3_store::connect_once(url).await?;
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(encrypted, "{url} connected without TLS");
    Ok(())
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    let pg = cluster().await;
    // The server's CA is in no trust store, and the name does not match: require
    // checks neither.
    connect(&pg.url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    // prefer (the default) takes TLS when the server offers it.
    connect(&pg.url("127.0.0.1", "sslmode=prefer"))
        .await
        .unwrap();
    connect(&pg.url("127.0.0.1", "")).await.unwrap();
}

#[tokio::test]
async fn verify_full_connects_with_the_right_ca_and_host_name() {
    let pg = cluster().await;
    let ca = pg.ca_file.display();
    connect(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    // The pool and migrations go the same way.
    let pool = qr3_store::connect(
        &pg.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        1,
    )
    .unwrap();
    assert!(matches!(
        qr3_store::check_schema(&pool).await.unwrap(),
        qr3_store::SchemaCheck::Behind { applied: None, .. }
    ));
}

#[tokio::test]
async fn verify_full_refuses_a_wrong_host_name() {
    let pg = cluster().await;
    let ca = pg.ca_file.display();
    let error = connect(&pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("over TLS (sslmode=verify-full)") && text.contains("not valid for name"),
        "{text}"
    );
    // verify-ca checks the chain only, so the same URL connects.
    connect(&pg.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
        .await
        .unwrap();
}

#[tokio::test]
async fn verify_full_and_verify_ca_refuse_a_wrong_ca() {
    let pg = cluster().await;
    let other = pg.other_ca_file.display();
    for mode in ["verify-full", "verify-ca", "require"] {
        // require with a root certificate behaves as verify-ca (as in libpq).
        let error = connect(&pg.url("localhost", &format!("sslmode={mode}&sslrootcert={other}")))
            .await
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains(&format!("over TLS (sslmode={mode})"))
                && text.contains("invalid peer certificate: UnknownIssuer"),
            "{mode}: {text}"
        );
    }
    // Without sslrootcert, the system roots do not know the test CA either.
    let error = connect(&pg.url("localhost", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("UnknownIssuer"), "{error:#}");
}

#[tokio::test]
async fn a_tls_only_server_refuses_sslmode_disable_clearly() {
    let pg = cluster().await;
    let error = connect(&pg.url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(
            "the server accepts only TLS connections and database.url has sslmode=disable"
        ) && text.contains("no encryption"),
        "{text}"
    );
    // The pool says the same where a role starts.
    let error = qr3_store::create_database_if_missing(&pg.url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("accepts only TLS connections"),
        "{error:#}"
    );
}

#[tokio::test]
async fn key_value_connection_strings_take_the_same_parameters() {
    let pg = cluster().await;
    let url = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        pg.port,
        pg.ca_file.display()
    );
    connect(&url).await.unwrap();
}
