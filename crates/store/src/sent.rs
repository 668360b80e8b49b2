//! The compact form of the headers an attempt sent (`delivery_attempts.sent_headers`).
//!
//! Most of what a sender sets is known from the attempt's row (its ids, event type and
//! number, the Unix seconds of its time) or is the same on every request; what only the
//! request itself knows is its signatures. Format 1 keeps just those: the user agent's
//! version and the raw HMACs, 32 bytes each, which rebuild the exact header values.
//! Headers of any other shape are kept as they were, as jsonb (format 0). An attempt is
//! stored in format 1 only when decoding it gives back exactly what was sent.

use base64::Engine;

/// The headers are in `request_headers` (jsonb).
pub const FORMAT_JSON: u8 = 0;
/// The headers are rebuilt from the row and this blob.
pub const FORMAT_COMPACT: u8 = 1;

const USER_AGENT_PREFIX: &str = "qr3-webhooks/";
const DIGEST: usize = 32;

/// What the row says, from which the fixed headers are rebuilt.
pub struct RowFields<'a> {
    pub id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub attempt: u16,
    pub unix_seconds: i64,
}

/// The headers in format 1, or `None` when they do not have the shape it rebuilds
/// exactly. On the sender's hot path, so it checks in place, allocating only the blob.
pub fn encode(headers: &[(String, String)], row: &RowFields<'_>) -> Option<Vec<u8>> {
    let [(_, ct), (_, ua), (_, eid), (_, ety), (_, did), (_, att), (_, ts), (_, sig), (_, wid), (_, wts), (_, wsig)] =
        headers
    else {
        return None;
    };
    let names_match = headers
        .iter()
        .zip(NAMES)
        .all(|((name, _), expected)| name == expected);
    let seconds = row.unix_seconds.to_string();
    let rebuilt = names_match
        && ct == "application/json"
        && eid == row.event_id
        && wid == row.event_id
        && ety == row.event_type
        && did == row.id
        && att.parse::<u16>().ok() == Some(row.attempt)
        && !att.starts_with(['0', '+'])
        && *ts == seconds
        && *wts == seconds;
    if !rebuilt {
        return None;
    }
    let version = ua.strip_prefix(USER_AGENT_PREFIX)?;
    let version_len = u8::try_from(version.len()).ok()?;
    let mut digest = [0u8; DIGEST];
    let hex_digest = sig.strip_prefix("sha256=")?;
    // Lower-case hex only: that is what decoding writes back.
    if hex_digest.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode_to_slice(hex_digest, &mut digest).ok()?;
    let entries = if wsig.is_empty() {
        0
    } else {
        wsig.split(' ').count()
    };
    let mut out = Vec::with_capacity(2 + version.len() + DIGEST * (1 + entries));
    out.push(FORMAT_COMPACT);
    out.push(version_len);
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(&digest);
    if entries > 0 {
        let engine = &base64::engine::general_purpose::STANDARD;
        for entry in wsig.split(' ') {
            let encoded = entry.strip_prefix("v1,")?;
            // A 32-byte digest is 44 characters with padding; anything else (or a
            // non-canonical spelling) would not come back the same.
            let mut decoded = [0u8; DIGEST + 2];
            if engine.decode_slice(encoded, &mut decoded).ok()? != DIGEST {
                return None;
            }
            let mut again = [0u8; 44];
            let n = engine.encode_slice(&decoded[..DIGEST], &mut again).ok()?;
            if &again[..n] != encoded.as_bytes() {
                return None;
            }
            out.extend_from_slice(&decoded[..DIGEST]);
        }
    }
    debug_assert_eq!(decode(&out, row).as_deref(), Some(headers));
    Some(out)
}

