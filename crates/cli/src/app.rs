//! Starting, supervising and stopping the roles of one process.
//!
//! [`launch`] opens the ops endpoints first (`/healthz`, `/readyz`, `/metrics`; the API
//! process answers its `/v1` routes with 503 meanwhile), then waits for Postgres and
//! RabbitMQ ([`crate::startup`]), migrating first only where configured
//! (`database.migrate_on_start`), and only then starts the workers. Every role shares
//! one shutdown token, one metrics registry and one store, and runs under one
//! [`Supervisor`]: a role that ends before shutdown stops the process with an error.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use axum::extract::Request;
use axum::middleware::Next;
use futures_util::future::BoxFuture;
use qr3_broker::{SharedPublisher, Topology};
use qr3_config::Settings;
use qr3_store::{SecretCipher, Store};
use qr3_telemetry::{ready_check, Metrics, Startup};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::startup::Dependencies;
use crate::supervise::Supervisor;

/// Which roles run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub ingest: bool,
    pub sender: bool,
}

impl Roles {
    pub const API: Roles = Roles {
        api: true,
        ingest: false,
        sender: false,
    };
    pub const INGEST: Roles = Roles {
        api: false,
        ingest: true,
        sender: false,
    };
    pub const SENDER: Roles = Roles {
        api: false,
        ingest: false,
        sender: true,
    };
    pub const ALL: Roles = Roles {
        api: true,
        ingest: true,
        sender: true,
    };
}

/// A store on the configured database (which must exist and be migrated). Connects
/// lazily: this does not touch the database.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let pool = qr3_store::connect(settings.database.url.expose(), settings.database.pool_size)?;
    Ok(Store::new(
        pool,
        SecretCipher::new(&settings.encryption_key()?),
    ))
}

/// `qr3-webhooks migrate`: creates the database if missing (the only step that needs
/// the `postgres` maintenance database), applies migrations, declares the broker
/// topology. Fails at once when Postgres or RabbitMQ is unreachable: it is a one-shot
/// command, retried by whoever runs it (the Kubernetes Job's `backoffLimit`).
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let url = settings.database.url.expose();
    qr3_store::create_database_if_missing(url).await?;
    let pool = qr3_store::connect(url, 2)?;
    qr3_store::migrate(&pool, settings.retention.delivery_log_days).await?;
    pool.close();
    let tls = qr3_broker::BrokerTls::from_settings(&settings.amqp);
    let connection = qr3_broker::connect_with_tls(settings.amqp.url.expose(), "qr3-migrate", &tls)
        .await
        .context("cannot connect to RabbitMQ")?;
    Topology::from_settings(settings)
        .declare(&connection)
        .await
        .context("cannot declare the broker topology")?;
    let _ = connection.close(200, "migrated".into()).await;
    tracing::info!("database migrated and broker topology declared");
    Ok(())
}

/// A role added to a running process with [`Running::supervise`].
type ExtraRole = (&'static str, BoxFuture<'static, anyhow::Result<()>>);

/// The roles of one process, running (or still waiting for their dependencies).
pub struct Running {
    /// Where the API listens (with its /healthz, /readyz, /metrics), if it runs.
    pub api_addr: Option<SocketAddr>,
    /// Where a worker-only process serves /healthz, /readyz, /metrics.
    pub ops_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    pub store: Store,
    startup: Startup,
    shutdown: CancellationToken,
    /// Cancelled when a role ended before shutdown was requested.
    failed: CancellationToken,
    /// Cancelled once the dependencies were reached and every role runs.
    started: CancellationToken,
    ops_shutdown: CancellationToken,
    ops_task: Option<JoinHandle<anyhow::Result<()>>>,
    supervisor: Option<JoinHandle<anyhow::Result<()>>>,
    extra_roles: mpsc::UnboundedSender<ExtraRole>,
}

/// Starts `roles` and returns once the dependencies were reached and every role runs:
/// [`launch`], then [`Running::started`]. Waits as long as Postgres or RabbitMQ stays
/// unreachable; use [`launch`] to get hold of the process while it waits.
pub async fn start(settings: Settings, roles: Roles) -> anyhow::Result<Running> {
    let running = launch(settings, roles).await?;
    match running.started().await {
        Ok(()) => Ok(running),
        Err(_) => Err(running
            .stop()
            .await
            .err()
            .unwrap_or_else(|| anyhow!("stopped before start-up finished"))),
    }
}

