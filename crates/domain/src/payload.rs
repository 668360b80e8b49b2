//! The payload every webhook receives (SPEC Part A), encoded once and signed as sent.

use serde_json::{Map, Value};

use crate::{json, EventId, EventType, Timestamp};

/// `{"id", "type", "created", "data"}` in that order, JavaScript-stable (see [`json`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Payload<'a> {
    pub id: &'a EventId,
    pub event_type: EventType,
    pub created: Timestamp,
    pub data: &'a Map<String, Value>,
}

impl Payload<'_> {
    /// The exact bytes that are signed and POSTed.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(96 + self.data.len() * 24);
        out.extend_from_slice(b"{\"id\":");
        json::write_str(&mut out, self.id.as_str());
        out.extend_from_slice(b",\"type\":");
        json::write_str(&mut out, self.event_type.as_str());
        out.extend_from_slice(b",\"created\":\"");
        out.extend_from_slice(self.created.to_string().as_bytes());
        out.extend_from_slice(b"\",\"data\":");
        json::write_object(&mut out, self.data);
        out.push(b'}');
        String::from_utf8(out).expect("the encoder writes UTF-8 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_a_example_payload() {
        let id = EventId::parse("evt_abc123xyz").unwrap();
        let data: Map<String, Value> = serde_json::from_str(
            r#"{ "code_id": "qr_abc123", "short_code": "r7f3Kx", "scan_id": "scn_xyz",
                 "country": "AT", "device_type": "mobile", "os": "iOS" }"#,
        )
        .unwrap();
        let body = Payload {
            id: &id,
            event_type: EventType::QrScanned,
            created: Timestamp::parse("2026-03-15T10:00:00.000Z").unwrap(),
            data: &data,
        }
        .encode();
        assert_eq!(
            body,
            r#"{"id":"evt_abc123xyz","type":"qr.scanned","created":"2026-03-15T10:00:00.000Z","data":{"code_id":"qr_abc123","short_code":"r7f3Kx","scan_id":"scn_xyz","country":"AT","device_type":"mobile","os":"iOS"}}"#
        );
    }
}
