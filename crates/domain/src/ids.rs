//! Typed, prefixed identifiers (`wh_…`, `evt_…`, `whd_…`, `ws_…`, `key_…`, `ps_…`).
//!
//! Generated ids are a prefix plus a lowercase ULID: 48 bits of millisecond time followed
//! by 80 random bits from the OS-seeded CSPRNG, so they sort by creation time and cannot
//! be guessed. Event ids may also come from the platform, in which case any
//! `evt_` + `[A-Za-z0-9_-]{1,100}` is accepted. Workspaces belong to the platform, which
//! names them with its own ids: any 1 to 64 of `[A-Za-z0-9_-]` (a generated `ws_…` id is
//! one of them).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} id (expected {expected})")]
pub struct InvalidId {
    kind: &'static str,
    /// What an id of this kind looks like, for the message.
    expected: &'static str,
    value: String,
}

/// `prefix` + a fresh lowercase ULID, in one allocation (an id per attempt is made on
/// the sender's hot path).
fn new_prefixed(prefix: &str) -> String {
    let mut buf = [0u8; ulid::ULID_LEN];
    // `Ulid::new` draws from `rand::thread_rng`, a CSPRNG seeded from the OS.
    let suffix = ulid::Ulid::new().array_to_str(&mut buf);
    suffix.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + ulid::ULID_LEN);
    id.push_str(prefix);
    id.push_str(suffix);
    id
}

/// The ULID of millisecond `ms` (clamped at the epoch) with `random` as its random bits.
fn ulid_suffix_at(ms: i64, random: u128) -> String {
    ulid::Ulid::from_parts(u64::try_from(ms).unwrap_or(0), random)
        .to_string()
        .to_ascii_lowercase()
}

