//! RabbitMQ layer for qr3 webhooks: the topology every role declares, the wire format of
//! the messages that cross the broker, confirmed publishing, and consuming with
//! reconnection and dead-lettering (`consumer.rs`).
//!
//! Invariant: secrets never travel through the broker. A delivery job carries ids and
//! the already-encoded payload; senders read URL and secret from Postgres at send time.

#![forbid(unsafe_code)]

pub mod acks;
pub mod backoff;
pub mod connect;
pub mod consumer;
pub mod dead_letters;
pub mod hold;
pub mod job;
pub mod message;
pub mod nodes;
pub mod publish;
pub mod tls;
pub mod topology;

pub use acks::{AckTracker, Settlement};
pub use backoff::Backoff;
pub use connect::{
    connect, connect_node, connect_nodes, connect_with_retry, connect_with_tls, Fatal, Link,
};
pub use consumer::{Consumer, Deliveries, Session};
pub use dead_letters::{DeadLetter, DeadQueue, RedriveMode, RedriveSummary, Scope, Verdict};
pub use hold::{Abandoned, Hold};
pub use job::{
    deferrals, failures, read_jobs, with_deferrals, with_failures, DeliveryJob, InvalidJob, Packer,
    Trigger,
};
pub use message::{EventMessage, IncomingEvent, Rejection};
pub use nodes::{Nodes, NodesError};
pub use publish::{close_channel, Outgoing, PublishError, Publisher, SharedPublisher};
pub use tls::BrokerTls;
pub use topology::Topology;
