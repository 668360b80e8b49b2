//! Event types of SPEC Part A and how a webhook's subscriptions match them.
//!
//! `scan.created` is an alias of `qr.scanned`: a subscription to either name matches an
//! event published under either name. `*` matches everything except `webhook.ping`,
//! which only the ping endpoint sends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A concrete event type, as the platform publishes it and as the payload's `type` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    QrCreated,
    QrUpdated,
    QrDeleted,
    QrScanned,
    QrFlagged,
    ScanCreated,
    WorkspaceUpdated,
    WebhookPing,
}

/// The string was not one of the event types of SPEC Part A.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`")]
pub struct UnknownEventType(pub String);

impl EventType {
    /// Every event type, in the order of SPEC Part A's table.
    pub const ALL: [EventType; 8] = [
        EventType::QrCreated,
        EventType::QrUpdated,
        EventType::QrDeleted,
        EventType::QrScanned,
        EventType::QrFlagged,
        EventType::ScanCreated,
        EventType::WorkspaceUpdated,
        EventType::WebhookPing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::QrCreated => "qr.created",
            EventType::QrUpdated => "qr.updated",
            EventType::QrDeleted => "qr.deleted",
            EventType::QrScanned => "qr.scanned",
            EventType::QrFlagged => "qr.flagged",
            EventType::ScanCreated => "scan.created",
            EventType::WorkspaceUpdated => "workspace.updated",
            EventType::WebhookPing => "webhook.ping",
        }
    }

    /// The event this name stands for: aliases collapse onto one canonical type.
    pub const fn canonical(self) -> EventType {
        match self {
            EventType::ScanCreated => EventType::QrScanned,
            other => other,
        }
    }

    /// Whether the platform may publish this type (everything but `webhook.ping`).
    pub const fn is_publishable(self) -> bool {
        !matches!(self, EventType::WebhookPing)
    }
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.chars().take(100).collect()))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry of a webhook's `events` list: a type, or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventFilter {
    All,
    Only(EventType),
}

impl EventFilter {
    pub fn matches(self, event: EventType) -> bool {
        match self {
            EventFilter::All => event != EventType::WebhookPing,
            EventFilter::Only(t) => t.canonical() == event.canonical(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventFilter::All => "*",
            EventFilter::Only(t) => t.as_str(),
        }
    }
}

impl FromStr for EventFilter {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            Ok(EventFilter::All)
        } else {
            s.parse().map(EventFilter::Only)
        }
    }
}

impl fmt::Display for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook's `events`: non-empty, no duplicates, in the order the customer gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions(Vec<EventFilter>);

/// Why an `events` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSubscriptions {
    #[error("events must not be empty")]
    Empty,
    #[error("events must list at most {max} entries")]
    TooMany { max: usize },
    #[error(transparent)]
    Unknown(#[from] UnknownEventType),
}

impl Subscriptions {
    /// More entries than there are event types is always a mistake.
    pub const MAX: usize = 32;

    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, InvalidSubscriptions> {
        if names.is_empty() {
            return Err(InvalidSubscriptions::Empty);
        }
        if names.len() > Self::MAX {
            return Err(InvalidSubscriptions::TooMany { max: Self::MAX });
        }
        let mut filters: Vec<EventFilter> = Vec::with_capacity(names.len());
        for name in names {
            let filter: EventFilter = name.as_ref().parse()?;
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        Ok(Self(filters))
    }

    /// Reads a stored list leniently: the names this build knows, and apart the ones it
    /// does not (written by a newer release before a rollback, or outside the API).
    /// `None` when no known name is left. The API keeps using [`Subscriptions::parse`].
    pub fn parse_known<S: AsRef<str>>(names: &[S]) -> (Option<Self>, Vec<String>) {
        let mut filters: Vec<EventFilter> = Vec::with_capacity(names.len());
        let mut unknown = Vec::new();
        for name in names {
            match name.as_ref().parse::<EventFilter>() {
                Ok(filter) if !filters.contains(&filter) => filters.push(filter),
                Ok(_) => {}
                Err(_) => unknown.push(name.as_ref().to_owned()),
            }
        }
        ((!filters.is_empty()).then_some(Self(filters)), unknown)
    }

    pub fn matches(&self, event: EventType) -> bool {
        self.0.iter().any(|f| f.matches(event))
    }

    pub fn filters(&self) -> &[EventFilter] {
        &self.0
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|f| f.as_str().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_list_keeps_its_known_names_and_reports_the_others() {
        let (known, unknown) = Subscriptions::parse_known(&["qr.scanned", "qr.teleported", "*"]);
        let known = known.expect("two known names");
        assert_eq!(known.to_strings(), ["qr.scanned", "*"]);
        assert_eq!(unknown, ["qr.teleported"]);
        let (none, unknown) = Subscriptions::parse_known(&["qr.teleported"]);
        assert!(none.is_none());
        assert_eq!(unknown.len(), 1);
    }

    fn subs(names: &[&str]) -> Subscriptions {
        Subscriptions::parse(names).unwrap()
    }

    #[test]
    fn every_type_of_part_a_round_trips() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert!("qr.exploded".parse::<EventType>().is_err());
    }

    #[test]
    fn alias_matches_both_ways() {
        assert!(subs(&["scan.created"]).matches(EventType::QrScanned));
        assert!(subs(&["qr.scanned"]).matches(EventType::ScanCreated));
        assert!(!subs(&["qr.scanned"]).matches(EventType::QrCreated));
    }

    #[test]
    fn wildcard_matches_all_but_ping() {
        let all = subs(&["*"]);
        for t in EventType::ALL {
            assert_eq!(all.matches(t), t != EventType::WebhookPing, "{t}");
        }
    }

    #[test]
    fn invalid_lists_are_refused() {
        assert_eq!(
            Subscriptions::parse::<&str>(&[]),
            Err(InvalidSubscriptions::Empty)
        );
        assert!(matches!(
            Subscriptions::parse(&["qr.nope"]),
            Err(InvalidSubscriptions::Unknown(_))
        ));
    }

    #[test]
    fn duplicates_collapse_and_order_is_kept() {
        assert_eq!(
            subs(&["qr.created", "*", "qr.created"]).to_strings(),
            ["qr.created", "*"]
        );
    }
}
