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
    /// A forced resend through the API (`{"force": true}` on a retry) of an event the
    /// webhook already received: made even though the event was delivered, otherwise
    /// like `Manual` (one attempt, never retried, logged as `manual`).
    Resend,
}

/// Every trigger, for parsing and tests.
const ALL: [Trigger; 4] = [
    Trigger::Event,
    Trigger::Ping,
    Trigger::Manual,
    Trigger::Resend,
];

impl Trigger {
    /// The name on the wire: `event`, `ping`, `manual`, `resend`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Event => "event",
            Trigger::Ping => "ping",
            Trigger::Manual => "manual",
            Trigger::Resend => "resend",
        }
    }

    /// The trigger the delivery log records for an attempt of this job: a resend is a
    /// manual attempt to the customer.
    pub fn logged(self) -> Trigger {
        match self {
            Trigger::Resend => Trigger::Manual,
            other => other,
        }
    }

    /// The trigger named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trigger_reads_back_from_its_name() {
        for t in ALL {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
        }
        assert_eq!(Trigger::parse("Event"), None);
    }

    #[test]
    fn a_resend_is_logged_as_a_manual_attempt() {
        assert_eq!(Trigger::Resend.logged(), Trigger::Manual);
        for t in [Trigger::Event, Trigger::Ping, Trigger::Manual] {
            assert_eq!(t.logged(), t);
        }
    }
}
