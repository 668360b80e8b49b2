//! JSON encoding that is a fixed point of JavaScript's `JSON.stringify(JSON.parse(·))`.
//!
//! SPEC Part A tells receivers to verify the signature over `JSON.stringify(req.body)`,
//! so every body we sign must come back byte-identical from that round trip:
//! - compact, no insignificant whitespace;
//! - object keys in the order JavaScript enumerates them after `JSON.parse`: keys that
//!   are array indices (`"0"` … `"4294967294"`, canonical form) first, ascending, then
//!   every other key in insertion order;
//! - strings escaped exactly as `JSON.stringify` does (`"`, `\`, `\b \f \n \r \t`, other
//!   control characters as lowercase `\u00xx`; `/` and non-ASCII left as they are);
//! - every number written as JavaScript's shortest round-trip form of the IEEE-754
//!   double it denotes (via `ryu-js`). An integer beyond 2^53 therefore loses precision
//!   exactly as it would in `JSON.parse`, and `-0` is written `0`: what we sign is what a
//!   JavaScript receiver sees.

use serde_json::{Map, Number, Value};

/// Encodes `value` as JavaScript would re-serialise it.
pub fn to_js_string(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    // Every byte written is either ASCII punctuation, a ryu-js digit string, or the
    // output of serde_json's string encoder, all valid UTF-8.
    String::from_utf8(out).expect("the encoder writes UTF-8 only")
}

/// Appends the JavaScript-compatible encoding of `value` to `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Writes a string with `JSON.stringify`'s escaping. serde_json's compact string
/// encoder escapes exactly the same set, with lowercase hex.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a str to a Vec cannot fail");
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    let float = n.as_f64().unwrap_or(f64::NAN);
    if float.is_finite() {
        let mut buf = ryu_js::Buffer::new();
        out.extend_from_slice(buf.format_finite(float).as_bytes());
    } else {
        // JSON.stringify writes non-finite numbers as null; serde_json never produces
        // them from parsing, but a Number built in code could be out of range.
        out.extend_from_slice(b"null");
    }
}

pub fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    let mut first = true;
    let mut emit = |out: &mut Vec<u8>, key: &str, value: &Value| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    };
    let mut indices: Vec<(u32, &str, &Value)> = map
        .iter()
        .filter_map(|(k, v)| array_index(k).map(|i| (i, k.as_str(), v)))
        .collect();
    if indices.is_empty() {
        for (k, v) in map {
            emit(out, k, v);
        }
    } else {
        indices.sort_unstable_by_key(|(i, _, _)| *i);
        for (_, k, v) in &indices {
            emit(out, k, v);
        }
        for (k, v) in map.iter().filter(|(k, _)| array_index(k).is_none()) {
            emit(out, k, v);
        }
    }
    out.push(b'}');
}

