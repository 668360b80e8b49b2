//! The depth of a dead-letter queue, and the task that exports it as the
//! `qr3_dead_letters` gauge so the alert works with a managed RabbitMQ that has no
//! per-queue metrics.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use prometheus::IntGaugeVec;
use qr3_config::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{DeadLetterError, DeadQueue};
use crate::Topology;

/// How often `watch_depth` reads the depth.
pub const DEPTH_INTERVAL: Duration = Duration::from_secs(15);
/// How long one depth reading may take before it counts as failed.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many messages are ready on `queue` (a passive declare: creates nothing).
pub async fn depth(channel: &Channel, queue: &str) -> Result<u32, DeadLetterError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .map_err(|source| DeadLetterError::Queue {
            queue: queue.to_owned(),
            source,
        })
}

/// Spawns a task that sets `gauges{queue = dead.label()}` to the depth of the `dead`
/// queue every [`DEPTH_INTERVAL`] until `shutdown`, on its own connection
/// (`qr3-depth/<prefix>/<label>`). The service exports the depth itself so that the
/// alert works with a managed RabbitMQ that has no per-queue metrics. While the queue
/// cannot be read the gauge keeps its last value (the broker alerts say why).
pub fn watch_depth(
    settings: &Settings,
    dead: DeadQueue,
    gauges: &IntGaugeVec,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    watch_depth_every(settings, dead, gauges, shutdown, DEPTH_INTERVAL)
}

/// [`watch_depth`] at another pace (tests).
pub fn watch_depth_every(
    settings: &Settings,
    dead: DeadQueue,
    gauges: &IntGaugeVec,
    shutdown: &CancellationToken,
    every: Duration,
) -> JoinHandle<()> {
    let url = settings.amqp.url.expose().clone();
    let tls = crate::tls::BrokerTls::from_settings(&settings.amqp);
    let name = format!("qr3-depth/{}/{}", settings.amqp.prefix, dead.label());
    let queue = dead.name(&Topology::from_settings(settings));
    let gauge = gauges.with_label_values(&[dead.label()]);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut link: Option<(Connection, Channel)> = None;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let reading = tokio::select! {
                _ = shutdown.cancelled() => break,
                reading = tokio::time::timeout(DEPTH_TIMEOUT, read_depth(&mut link, &url, &name, &tls, &queue)) => reading,
            };
            match reading {
                Ok(Ok(n)) => gauge.set(i64::from(n)),
                Ok(Err(error)) => {
                    tracing::warn!(queue, %error, "cannot read the depth of a dead-letter queue");
                }
                Err(_) => {
                    tracing::warn!(
                        queue,
                        "reading the depth of a dead-letter queue timed out; reconnecting"
                    );
                    link = None;
                }
            }
        }
        if let Some((connection, _)) = link {
            let _ =
                tokio::time::timeout(DEPTH_TIMEOUT, connection.close(200, "shutdown".into())).await;
        }
    })
}

/// One depth reading, connecting or opening a channel first when needed (a failed
/// passive declare closes its channel).
async fn read_depth(
    link: &mut Option<(Connection, Channel)>,
    url: &str,
    name: &str,
    tls: &crate::tls::BrokerTls,
    queue: &str,
) -> Result<u32, DeadLetterError> {
    if !matches!(link, Some((connection, _)) if connection.status().connected()) {
        let connection = crate::connect::connect_with_tls(url, name, tls).await?;
        let channel = connection.create_channel().await?;
        *link = Some((connection, channel));
    }
    let (connection, channel) = link.as_mut().expect("connected just above");
    if !channel.status().connected() {
        *channel = connection.create_channel().await?;
    }
    depth(channel, queue).await
}
