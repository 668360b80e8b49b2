//! Starting and stopping the roles: migrations and broker topology first (idempotent, so
//! processes start in any order), then the API and workers, all sharing one shutdown
//! token, one metrics registry and one store.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use qr3_broker::{SharedPublisher, Topology};
use qr3_config::Settings;
use qr3_store::{SecretCipher, Store};
use qr3_telemetry::{ready_check, Metrics};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

/// A store on the configured database (which must exist and be migrated).
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let pool = qr3_store::connect(settings.database.url.expose(), settings.database.pool_size)?;
    Ok(Store::new(
        pool,
        SecretCipher::new(&settings.encryption_key()?),
    ))
}

/// Creates the database if missing, applies migrations, declares the broker topology.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let url = settings.database.url.expose();
    qr3_store::create_database_if_missing(url).await?;
    let pool = qr3_store::connect(url, 2)?;
    qr3_store::migrate(&pool, settings.retention.delivery_log_days).await?;
    pool.close();
    let connection = qr3_broker::connect(settings.amqp.url.expose(), "qr3-migrate")
        .await
        .context("cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    Topology::from_settings(settings)
        .declare(&channel)
        .await
        .context("cannot declare the broker topology")?;
    let _ = connection.close(200, "migrated".into()).await;
    tracing::info!("database migrated and broker topology declared");
    Ok(())
}

/// The roles of one process, running.
pub struct Running {
    /// Where the API listens (with its /healthz, /readyz, /metrics), if it runs.
    pub api_addr: Option<SocketAddr>,
    /// Where a worker-only process serves /healthz, /readyz, /metrics.
    pub ops_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    pub store: Store,
    shutdown: CancellationToken,
    ops_shutdown: CancellationToken,
    ops_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    grace: Duration,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Starts `roles` and returns once they are listening and consuming has begun.
pub async fn start(settings: Settings, roles: Roles) -> anyhow::Result<Running> {
    migrate(&settings).await?;
    let store = open_store(&settings).await?;
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let ops_shutdown = CancellationToken::new();
    let mut ops_task = None;
    let mut tasks = JoinSet::new();
    let (mut api_addr, mut ops_addr) = (None, None);

    let publisher = std::sync::Arc::new(SharedPublisher::new(
        settings.amqp.url.expose().clone(),
        "qr3-api",
    ));
    let ready = {
        let (store, metrics, publisher) = (store.clone(), metrics.clone(), publisher.clone());
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
    };
    let ops = qr3_telemetry::ops_router(metrics.clone(), ready, shutdown.clone());

    if roles.api {
        let listener = TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.api.listen))?;
        api_addr = Some(listener.local_addr()?);
        let state = qr3_api::ApiState::from_settings(store.clone(), &settings);
        let router = qr3_api::router(state)
            .merge(ops)
            .layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                qr3_telemetry::track_http,
            ));
        let token = shutdown.clone();
        tasks.spawn(qr3_api::serve(
            listener,
            router,
            qr3_api::ServeLimits::from_settings(&settings),
            token.cancelled_owned(),
        ));
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
    if roles.ingest {
        let ingest = qr3_ingest::Ingest::new(store.clone(), settings.clone(), metrics.clone());
        tasks.spawn(ingest.run(shutdown.clone()));
    }
    if roles.sender {
        let sender = qr3_sender::Sender::new(store.clone(), settings.clone(), metrics.clone())?;
        tasks.spawn(sender.run(shutdown.clone()));
    }
    Ok(Running {
        api_addr,
        ops_addr,
        metrics,
        store,
        shutdown,
        ops_shutdown,
        ops_task,
        grace: Duration::from_millis(settings.shutdown.grace_period_ms),
        tasks,
    })
}

impl Running {
    /// The token that stops every role; cancel it to begin a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops consuming, lets in-flight work finish (up to the grace period), returns.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.metrics.process_draining.set(1);
        let grace = self.grace;
        let drained = tokio::time::timeout(grace, async {
            let mut first_error = None;
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => first_error = first_error.or(Some(e)),
                    Err(e) => first_error = first_error.or(Some(anyhow::Error::from(e))),
                }
            }
            first_error
        })
        .await;
        self.ops_shutdown.cancel();
        if let Some(ops) = self.ops_task.take() {
            let _ = ops.await;
        }
        match drained {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(error),
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "grace period over; stopping with work in flight (it stays in the broker)"
                );
                self.tasks.abort_all();
                Ok(())
            }
        }
    }
}

/// Runs `roles` until SIGTERM or ctrl-c, then shuts down gracefully.
pub async fn serve_until_signal(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    let signal = qr3_telemetry::shutdown_token();
    let running = start(settings, roles).await?;
    tokio::select! {
        _ = signal.cancelled() => tracing::info!("shutting down"),
        _ = running.shutdown.cancelled() => {}
    }
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