/// `Some(i)` when `key` is an ECMAScript array index: the canonical decimal form of an
/// integer in `0 ..= 2^32 - 2`.
fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    let value: u64 = key.parse().ok()?;
    (value <= u64::from(u32::MAX - 1)).then_some(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &str) -> String {
        to_js_string(&serde_json::from_str(v).unwrap())
    }

    #[test]
    fn compact_and_ordered() {
        assert_eq!(enc(r#"{ "b": 1, "a": [1, 2] }"#), r#"{"b":1,"a":[1,2]}"#);
    }

    #[test]
    fn integer_like_keys_come_first_ascending() {
        assert_eq!(
            enc(r#"{"b":1,"10":2,"2":3,"01":4,"-1":5,"4294967295":6,"4294967294":7}"#),
            r#"{"2":3,"10":2,"4294967294":7,"b":1,"01":4,"-1":5,"4294967295":6}"#
        );
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value() {
        assert_eq!(enc(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn numbers_as_javascript_prints_them() {
        assert_eq!(
            enc("[1.0, -0, 0.1, 1e21, 1e-7, 123456789012345678901, 5e-324, 1.5e300]"),
            "[1,0,0.1,1e+21,1e-7,123456789012345680000,5e-324,1.5e+300]"
        );
        assert_eq!(enc("9007199254740993"), "9007199254740992");
        assert_eq!(enc("-12.50"), "-12.5");
    }

    #[test]
    fn strings_escaped_as_javascript_does() {
        let v = json!("a/b \u{e9}\u{1F600} \"q\" \\ \n\r\t\u{8}\u{c}\u{1f}\u{7f}\u{2028}");
        assert_eq!(
            to_js_string(&v),
            "\"a/b \u{e9}\u{1F600} \\\"q\\\" \\\\ \\n\\r\\t\\b\\f\\u001f\u{7f}\u{2028}\""
        );
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of the encoder over arbitrary JSON: its output is JSON that reads
    //! back to the input (numbers as the doubles JavaScript sees), it is a fixed point of
    //! parse-then-encode, and the payload around `data` reads back field by field.

    use proptest::prelude::*;

    use super::*;
    use crate::{EventId, EventType, Payload, Timestamp};

    /// Object keys, with a good share that look like array indices (or almost do),
    /// since those are the keys the encoder reorders.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => any::<String>(),
            1 => "(0|[1-9][0-9]{0,10})",
            1 => "-?0[0-9]{1,3}|[0-9]{1,3}\\.[0-9]",
        ]
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            (-1e6f64..1e6).prop_map(|f| Value::from((f * 1000.0).round() / 1000.0)),
            Just(Value::from(-0.0)),
        ]
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            any::<String>().prop_map(Value::String),
            // Control characters, quotes, backslashes, line separators, astral planes.
            "[\\x00-\\x1f\"\\\\/\u{7f}\u{2028}\u{2029}\u{e9}\u{1F600}a]{0,12}"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..8)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// Equal as JavaScript would see them: numbers compared as doubles, objects as maps.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn output_is_json_that_reads_back_to_the_input(value in any_json()) {
            let encoded = to_js_string(&value);
            let parsed: Value = serde_json::from_str(&encoded).expect("the encoder writes JSON");
            prop_assert!(same(&value, &parsed), "{} read back as {}", value, parsed);
        }

        #[test]
        fn encoding_is_idempotent(value in any_json()) {
            let once = to_js_string(&value);
            let twice = to_js_string(&serde_json::from_str(&once).unwrap());
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn output_is_compact_and_escapes_every_control_character(value in any_json()) {
            let encoded = to_js_string(&value);
            prop_assert!(!encoded.chars().any(|c| c < ' '), "{}", encoded);
            // Insignificant whitespace is gone: only strings may hold spaces.
            prop_assert!(!outside_strings(&encoded).contains(char::is_whitespace), "{}", encoded);
        }

        #[test]
        fn the_payload_reads_back_field_by_field(
            data in prop::collection::vec((key(), any_json()), 0..8),
            kind in prop::sample::select(EventType::ALL.to_vec()),
            ms in 0i64..253_402_300_799_999,
        ) {
            let data: Map<String, Value> = data.into_iter().collect();
            let id = EventId::generate();
            let created = Timestamp::from_datetime(
                chrono::DateTime::from_timestamp_millis(ms).expect("in range"),
            );
            let body = Payload { id: &id, event_type: kind, created, data: &data }.encode();
            let parsed: Value = serde_json::from_str(&body).expect("the payload is JSON");
            let object = parsed.as_object().expect("an object");
            prop_assert_eq!(
                object.keys().map(String::as_str).collect::<Vec<_>>(),
                vec!["id", "type", "created", "data"]
            );
            prop_assert_eq!(object["id"].as_str(), Some(id.as_str()));
            prop_assert_eq!(object["type"].as_str(), Some(kind.as_str()));
            let shown = created.to_string();
            prop_assert_eq!(object["created"].as_str(), Some(shown.as_str()));
            prop_assert!(same(&object["data"], &Value::Object(data.clone())));
            prop_assert_eq!(to_js_string(&parsed), body, "the payload is a fixed point too");
        }
    }

    /// The characters of a JSON text that are not inside a string.
    fn outside_strings(json: &str) -> String {
        let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
        for c in json.chars() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => in_string = false,
                (true, false, _) => {}
                (false, _, '"') => in_string = true,
                (false, _, c) => out.push(c),
            }
        }
        out
    }
}
