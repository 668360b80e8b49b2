//! The header set of one attempt: qr3's own `x-qr3-*` headers and the Standard Webhooks
//! headers, signed. Pure: the attempt passes in the job, the attempt's id and time, and
//! the secrets.

use hyper::header::{HeaderName, HeaderValue};
use qr3_broker::DeliveryJob;
use qr3_domain::{signature, DeliveryId, Timestamp, WebhookSecret};

static EVENT_ID: HeaderName = HeaderName::from_static("x-qr3-event-id");
static EVENT_TYPE: HeaderName = HeaderName::from_static("x-qr3-event-type");
static DELIVERY_ID: HeaderName = HeaderName::from_static("x-qr3-delivery-id");
static ATTEMPT: HeaderName = HeaderName::from_static("x-qr3-delivery-attempt");
static TIMESTAMP: HeaderName = HeaderName::from_static("x-qr3-timestamp");
static SIGNATURE: HeaderName = HeaderName::from_static("x-qr3-signature");
// Standard Webhooks (https://www.standardwebhooks.com): `webhook-id` is the event id, the
// same on every attempt and duplicate; `webhook-timestamp` is this attempt's Unix
// seconds; `webhook-signature` has one `v1,<base64>` per valid secret, newest first.
static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The headers sent with an attempt: `X-QR3-Signature` with the `current` secret only,
/// `webhook-signature` with every secret in `signing` (newest first).
pub fn signed<'a>(
    job: &DeliveryJob,
    id: &DeliveryId,
    now: Timestamp,
    current: &WebhookSecret,
    signing: impl IntoIterator<Item = &'a WebhookSecret>,
) -> [(HeaderName, HeaderValue); 9] {
    let seconds = now.unix_seconds();
    [
        (EVENT_ID.clone(), value(job.event_id.as_str())),
        (
            EVENT_TYPE.clone(),
            HeaderValue::from_static(job.event_type.as_str()),
        ),
        (DELIVERY_ID.clone(), value(id.as_str())),
        (ATTEMPT.clone(), HeaderValue::from(job.attempt)),
        (TIMESTAMP.clone(), HeaderValue::from(seconds)),
        (
            SIGNATURE.clone(),
            value(&signature::sign(current, &job.body)),
        ),
        (WEBHOOK_ID.clone(), value(job.event_id.as_str())),
        (WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(seconds)),
        (
            WEBHOOK_SIGNATURE.clone(),
            value(&signature::standard_webhooks::header(
                signing,
                job.event_id.as_str(),
                seconds,
                &job.body,
            )),
        ),
    ]
}

/// The request headers as the delivery log keeps them: the two the HTTP client adds,
/// then `sent`. Signatures, never secrets.
pub fn logged(sent: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(sent.len() + 2);
    out.push(("content-type".to_owned(), "application/json".to_owned()));
    out.push((
        "user-agent".to_owned(),
        crate::http::USER_AGENT_VALUE.to_owned(),
    ));
    for (name, value) in sent {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.push((name.as_str().to_owned(), value));
    }
    out
}

fn value(s: &str) -> HeaderValue {
    // Ids and hex or base64 signatures are ASCII by construction.
    HeaderValue::from_str(s).expect("ids and signatures are valid header values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use qr3_broker::Trigger;
    use qr3_domain::{EventId, EventType, WebhookId, WorkspaceId};

    #[test]
    fn every_header_is_set_and_both_signatures_verify() {
        let job = DeliveryJob {
            webhook_id: WebhookId::generate(),
            workspace_id: WorkspaceId::generate(),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: EventType::QrScanned,
            event_created: Timestamp::now(),
            attempt: 2,
            trigger: Trigger::Event,
            body: br#"{"a":1}"#.to_vec(),
        };
        let id = DeliveryId::generate();
        let now = Timestamp::parse("2026-01-02T03:04:05.000Z").unwrap();
        let current = WebhookSecret::parse("the-second-secret-00").unwrap();
        let previous = WebhookSecret::parse("the-first-secret-000").unwrap();
        let headers = signed(&job, &id, now, &current, [&current, &previous]);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(get("x-qr3-event-id"), "evt_1");
        assert_eq!(get("webhook-id"), "evt_1");
        assert_eq!(get("x-qr3-event-type"), "qr.scanned");
        assert_eq!(get("x-qr3-delivery-id"), id.as_str());
        assert_eq!(get("x-qr3-delivery-attempt"), "2");
        let seconds = now.unix_seconds();
        assert_eq!(get("x-qr3-timestamp"), seconds.to_string());
        assert_eq!(get("webhook-timestamp"), seconds.to_string());
        assert!(signature::verify(
            &current,
            &job.body,
            &get("x-qr3-signature")
        ));
        assert!(!signature::verify(
            &previous,
            &job.body,
            &get("x-qr3-signature")
        ));
        let standard = get("webhook-signature");
        assert_eq!(standard.split(' ').count(), 2, "one per secret");
        for secret in [&current, &previous] {
            assert!(signature::standard_webhooks::verify(
                secret, "evt_1", seconds, &job.body, &standard
            ));
        }
        let logged = logged(&headers);
        assert_eq!(logged.len(), 11);
        assert_eq!(logged[0].0, "content-type");
        assert!(logged.iter().all(|(_, v)| !v.contains("secret")));
    }
}
