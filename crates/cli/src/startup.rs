//! Waiting for Postgres and RabbitMQ at start-up. Each dependency is tried until it is
//! usable, with capped exponential backoff, while the ops endpoints already answer:
//! `/readyz` shows what is still missing ([`Startup`]) and the log says it once per
//! backoff level rather than once per try.
//!
//! Usable means: the database answers and its schema is at least what this build needs
//! (after migrating it, when the process migrates at start-up); the broker accepts a
//! connection and the topology is declared.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use qr3_broker::{Backoff, Topology};
use qr3_config::Settings;
use qr3_store::{SchemaCheck, Store};
use qr3_telemetry::{Metrics, Startup};
use tokio_util::sync::CancellationToken;

/// The name `/readyz` and the log use for Postgres.
pub const DATABASE: &str = "database";
/// The name `/readyz` and the log use for RabbitMQ.
pub const BROKER: &str = "broker";

/// The first pause after a failed try; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between tries: once a dependency is back, work starts within
/// about this long.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// At the longest pause, a dependency still missing is logged again this often.
const REMINDER: Duration = Duration::from_secs(60);
/// Connecting or checking that takes longer than this counts as a failed try (a host
/// that drops packets). Migrating has no such limit: it takes what it takes.
const TRY_TIMEOUT: Duration = Duration::from_secs(15);

/// What start-up waits for, and how it prepares each dependency.
pub struct Dependencies {
    pub settings: Settings,
    pub store: Store,
    /// Create the database if missing and apply the migrations, rather than only
    /// check that the schema is recent enough.
    pub migrate: bool,
    pub startup: Startup,
    pub metrics: Metrics,
}

impl Dependencies {
    /// Waits until the database and the broker are both usable (tried side by side).
    /// `false` when `shutdown` came first: the caller stops at once.
    pub async fn wait(&self, shutdown: &CancellationToken) -> bool {
        self.startup.waiting(DATABASE, "not tried yet");
        self.startup.waiting(BROKER, "not tried yet");
        let (database, broker) = tokio::join!(
            wait_for(DATABASE, &self.startup, shutdown, || self
                .prepare_database()),
            wait_for(BROKER, &self.startup, shutdown, || self.prepare_broker()),
        );
        database && broker
    }

    /// The database answers and has the schema this build needs (migrated first when
    /// `migrate`).
    async fn prepare_database(&self) -> anyhow::Result<()> {
        let url = self.settings.database.url.expose();
        if self.migrate {
            // Shutdown may cut a migration short: its transaction is rolled back when
            // the connection closes, and the next start applies it again.
            let migrated = async {
                within(qr3_store::create_database_if_missing(url)).await?;
                qr3_store::migrate(self.store.pool(), self.settings.retention.delivery_log_days)
                    .await
            }
            .await;
            self.metrics.database_up.set(i64::from(migrated.is_ok()));
            return migrated;
        }
        let check = within(qr3_store::check_schema(self.store.pool())).await;
        let answered = matches!(
            check,
            Ok(SchemaCheck::UpToDate { .. } | SchemaCheck::Behind { .. })
        );
        self.metrics.database_up.set(i64::from(answered));
        schema_is_enough(check?, &qr3_store::database_name(url)?)
    }

    /// The broker accepts a connection and the topology is declared.
    async fn prepare_broker(&self) -> anyhow::Result<()> {
        let settings = &self.settings;
        let connection = within(async {
            qr3_broker::connect_with_tls(
                settings.amqp.url.expose(),
                &format!("qr3-startup/{}", settings.amqp.prefix),
                &qr3_broker::BrokerTls::from_settings(&settings.amqp),
            )
            .await
            .context("cannot connect to RabbitMQ")
        })
        .await?;
        let declared = within(async {
            Topology::from_settings(settings)
                .declare(&connection)
                .await
                .context("cannot declare the broker topology")
        })
        .await;
        let _ = connection.close(200, "started".into()).await;
        declared
    }
}

/// `step`, failed when it takes longer than [`TRY_TIMEOUT`].
async fn within<T>(step: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TRY_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| Err(anyhow!("no answer within {} s", TRY_TIMEOUT.as_secs())))
}

/// `Ok` when the schema `check` found lets this build run; otherwise an error saying
/// what to do.
fn schema_is_enough(check: SchemaCheck, database: &str) -> anyhow::Result<()> {
    match check {
        SchemaCheck::UpToDate { .. } => Ok(()),
        SchemaCheck::NoDatabase => bail!(
            "database {database:?} does not exist: create and migrate it with `qr3-webhooks migrate`"
        ),
        SchemaCheck::Behind {
            applied: None,
            required,
        } => bail!(
            "database {database:?} has no schema yet (this release needs version {required}): run `qr3-webhooks migrate`"
        ),
        SchemaCheck::Behind {
            applied: Some(applied),
            required,
        } => bail!(
            "the schema of database {database:?} is at version {applied} and this release needs {required}: run `qr3-webhooks migrate`"
        ),
    }
}

/// Tries `attempt` until it succeeds (`true`) or `shutdown` fires (`false`, at once,
/// even in the middle of a try), keeping `startup` and the log up to date.
async fn wait_for<F, Fut>(
    dependency: &'static str,
    startup: &Startup,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let began = Instant::now();
    let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY).with_reminder(REMINDER);
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => return false,
            outcome = attempt() => outcome,
        };
        let error = match outcome {
            Ok(()) => {
                startup.reached(dependency);
                if tries > 1 {
                    tracing::info!(
                        dependency,
                        tries,
                        waited_ms = began.elapsed().as_millis() as u64,
                        "the {dependency} is usable"
                    );
                }
                return true;
            }
            Err(error) => format!("{error:#}"),
        };
        let log = backoff.worth_logging(&error);
        let delay = backoff.next_wait();
        if log {
            tracing::warn!(
                dependency,
                error,
                tries,
                retry_in_ms = delay.as_millis() as u64,
                "waiting for the {dependency}"
            );
        }
        startup.waiting(dependency, error);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