fn is_ulid_suffix(s: &str) -> bool {
    s.len() == 26
        && ulid::Ulid::from_string(s).is_ok()
        && s.bytes().all(|b| !b.is_ascii_uppercase())
}

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, unguessable, time-sortable id.
            pub fn generate() -> Self {
                Self(new_prefixed($prefix))
            }

            /// Parses an id previously produced by [`Self::generate`].
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                match s.strip_prefix($prefix) {
                    Some(rest) if is_ulid_suffix(rest) => Ok(Self(s.to_owned())),
                    _ => Err(InvalidId {
                        kind: $kind,
                        expected: concat!("`", $prefix, "…`"),
                        value: truncate(s, 120),
                    }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The 128 bits of the ULID after the prefix, big-endian (byte order is
            /// the ids' order): the id as the delivery log stores it.
            pub fn to_ulid_bytes(&self) -> [u8; 16] {
                ulid::Ulid::from_string(&self.0[$prefix.len()..])
                    .map(|u| u.to_bytes())
                    .unwrap_or_default()
            }

            /// The id whose ULID is `bytes` (the inverse of [`Self::to_ulid_bytes`]).
            pub fn from_ulid_bytes(bytes: [u8; 16]) -> Self {
                Self(format!(
                    "{}{}",
                    $prefix,
                    ulid::Ulid::from_bytes(bytes).to_string().to_ascii_lowercase()
                ))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

ulid_id!(
    /// A webhook endpoint registered by a workspace.
    WebhookId, "wh_", "webhook"
);
ulid_id!(
    /// One delivery attempt (one row of the delivery log).
    DeliveryId, "whd_", "delivery"
);
ulid_id!(
    /// An API key's public identifier (the secret part is never stored).
    ApiKeyId, "key_", "api key"
);
ulid_id!(
    /// A customer-portal session's public identifier (its token is never stored).
    PortalSessionId, "ps_", "portal session"
);

impl DeliveryId {
    /// A fresh id stamped with `at` instead of the current time, for rows written
    /// after the fact (tests, backfills) that must sort and bound like live ones.
    pub fn generate_at(at: Timestamp) -> Self {
        Self(format!(
            "{}{}",
            Self::PREFIX,
            ulid_suffix_at(at.unix_millis(), rand::random())
        ))
    }

    /// The smallest id that can be generated at `at` or later: `at`'s millisecond with
    /// every random bit zero. Not an id of any row; a range bound (`id >= bound`) that
    /// lets a query on the time-sorted `(webhook_id, id)` index skip older rows.
    pub fn lower_bound_at(at: Timestamp) -> Self {
        Self(format!(
            "{}{}",
            Self::PREFIX,
            ulid_suffix_at(at.unix_millis(), 0)
        ))
    }
}

/// The identifier of one domain event. Generated ids are ULID-based; ids supplied by the
/// platform are accepted when they are `evt_` followed by 1 to 100 of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    pub const PREFIX: &'static str = "evt_";
    const MAX_SUFFIX: usize = 100;

    pub fn generate() -> Self {
        Self(new_prefixed(Self::PREFIX))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let ok = s.strip_prefix(Self::PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= Self::MAX_SUFFIX
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidId {
                kind: "event",
                expected: "`evt_` and 1 to 100 of A-Z, a-z, 0-9, `_`, `-`",
                value: truncate(s, 120),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A workspace: the tenant every webhook and API key belongs to. The platform creates
/// workspaces under its own ids, so an id is any 1 to 64 of `[A-Za-z0-9_-]`
/// (case-sensitive); [`WorkspaceId::generate`] makes `ws_` + a lowercase ULID, which is
/// one of them. Unlike the other ids, a workspace id need not sort by creation time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// The prefix of generated ids (platform ids need not have it).
    pub const PREFIX: &'static str = "ws_";
    /// The longest id accepted, in characters (all ASCII).
    pub const MAX_LEN: usize = 64;

    /// A fresh, unguessable id: `ws_` + a lowercase ULID.
    pub fn generate() -> Self {
        Self(new_prefixed(Self::PREFIX))
    }

    /// Accepts 1 to 64 of `[A-Za-z0-9_-]`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidId {
                kind: "workspace",
                expected: "1 to 64 of A-Z, a-z, 0-9, `_`, `-`",
                value: truncate(s, 120),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for WorkspaceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkspaceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_bytes_round_trip_in_order() {
        let a = DeliveryId::generate();
        assert_eq!(DeliveryId::from_ulid_bytes(a.to_ulid_bytes()), a);
        let known = WebhookId::parse("wh_01arz3ndektsv4rrffq69g5fav").unwrap();
        assert_eq!(
            hex::encode(known.to_ulid_bytes()),
            "01563e3ab5d3d6764c61efb99302bd5b"
        );
        let (x, y) = (DeliveryId::generate(), DeliveryId::generate());
        assert_eq!(x.cmp(&y), x.to_ulid_bytes().cmp(&y.to_ulid_bytes()));
    }

    #[test]
    fn generated_ids_parse_back_and_carry_their_prefix() {
        let id = WebhookId::generate();
        assert!(id.as_str().starts_with("wh_"));
        assert_eq!(WebhookId::parse(id.as_str()).unwrap(), id);
        assert!(
            DeliveryId::parse(id.as_str()).is_err(),
            "a webhook id is not a delivery id"
        );
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = DeliveryId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = DeliveryId::generate();
        assert!(a < b);
    }

    fn plus_ms(t: Timestamp, ms: i64) -> Timestamp {
        Timestamp::from(t.as_datetime() + chrono::Duration::milliseconds(ms))
    }

    #[test]
    fn an_id_lies_between_the_bounds_of_its_millisecond_and_the_next() {
        let before = Timestamp::now();
        let live = DeliveryId::generate();
        let after = Timestamp::now();
        assert!(DeliveryId::lower_bound_at(before) <= live);
        assert!(DeliveryId::lower_bound_at(plus_ms(after, 1)) > live);

        let t = Timestamp::parse("2026-03-15T10:00:00.123Z").unwrap();
        for _ in 0..1000 {
            let id = DeliveryId::generate_at(t);
            assert!(DeliveryId::parse(id.as_str()).is_ok(), "{id}");
            assert!(DeliveryId::lower_bound_at(t) <= id);
            assert!(DeliveryId::lower_bound_at(plus_ms(t, 1)) > id);
            assert!(DeliveryId::lower_bound_at(plus_ms(t, -1)) < id);
        }
    }

    proptest::proptest! {
        #[test]
        fn bounds_order_like_time(ms in 0i64..(1 << 48) - 1, random: u128) {
            // Even the largest random part of millisecond `ms` sorts below `ms + 1`.
            let id = ulid_suffix_at(ms, random);
            let (low, next) = (ulid_suffix_at(ms, 0), ulid_suffix_at(ms + 1, 0));
            proptest::prop_assert!(low <= id, "{} > {}", low, id);
            proptest::prop_assert!(next > id, "{} <= {}", next, id);
        }
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<_> =
            (0..10_000).map(|_| WebhookId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn platform_event_ids_are_accepted_within_limits() {
        assert!(EventId::parse("evt_abc123xyz").is_ok());
        assert!(EventId::parse("evt_").is_err());
        assert!(EventId::parse("abc").is_err());
        assert!(EventId::parse("evt_a b").is_err());
        assert!(EventId::parse(&format!("evt_{}", "a".repeat(101))).is_err());
    }

    #[test]
    fn workspace_ids_are_the_platforms_own_or_generated() {
        let generated = WorkspaceId::generate();
        assert!(generated.as_str().starts_with("ws_"));
        assert_eq!(WorkspaceId::parse(generated.as_str()).unwrap(), generated);
        for ok in [
            "acme",
            "ACME-42",
            "a",
            "tenant_0001",
            &"x".repeat(64),
            "ws_abc",
        ] {
            assert_eq!(WorkspaceId::parse(ok).unwrap().as_str(), ok);
        }
        assert_ne!(
            WorkspaceId::parse("Acme").unwrap(),
            WorkspaceId::parse("acme").unwrap(),
            "case-sensitive"
        );
        for bad in [
            "",
            "a b",
            "acme.io",
            "a/b",
            "é",
            &"x".repeat(65),
            "ws_\u{0}",
        ] {
            let error = WorkspaceId::parse(bad).unwrap_err().to_string();
            assert!(error.contains("1 to 64 of A-Z"), "{bad}: {error}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_platform_shaped_id_parses_back(id in "[A-Za-z0-9_-]{1,64}") {
            let parsed = WorkspaceId::parse(&id).unwrap();
            proptest::prop_assert_eq!(parsed.as_str(), id.as_str());
            let json = serde_json::to_string(&parsed).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<WorkspaceId>(&json).unwrap(), parsed);
        }
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!(WebhookId::parse("wh_abc123").is_err());
        assert!(
            WebhookId::parse("wh_01HZZZZZZZZZZZZZZZZZZZZZZZ").is_err(),
            "uppercase is not ours"
        );
        assert!(WebhookId::parse("").is_err());
    }
}