/// The names format 1 rebuilds, in the order the sender sets them.
const NAMES: [&str; 11] = [
    "content-type",
    "user-agent",
    "x-qr3-event-id",
    "x-qr3-event-type",
    "x-qr3-delivery-id",
    "x-qr3-delivery-attempt",
    "x-qr3-timestamp",
    "x-qr3-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The headers a format-1 blob stands for; `None` when it is not one.
pub fn decode(blob: &[u8], row: &RowFields<'_>) -> Option<Vec<(String, String)>> {
    let (&format, rest) = blob.split_first()?;
    if format != FORMAT_COMPACT {
        return None;
    }
    let (&version_len, rest) = rest.split_first()?;
    let version = std::str::from_utf8(rest.get(..usize::from(version_len))?).ok()?;
    let digests = &rest[usize::from(version_len)..];
    if digests.len() < DIGEST || digests.len() % DIGEST != 0 {
        return None;
    }
    let (first, others) = digests.split_at(DIGEST);
    let seconds = row.unix_seconds.to_string();
    let standard: Vec<String> = others
        .chunks(DIGEST)
        .map(|d| {
            let mut s = String::from("v1,");
            base64::engine::general_purpose::STANDARD.encode_string(d, &mut s);
            s
        })
        .collect();
    let values = [
        "application/json".to_owned(),
        format!("{USER_AGENT_PREFIX}{version}"),
        row.event_id.to_owned(),
        row.event_type.to_owned(),
        row.id.to_owned(),
        row.attempt.to_string(),
        seconds.clone(),
        format!("sha256={}", hex::encode(first)),
        row.event_id.to_owned(),
        seconds,
        standard.join(" "),
    ];
    Some(
        NAMES
            .iter()
            .zip(values)
            .map(|(name, value)| ((*name).to_owned(), value))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RowFields<'static> {
        RowFields {
            id: "whd_01kmnd4e2x7r4h1v3f5s8q0c9b",
            event_id: "evt_1",
            event_type: "qr.scanned",
            attempt: 2,
            unix_seconds: 1_773_568_800,
        }
    }

    fn sent(signatures: &str) -> Vec<(String, String)> {
        let values = [
            "application/json",
            "qr3-webhooks/0.1.0",
            "evt_1",
            "qr.scanned",
            "whd_01kmnd4e2x7r4h1v3f5s8q0c9b",
            "2",
            "1773568800",
            "sha256=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
            "evt_1",
            "1773568800",
            signatures,
        ];
        NAMES
            .iter()
            .zip(values)
            .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn what_the_sender_sets_comes_back_exactly() {
        let one = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=";
        let two = format!("{one} v1,AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        for signatures in [one, two.as_str()] {
            let headers = sent(signatures);
            let blob = encode(&headers, &row()).expect("the sender's shape");
            assert!(blob.len() < 2 + 5 + 3 * DIGEST + 1);
            assert_eq!(decode(&blob, &row()).unwrap(), headers);
        }
    }

    #[test]
    fn anything_else_stays_as_it_was() {
        let mut other_time = row();
        other_time.unix_seconds += 1;
        assert!(encode(&sent("v1,x"), &row()).is_none(), "not base64");
        assert!(
            encode(
                &sent("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
                &other_time
            )
            .is_none(),
            "a timestamp the row does not give"
        );
        let mut upper = sent("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=");
        upper[7].1 = upper[7]
            .1
            .to_ascii_uppercase()
            .replace("SHA256=", "sha256=");
        assert!(encode(&upper, &row()).is_none(), "upper-case hex");
        assert!(encode(&[], &row()).is_none(), "no headers");
        let mut extra = sent("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=");
        extra.push(("x-other".into(), "1".into()));
        assert!(encode(&extra, &row()).is_none(), "a header more");
        let mut zero = sent("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=");
        zero[5].1 = "02".into();
        assert!(
            encode(&zero, &row()).is_none(),
            "an attempt number spelled otherwise"
        );
        let unpadded = sent("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4");
        assert!(
            encode(&unpadded, &row()).is_none(),
            "base64 without its padding"
        );
        let short = sent("v1,AAEC");
        assert!(encode(&short, &row()).is_none(), "not a 32-byte digest");
    }
}