/// Opens the ops endpoints (and the API's listener) and returns at once; the process
/// then waits for Postgres and RabbitMQ in the background and starts the workers once
/// both are usable. Fails only for what waiting cannot fix: a listener that cannot be
/// bound, an unusable database URL or encryption key.
pub async fn launch(settings: Settings, roles: Roles) -> anyhow::Result<Running> {
    let store = open_store(&settings).await?;
    let metrics = Metrics::new();
    crate::series::initialise(&metrics, &settings, roles);
    let startup = Startup::new();
    let shutdown = CancellationToken::new();
    let ops_shutdown = CancellationToken::new();
    let mut supervisor = Supervisor::new();
    let (mut api_addr, mut ops_addr, mut ops_task) = (None, None, None);

    // Built now, so that a configuration they refuse stops the process before it waits.
    let ingest = roles
        .ingest
        .then(|| qr3_ingest::Ingest::new(store.clone(), settings.clone(), metrics.clone()));
    let sender = match roles.sender {
        true => Some(qr3_sender::Sender::new(
            store.clone(),
            settings.clone(),
            metrics.clone(),
        )?),
        false => None,
    };

    let ops = qr3_telemetry::ops_router(
        metrics.clone(),
        startup.clone(),
        readiness(&settings, roles, &store, &metrics),
        shutdown.clone(),
    );
    if roles.api {
        let listener = TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.api.listen))?;
        api_addr = Some(listener.local_addr()?);
        let state = qr3_api::ApiState::from_settings(store.clone(), &settings);
        let gate = startup.clone();
        let router = qr3_api::router(state)
            // Until start-up is over the schema may be too old to run against: /v1
            // answers 503 while the ops endpoints already work.
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let gate = gate.clone();
                    async move {
                        if gate.is_finished() {
                            next.run(request).await
                        } else {
                            qr3_api::unavailable("the service is starting; try again shortly")
                        }
                    }
                },
            ))
            .merge(ops)
            .layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                qr3_telemetry::track_http,
            ));
        let token = shutdown.clone();
        let limits = qr3_api::ServeLimits::from_settings(&settings);
        supervisor.spawn("api", async move {
            qr3_api::serve(listener, router, limits, token.cancelled_owned()).await
        });
    } else {
        let listener = TcpListener::bind(settings.metrics.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.metrics.listen))?;
        ops_addr = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
        // The ops endpoints outlive the roles' shutdown: while the workers drain,
        // /readyz answers 503 "draining" and /metrics can still be scraped.
        ops_task = Some(tokio::spawn(qr3_telemetry::serve(
            listener,
            ops,
            ops_shutdown.clone(),
        )));
    }

    let dependencies = Dependencies {
        migrate: settings
            .database
            .migrate_on_start
            .applies(roles == Roles::ALL),
        settings: settings.clone(),
        store: store.clone(),
        startup: startup.clone(),
        metrics: metrics.clone(),
    };
    let workers = {
        let shutdown = shutdown.clone();
        let (store, settings) = (store.clone(), settings.clone());
        async move {
            if !dependencies.wait(&shutdown).await {
                return None;
            }
            let mut workers: Vec<ExtraRole> = Vec::new();
            if let Some(ingest) = ingest {
                workers.push(("ingest", Box::pin(ingest.run(shutdown.clone()))));
            }
            if let Some(sender) = sender {
                workers.push(("sender", Box::pin(sender.run(shutdown.clone()))));
            }
            if roles == Roles::ALL {
                // No other process does it when everything runs in one.
                let maintain =
                    crate::maintain::every(store.pool().clone(), settings, shutdown.clone());
                workers.push(("maintain", Box::pin(maintain)));
            }
            Some(workers)
        }
    };
    let (extra_roles, extra) = mpsc::unbounded_channel();
    let (failed, started) = (CancellationToken::new(), CancellationToken::new());
    let lifecycle = Lifecycle {
        roles: supervisor,
        startup: startup.clone(),
        shutdown: shutdown.clone(),
        failed: failed.clone(),
        started: started.clone(),
        grace: Duration::from_millis(settings.shutdown.grace_period_ms),
        metrics: metrics.clone(),
    };
    let supervisor = tokio::spawn(lifecycle.run(workers, extra));
    Ok(Running {
        api_addr,
        ops_addr,
        metrics,
        store,
        startup,
        shutdown,
        failed,
        started,
        ops_shutdown,
        ops_task,
        supervisor: Some(supervisor),
        extra_roles,
    })
}

/// `/readyz` once start-up is over: the database, plus `qr3_broker_connected` in a
/// process running a worker; an API-only process checks its own broker connection.
fn readiness(
    settings: &Settings,
    roles: Roles,
    store: &Store,
    metrics: &Metrics,
) -> qr3_telemetry::ReadyCheck {
    let publisher = std::sync::Arc::new(
        SharedPublisher::new(settings.amqp.url.expose().clone(), "qr3-api")
            .with_tls(qr3_broker::BrokerTls::from_settings(&settings.amqp)),
    );
    let (store, metrics) = (store.clone(), metrics.clone());
    ready_check(move || {
        let (store, metrics, publisher) = (store.clone(), metrics.clone(), publisher.clone());
        async move {
            let db = store.ping().await;
            metrics.database_up.set(i64::from(db.is_ok()));
            db.map_err(|e| format!("database: {e}"))?;
            if roles.ingest || roles.sender {
                if metrics.broker_connected.get() != 1 {
                    return Err("broker: not connected".into());
                }
            } else {
                let broker = publisher.check().await;
                metrics.broker_connected.set(i64::from(broker.is_ok()));
                broker.map_err(|e| format!("broker: {e}"))?;
            }
            Ok(())
        }
    })
}

