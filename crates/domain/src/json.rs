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
