//! The sender's held publishing (retries, parked jobs, dead letters): the session's
//! [`qr3_broker::Hold`], which publishes with confirms again and again, with backoff,
//! until the broker takes the messages rather than handing the jobs back.

use qr3_broker::{Outgoing, Publisher, Topology};
use qr3_telemetry::Metrics;

pub use qr3_broker::{Abandoned, Hold};

/// [`Hold::publish`]: the hold carries the topology (to declare a missing queue again)
/// and the wait counter (`qr3_dependency_waits_total{dependency="broker"}`) itself.
pub async fn publish(
    publisher: &Publisher,
    _topology: &Topology,
    _metrics: &Metrics,
    hold: &Hold,
    what: &'static str,
    messages: &[Outgoing],
) -> Result<(), Abandoned> {
    hold.publish(publisher, what, messages).await
}
