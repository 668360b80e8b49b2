//! Telemetry shared by every qr3 webhooks role: logging, Prometheus metrics, shutdown
//! signals, the ops HTTP endpoints (`/healthz`, `/readyz`, `/metrics`) and the start-up
//! state `/readyz` reports while a process waits for its dependencies.
#![forbid(unsafe_code)]

mod http;
mod logging;
mod metrics;
mod ops;
mod shutdown;
mod startup;

pub use http::{track_http, RateLimitedBy};
pub use logging::init_tracing;
pub use metrics::Metrics;
pub use ops::{ops_router, ready_check, serve, ReadyCheck, READY_CHECK_TIMEOUT};
pub use shutdown::shutdown_token;
pub use startup::{Startup, Waiting};