/// The supervisor task of a process: start-up, then watching the roles, then draining.
struct Lifecycle {
    roles: Supervisor,
    startup: Startup,
    shutdown: CancellationToken,
    failed: CancellationToken,
    started: CancellationToken,
    grace: Duration,
    metrics: Metrics,
}

impl Lifecycle {
    /// Runs until shutdown is requested or a role ends early, then drains. `workers`
    /// waits for the dependencies and yields the worker roles (`None`: shutdown came
    /// first); `extra` brings roles added with [`Running::supervise`].
    async fn run(
        mut self,
        workers: impl Future<Output = Option<Vec<ExtraRole>>>,
        mut extra: mpsc::UnboundedReceiver<ExtraRole>,
    ) -> anyhow::Result<()> {
        let mut workers = std::pin::pin!(workers);
        let mut starting = true;
        let early_exit = loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break None,
                exit = self.roles.next_exit() => break Some(exit),
                ready = &mut workers, if starting => {
                    starting = false;
                    let Some(workers) = ready else { break None };
                    for (role, task) in workers {
                        self.roles.spawn(role, task);
                    }
                    self.startup.finish();
                    self.started.cancel();
                    tracing::info!("started");
                }
                Some((role, task)) = extra.recv() => self.roles.spawn(role, task),
            }
        };
        let failure = early_exit.map(|exit| {
            tracing::error!(
                role = exit.role,
                outcome = %exit,
                "a role stopped before shutdown was requested; stopping the process"
            );
            self.failed.cancel();
            self.shutdown.cancel();
            exit.into_error()
        });
        self.metrics.process_draining.set(1);
        let drained = self.roles.drain(self.grace).await;
        match failure {
            Some(error) => Err(error),
            None => drained,
        }
    }
}

impl Running {
    /// The token that stops every role; cancel it to begin a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// What `/readyz` reports while the process waits for its dependencies.
    pub fn startup(&self) -> &Startup {
        &self.startup
    }

    /// Resolves once the dependencies were reached and every role runs; an error when
    /// a role failed or shutdown was requested first.
    pub async fn started(&self) -> anyhow::Result<()> {
        tokio::select! {
            biased;
            () = self.started.cancelled() => Ok(()),
            () = self.failed.cancelled() => Err(anyhow!("a role failed during start-up")),
            () = self.shutdown.cancelled() => Err(anyhow!("stopped before start-up finished")),
        }
    }

    /// Resolves when a role ended before shutdown was requested. The process is then
    /// already stopping the other roles; [`stop`](Self::stop) returns the error.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Runs `task` as one more role of this process, supervised like the built-in
    /// ones: it must return once [`shutdown_token`](Self::shutdown_token) is
    /// cancelled, and its ending before that stops the process with an error. For
    /// embedding other work in a process, and for tests.
    pub fn supervise(
        &self,
        role: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.extra_roles
            .send((role, Box::pin(task)))
            .map_err(|_| anyhow!("the process has stopped"))
    }

    /// Stops consuming, lets in-flight work finish (up to the grace period), returns.
    /// The error of a role that ended early, or failed while stopping, is returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.metrics.process_draining.set(1);
        let result = match self.supervisor.take() {
            Some(supervisor) => supervisor
                .await
                .unwrap_or_else(|e| Err(anyhow!("the supervisor task failed: {e}"))),
            None => Ok(()),
        };
        self.ops_shutdown.cancel();
        if let Some(ops) = self.ops_task.take() {
            let _ = ops.await;
        }
        result
    }
}

/// A `Running` dropped without [`Running::stop`] (a test that panicked) aborts its roles
/// rather than leaving them behind.
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
        }
        if let Some(ops) = self.ops_task.take() {
            ops.abort();
        }
    }
}

/// Runs `roles` until SIGTERM or ctrl-c, then shuts down gracefully. Returns an error
/// when a role ended on its own, so that the binary exits non-zero and is restarted.
/// A signal while the process still waits for its dependencies stops it at once.
pub async fn serve_until_signal(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    let signal = qr3_telemetry::shutdown_token();
    let running = launch(settings, roles).await?;
    tokio::select! {
        () = signal.cancelled() => tracing::info!("shutting down"),
        () = running.failed() => {}
        () = running.shutdown.cancelled() => {}
    }
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
