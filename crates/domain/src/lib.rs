//! The qr3 webhooks domain: what an event, a webhook and a delivery are, with no I/O.
//!
//! Invariant: nothing in this crate knows about Postgres, RabbitMQ or HTTP. Every type
//! that crosses a boundary is parsed here once, so the rest of the code cannot hold an
//! invalid value.

#![forbid(unsafe_code)]

pub mod event;
pub mod ids;
pub mod json;
pub mod payload;
pub mod secret;
pub mod signature;
pub mod target;
pub mod time;
pub mod trigger;
pub mod workspace;

pub use event::{EventFilter, EventType, Subscriptions};
pub use ids::{ApiKeyId, DeliveryId, EventId, PortalSessionId, WebhookId, WorkspaceId};
pub use payload::Payload;
pub use secret::WebhookSecret;
pub use target::{TargetPolicy, WebhookUrl};
pub use time::Timestamp;
pub use trigger::Trigger;
pub use workspace::{InvalidWorkspaceName, WorkspaceName};
