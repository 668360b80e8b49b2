//! `Trigger`: why a delivery attempt is made. The one definition: a delivery job carries
//! it (broker), the delivery log records it (store), and the sender and the API decide
//! by it.

/// Why a job was sent, and so what its attempt may do: only `Event` attempts are
/// retried and count towards disabling a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Fan-out of a published event, and its automatic retries.
    Event,
    /// `POST /v1/webhooks/:id/ping`.
    Ping,
    /// A manual retry or recovery through the API: one attempt, never retried.
    Manual,
}

impl Trigger {
    /// The name on the wire and in the log: `event`, `ping`, `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Event => "event",
            Trigger::Ping => "ping",
            Trigger::Manual => "manual",
        }
    }

    /// The trigger named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Trigger::Event, Trigger::Ping, Trigger::Manual]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trigger_reads_back_from_its_name() {
        for t in [Trigger::Event, Trigger::Ping, Trigger::Manual] {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
        }
        assert_eq!(Trigger::parse("Event"), None);
    }
}
