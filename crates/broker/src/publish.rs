//! Publishing with publisher confirms, pipelined: a batch is written to the channel in
//! one go and then every confirm is awaited, so a batch costs about one round-trip.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// A channel in confirm mode. Cheap to clone (channels are handles).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused {0} of the messages (nack)")]
    Nacked(usize),
    #[error("a mandatory message could not be routed to {0}")]
    Unroutable(String),
}

impl Publisher {
    pub async fn open(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Closes the channel. A session closes its channels itself before its connection
    /// is closed: lapin closes a channel dropped while the connection is open on a task
    /// of its own, which then races the connection's close and logs an ERROR
    /// ("invalid channel state: Closing") at every clean shutdown.
    pub async fn close(&self) {
        close_channel(&self.channel).await;
    }

    /// Publishes every message and returns once the broker has confirmed all of them
    /// (for persistent messages on quorum queues: written to a majority of disks).
    /// Messages are `mandatory`, so one that no queue would take is an error rather
    /// than silently dropped.
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        self.publish(messages, true).await
    }

    /// Publishes notifications that may legitimately have no listener (not
    /// `mandatory`): confirmed by the broker, dropped if no queue is bound.
    pub async fn publish_notifications(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        self.publish(messages, false).await
    }

    async fn publish(&self, messages: &[Outgoing], mandatory: bool) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let confirm = self
                .channel
                .basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    &m.body,
                    m.properties.clone(),
                )
                .await?;
            confirms.push((confirm, &m.routing_key));
        }
        let mut nacked = 0;
        for (confirm, routing_key) in confirms {
            match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(PublishError::Unroutable(routing_key.clone()))
                }
                Confirmation::Nack(_) => nacked += 1,
            }
        }
        if nacked > 0 {
            return Err(PublishError::Nacked(nacked));
        }
        Ok(())
    }
}

/// Closes `channel` if it is open (see [`Publisher::close`] for why sessions do it).
pub async fn close_channel(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "closing".into()).await;
    }
}

/// A publisher that connects on first use and reconnects after a failure; for
/// processes that publish now and then (the API's ping, the CLI) rather than consume.
pub struct SharedPublisher {
    url: String,
    name: String,
    tls: crate::tls::BrokerTls,
    state: tokio::sync::Mutex<Option<(Connection, Publisher)>>,
}

impl SharedPublisher {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            tls: crate::tls::BrokerTls::default(),
            state: tokio::sync::Mutex::new(None),
        }
    }

    /// The same publisher, connecting with `tls` (`amqp.tls_ca_file`).
    pub fn with_tls(mut self, tls: crate::tls::BrokerTls) -> Self {
        self.tls = tls;
        self
    }

    /// Publishes with confirms; on a broken connection reconnects and tries once more.
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        let mut state = self.state.lock().await;
        for attempt in 0..2 {
            if state
                .as_ref()
                .is_none_or(|(connection, _)| !connection.status().connected())
            {
                let connection =
                    crate::connect::connect_with_tls(&self.url, &self.name, &self.tls).await?;
                let publisher = Publisher::open(&connection).await?;
                *state = Some((connection, publisher));
            }
            let (_, publisher) = state.as_ref().expect("connected just above");
            match publisher.publish_all(messages).await {
                Err(PublishError::Broker(error)) if attempt == 0 => {
                    tracing::warn!(%error, "publishing failed; reconnecting once");
                    *state = None;
                }
                other => return other,
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// Whether the last connection is up (readiness); connects if there is none.
    pub async fn check(&self) -> Result<(), PublishError> {
        let mut state = self.state.lock().await;
        if state
            .as_ref()
            .is_none_or(|(connection, _)| !connection.status().connected())
        {
            let connection =
                crate::connect::connect_with_tls(&self.url, &self.name, &self.tls).await?;
            let publisher = Publisher::open(&connection).await?;
            *state = Some((connection, publisher));
        }
        Ok(())
    }
}
