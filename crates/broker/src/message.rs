//! The event message the platform publishes (SPEC C "Event ingestion contract"), and
//! why one can be refused.

use qr3_domain::{EventId, EventType, Payload, Timestamp, WorkspaceId};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The wire form. Unknown extra fields are ignored so the platform can add fields
/// without breaking ingest; missing or mistyped required fields are refused.
#[derive(Debug, Deserialize)]
pub struct EventMessage {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub workspace_id: String,
    #[serde(default)]
    pub created: Option<String>,
    pub data: Map<String, Value>,
}

/// A parsed, valid event.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub id: EventId,
    pub event_type: EventType,
    pub workspace_id: WorkspaceId,
    pub created: Timestamp,
    pub data: Map<String, Value>,
    /// The payload its webhooks receive, encoded once (its size is checked at parse).
    payload: String,
}

/// Why an event message was dead-lettered. `reason()` is the metric label and the
/// `x-qr3-reason` header; the message explains it to a human.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("message is {size} bytes, larger than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    /// The webhook payload the event makes would be larger than the limit: JavaScript's
    /// number format can make a payload longer than its message (`1e20` is written out
    /// in 21 digits), and every payload must fit receivers' default body limits.
    #[error("its webhook payload would be {size} bytes, larger than the {max} allowed")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("message is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("message does not match the event schema: {0}")]
    Schema(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("invalid field `{field}`: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
}

impl Rejection {
    /// Every value [`Rejection::reason`] gives.
    pub const REASONS: [&'static str; 5] = [
        "too_large",
        "invalid_json",
        "invalid_schema",
        "unknown_type",
        "invalid_field",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } | Rejection::PayloadTooLarge { .. } => "too_large",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::Schema(_) => "invalid_schema",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::InvalidField { .. } => "invalid_field",
        }
    }
}

impl IncomingEvent {
    /// Parses and validates one message body. An event without `id` gets a fresh one
    /// (it then cannot be de-duplicated); one without `created` is stamped now.
    pub fn parse(body: &[u8], max_bytes: usize) -> Result<Self, Rejection> {
        if body.len() > max_bytes {
            return Err(Rejection::TooLarge {
                size: body.len(),
                max: max_bytes,
            });
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Rejection::InvalidJson(bounded(e.to_string())))?;
        let message: EventMessage =
            serde_json::from_value(value).map_err(|e| Rejection::Schema(bounded(e.to_string())))?;
        let event_type: EventType = message
            .event_type
            .parse()
            .map_err(|_| Rejection::UnknownType(message.event_type.chars().take(100).collect()))?;
        if !event_type.is_publishable() {
            return Err(Rejection::UnknownType(format!(
                "{event_type} (sent only by the ping endpoint)"
            )));
        }
        let workspace_id =
            WorkspaceId::parse(&message.workspace_id).map_err(|e| Rejection::InvalidField {
                field: "workspace_id",
                message: bounded(e.to_string()),
            })?;
        let id = match message.id {
            Some(id) => EventId::parse(&id).map_err(|e| Rejection::InvalidField {
                field: "id",
                message: bounded(e.to_string()),
            })?,
            None => EventId::generate(),
        };
        let created = match message.created {
            Some(created) => Timestamp::parse(&created).map_err(|e| Rejection::InvalidField {
                field: "created",
                message: bounded(e.to_string()),
            })?,
            None => Timestamp::now(),
        };
        let payload = Payload {
            id: &id,
            event_type,
            created,
            data: &message.data,
        }
        .encode();
        if payload.len() > max_bytes {
            return Err(Rejection::PayloadTooLarge {
                size: payload.len(),
                max: max_bytes,
            });
        }
        Ok(Self {
            id,
            event_type,
            workspace_id,
            created,
            data: message.data,
            payload,
        })
    }

    /// The exact payload its webhooks receive (SPEC Part A), as signed and sent.
    pub fn payload(&self) -> &str {
        &self.payload
    }
}

/// The longest explanation a rejection carries, in characters. Parser errors can quote
/// the offending value (serde's "invalid type: string \"…\"" does), and a rejection
/// ends up in a log line and an AMQP header, which must stay far below a frame.
const MAX_EXPLANATION: usize = 200;

fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_EXPLANATION) {
        text.truncate(cut);
        text.push('\u{2026}');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str = "ws_01jd0000000000000000000000";

    fn parse(s: &str) -> Result<IncomingEvent, Rejection> {
        IncomingEvent::parse(s.as_bytes(), 1024)
    }

    #[test]
    fn accepts_the_contract() {
        let e = parse(&format!(r#"{{"id":"evt_1","type":"qr.scanned","workspace_id":"{WS}","created":"2026-03-15T10:00:00Z","data":{{"a":1}},"extra":true}}"#)).unwrap();
        assert_eq!(e.id.as_str(), "evt_1");
        assert_eq!(e.created.to_string(), "2026-03-15T10:00:00.000Z");
        let e = parse(&format!(
            r#"{{"type":"scan.created","workspace_id":"{WS}","data":{{}}}}"#
        ))
        .unwrap();
        assert!(e.id.as_str().starts_with("evt_"));
    }

    #[test]
    fn a_payload_longer_than_its_message_is_refused_by_its_own_size() {
        // 1e20 is written out in 21 digits, as JavaScript prints it.
        let numbers = vec!["1e20"; 100].join(",");
        let body = format!(
            r#"{{"id":"evt_1","type":"qr.scanned","workspace_id":"{WS}","created":"2026-03-15T10:00:00Z","data":{{"n":[{numbers}]}}}}"#
        );
        assert!(body.len() < 1024);
        match parse(&body).unwrap_err() {
            Rejection::PayloadTooLarge { size, max } => {
                assert!(size > 2000 && max == 1024, "{size} {max}")
            }
            other => panic!("{other:?}"),
        }
        let event = IncomingEvent::parse(body.as_bytes(), 4096).unwrap();
        assert!(event.payload().len() <= 4096);
    }

    #[test]
    fn reasons_lists_every_reason() {
        let all = [
            Rejection::TooLarge { size: 2, max: 1 },
            Rejection::PayloadTooLarge { size: 2, max: 1 },
            Rejection::InvalidJson(String::new()),
            Rejection::Schema(String::new()),
            Rejection::UnknownType(String::new()),
            Rejection::InvalidField {
                field: "id",
                message: String::new(),
            },
        ];
        for rejection in all {
            assert!(Rejection::REASONS.contains(&rejection.reason()));
        }
    }

    #[test]
    fn refuses_each_kind_of_bad_message() {
        let reason = |s: &str| parse(s).unwrap_err().reason();
        assert_eq!(reason("not json"), "invalid_json");
        assert_eq!(
            reason(r#"{"type":"qr.scanned","data":{}}"#),
            "invalid_schema"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"type":"qr.nope","workspace_id":"{WS}","data":{{}}}}"#
            )),
            "unknown_type"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"type":"webhook.ping","workspace_id":"{WS}","data":{{}}}}"#
            )),
            "unknown_type"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"type":"qr.created","workspace_id":"{WS}","data":[]}}"#
            )),
            "invalid_schema"
        );
        assert_eq!(
            reason(r#"{"type":"qr.created","workspace_id":"no pe","data":{}}"#),
            "invalid_field"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"id":"x","type":"qr.created","workspace_id":"{WS}","data":{{}}}}"#
            )),
            "invalid_field"
        );
        assert_eq!(
            IncomingEvent::parse(&[b' '; 2000], 1024)
                .unwrap_err()
                .reason(),
            "too_large"
        );
    }

    #[test]
    fn a_rejection_never_quotes_a_huge_value_back() {
        let huge = "x".repeat(100_000);
        for body in [
            format!(r#"{{"type":"qr.created","workspace_id":"{WS}","data":"{huge}"}}"#),
            format!(r#"{{"type":"qr.created","workspace_id":"{huge}","data":{{}}}}"#),
            format!(r#"{{"id":"{huge}","type":"qr.created","workspace_id":"{WS}","data":{{}}}}"#),
            format!(r#"{{"type":"{huge}","workspace_id":"{WS}","data":{{}}}}"#),
            format!(
                r#"{{"type":"qr.created","workspace_id":"{WS}","created":"{huge}","data":{{}}}}"#
            ),
        ] {
            let rejection = IncomingEvent::parse(body.as_bytes(), usize::MAX).unwrap_err();
            let text = rejection.to_string();
            assert!(text.chars().count() < 400, "{}: {text}", rejection.reason());
        }
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: the parser never panics, whatever the bytes; what it accepts it
    //! reads back exactly; what it refuses it explains briefly.

    use chrono::{DateTime, SecondsFormat};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const MAX: usize = 64 * 1024;

    /// Any JSON value: every scalar kind, strings with any characters, nesting.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| {
                serde_json::Number::from_f64(f).map(Value::Number)
            }),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    fn any_data() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec((any::<String>(), any_json()), 0..6)
            .prop_map(|fields| fields.into_iter().collect())
    }

    fn event_id() -> impl Strategy<Value = String> {
        "evt_[A-Za-z0-9_-]{1,100}"
    }

    fn workspace_id() -> impl Strategy<Value = String> {
        prop_oneof![
            // Generated: `ws_` and a lowercase ULID (Crockford base32, first character
            // at most 7).
            "ws_[0-7][0-9a-hjkmnp-tv-z]{25}",
            // The platform's own.
            "[A-Za-z0-9_-]{1,64}",
        ]
    }

    fn publishable_type() -> impl Strategy<Value = &'static str> {
        prop::sample::select(
            EventType::ALL
                .into_iter()
                .filter(|t| t.is_publishable())
                .map(EventType::as_str)
                .collect::<Vec<_>>(),
        )
    }

    /// RFC 3339 in UTC with milliseconds, between 1970 and 9999.
    fn created() -> impl Strategy<Value = String> {
        (0i64..253_402_300_799_999).prop_map(|ms| {
            DateTime::from_timestamp_millis(ms)
                .expect("in range")
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        })
    }

    /// A field that is usually well-formed and sometimes any JSON at all.
    fn mostly(valid: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
        prop_oneof![3 => valid, 1 => any_json()].boxed()
    }

    /// Objects shaped like events, each field present or not, valid or not.
    fn event_like() -> impl Strategy<Value = Value> {
        (
            proptest::option::of(mostly(event_id().prop_map(Value::String))),
            proptest::option::of(mostly(
                publishable_type().prop_map(|t| Value::String(t.into())),
            )),
            proptest::option::of(mostly(workspace_id().prop_map(Value::String))),
            proptest::option::of(mostly(created().prop_map(Value::String))),
            proptest::option::of(mostly(any_data().prop_map(Value::Object))),
        )
            .prop_map(|(id, kind, ws, created, data)| {
                let mut object = Map::new();
                for (name, value) in [
                    ("id", id),
                    ("type", kind),
                    ("workspace_id", ws),
                    ("created", created),
                    ("data", data),
                ] {
                    if let Some(value) = value {
                        object.insert(name.into(), value);
                    }
                }
                Value::Object(object)
            })
    }

    fn check_rejection(rejection: &Rejection) {
        let text = rejection.to_string();
        assert!(
            text.chars().count() <= 2 * MAX_EXPLANATION,
            "a rejection explains itself briefly: {} characters",
            text.chars().count()
        );
        assert!(!rejection.reason().is_empty());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            if let Err(rejection) = IncomingEvent::parse(&body, MAX) {
                check_rejection(&rejection);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_json(value in any_json()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Err(rejection) = IncomingEvent::parse(&body, MAX) {
                check_rejection(&rejection);
            }
        }

        #[test]
        fn never_panics_on_deep_nesting(depth in 0usize..20_000, open in prop::sample::select(vec!["[", "{\"a\":"])) {
            let body = format!(r#"{{"type":"qr.created","data":{{"x":{}}}}}"#, open.repeat(depth));
            let rejection = IncomingEvent::parse(body.as_bytes(), usize::MAX).unwrap_err();
            check_rejection(&rejection);
        }

        #[test]
        /// An explicit `null` for the optional `id` or `created` means the same as leaving
        /// it out: a fresh id, stamped now.
        fn what_is_accepted_is_what_was_sent(value in event_like()) {
            let body = serde_json::to_vec(&value).unwrap();
            match IncomingEvent::parse(&body, MAX) {
                Ok(event) => {
                    if let Some(id) = value.get("id").filter(|v| !v.is_null()) {
                        prop_assert_eq!(Some(event.id.as_str()), id.as_str());
                    }
                    prop_assert_eq!(Some(event.event_type.as_str()), value["type"].as_str());
                    prop_assert_eq!(Some(event.workspace_id.as_str()), value["workspace_id"].as_str());
                    if let Some(created) = value.get("created").filter(|v| !v.is_null()) {
                        let shown = event.created.to_string();
                        prop_assert_eq!(Some(shown.as_str()), created.as_str());
                    }
                    prop_assert_eq!(Some(&event.data), value["data"].as_object());
                }
                Err(rejection) => check_rejection(&rejection),
            }
        }

        #[test]
        fn every_valid_event_round_trips(
            id in proptest::option::of(event_id()),
            kind in publishable_type(),
            ws in workspace_id(),
            created in proptest::option::of(created()),
            data in any_data(),
            extra in any_json(),
        ) {
            let mut message = json!({"type": kind, "workspace_id": ws, "data": data, "extra": extra});
            if let Some(id) = &id {
                message["id"] = json!(id);
            }
            if let Some(created) = &created {
                message["created"] = json!(created);
            }
            let body = serde_json::to_vec(&message).unwrap();
            let event = IncomingEvent::parse(&body, MAX).expect("a valid event is accepted");
            match &id {
                Some(id) => prop_assert_eq!(event.id.as_str(), id.as_str()),
                None => prop_assert!(event.id.as_str().starts_with("evt_")),
            }
            prop_assert_eq!(event.event_type.as_str(), kind);
            prop_assert_eq!(event.workspace_id.as_str(), ws.as_str());
            if let Some(created) = &created {
                prop_assert_eq!(&event.created.to_string(), created);
            }
            prop_assert_eq!(&event.data, &data);
        }

        #[test]
        fn anything_over_the_limit_is_too_large(extra in 1usize..4096) {
            let body = vec![b' '; MAX + extra];
            let rejection = IncomingEvent::parse(&body, MAX).unwrap_err();
            prop_assert_eq!(rejection.reason(), "too_large");
        }
    }
}
