//! Request signatures: `X-QR3-Signature` (`sha256=` + lowercase hex HMAC-SHA256 of the
//! exact bytes sent, SPEC Part A) here, and the Standard Webhooks `webhook-signature` in
//! [`standard_webhooks`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::WebhookSecret;

type HmacSha256 = Hmac<Sha256>;

/// The header value for `body` signed with `secret`.
pub fn sign(secret: &WebhookSecret, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex_digest = [0u8; 64];
    hex::encode_to_slice(digest, &mut hex_digest).expect("64 hex digits for 32 bytes");
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    out.push_str(std::str::from_utf8(&hex_digest).expect("hex digits are ASCII"));
    out
}

/// Whether `header` is a valid signature of `body`; the comparison is constant-time.
pub fn verify(secret: &WebhookSecret, body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(received) = hex::decode(hex_digest) else {
        return false;
    };
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&received).is_ok()
}

pub mod standard_webhooks {
    //! The Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
    //! `webhook-signature`), which the public `standardwebhooks` libraries verify.
    //!
    //! A signature is `v1,` + standard base64 (with padding) of HMAC-SHA256 over
    //! `{id}.{timestamp}.{body}`, keyed with the secret's UTF-8 bytes: the same key as
    //! `X-QR3-Signature`, which the libraries receive as [`WebhookSecret::whsec`]. The
    //! header carries one signature per valid secret, separated by spaces, so a receiver
    //! holding any one of them verifies during a rotation.

    use base64::Engine;
    use hmac::Mac;

    use super::HmacSha256;
    use crate::WebhookSecret;

    /// One signature, `v1,<base64>`, of `body` sent as message `id` at `timestamp`
    /// (Unix seconds).
    pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(3 + 44);
        push_signature(&mut out, secret, id, timestamp, body);
        out
    }

    /// Appends `v1,<base64>` to `out`.
    fn push_signature(
        out: &mut String,
        secret: &WebhookSecret,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) {
        let digest = mac(secret, id, timestamp, body).finalize().into_bytes();
        out.push_str("v1,");
        base64::engine::general_purpose::STANDARD.encode_string(digest, out);
    }

    /// The `webhook-signature` value: one signature per secret, in the order given
    /// (newest first by convention), separated by single spaces.
    pub fn header<'a>(
        secrets: impl IntoIterator<Item = &'a WebhookSecret>,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> String {
        // One allocation for the usual single secret (two during a rotation).
        let mut out = String::with_capacity(3 + 44);
        for (i, secret) in secrets.into_iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            push_signature(&mut out, secret, id, timestamp, body);
        }
        out
    }

    /// Whether any `v1` signature in `header` is valid for `secret`; each comparison
    /// is constant-time. Unknown versions are skipped, as the specification asks.
    pub fn verify(
        secret: &WebhookSecret,
        id: &str,
        timestamp: i64,
        body: &[u8],
        header: &str,
    ) -> bool {
        header.split(' ').any(|entry| {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                return false;
            };
            let Ok(received) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                return false;
            };
            mac(secret, id, timestamp, body)
                .verify_slice(&received)
                .is_ok()
        })
    }

    /// `n` in decimal, written into `buf` (no allocation).
    fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
        let negative = n < 0;
        let mut rest = n.unsigned_abs();
        let mut at = buf.len();
        loop {
            at -= 1;
            buf[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if negative {
            at -= 1;
            buf[at] = b'-';
        }
        &buf[at..]
    }

    fn mac(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        let mut digits = [0u8; 20];
        mac.update(decimal(timestamp, &mut digits));
        mac.update(b".");
        mac.update(body);
        mac
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The body of the example in `docs/receiving.md`.
        const BODY: &str = concat!(
            r#"{"id":"evt_abc123xyz","type":"qr.scanned","created":"2026-03-15T10:00:00.000Z","#,
            r#""data":{"code_id":"qr_abc123","short_code":"r7f3Kx","scan_id":"scn_xyz","#,
            r#""country":"AT","device_type":"mobile","os":"iOS"}}"#
        );

        // Vectors computed independently with Python's standard library:
        //   "v1," + base64.b64encode(hmac.new(secret.encode(),
        //       f"{id}.{ts}.".encode() + body.encode(), hashlib.sha256).digest()).decode()
        #[test]
        fn matches_independent_vectors() {
            let old = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
            let new = WebhookSecret::parse("a-newer-secret-0123456789").unwrap();
            let body = BODY.as_bytes();
            assert_eq!(body.len(), 201);
            assert_eq!(
                sign(&old, "evt_abc123xyz", 1_773_568_800, body),
                "v1,Af4taen89he/u4Alx6lNpUeIy/cRGiJ2f0O2FXhd1kI="
            );
            assert_eq!(
                header([&new, &old], "evt_abc123xyz", 1_773_568_800, body),
                "v1,E9VrVVr5J+zT/xA9fFxUl3ca61c7ldbS8SQK+kQ9UrA= \
                 v1,Af4taen89he/u4Alx6lNpUeIy/cRGiJ2f0O2FXhd1kI="
            );
            let non_ascii = WebhookSecret::parse("äöü-non-ascii-secret").unwrap();
            assert_eq!(
                sign(
                    &non_ascii,
                    "evt_01kmnd4e2x7r4h1v3f5s8q0c9b",
                    1_700_000_000,
                    "{\"a\":\"é😀\"}".as_bytes()
                ),
                "v1,53+IUZbTzfypUDbvpRCxC2QyPB8rQef1ResuUv3XT3A="
            );
        }

        #[test]
        fn verify_finds_its_secret_among_several_and_rejects_tampering() {
            let old = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
            let new = WebhookSecret::parse("a-newer-secret-0123456789").unwrap();
            let other = WebhookSecret::parse("not-one-of-them-at-all").unwrap();
            let (id, ts, body) = ("evt_abc123xyz", 1_773_568_800, BODY.as_bytes());
            let both = header([&new, &old], id, ts, body);
            assert!(verify(&old, id, ts, body, &both));
            assert!(verify(&new, id, ts, body, &both));
            assert!(!verify(&other, id, ts, body, &both));
            assert!(
                !verify(&old, id, ts + 1, body, &both),
                "timestamp is signed"
            );
            assert!(!verify(&old, "evt_other", ts, body, &both), "id is signed");
            assert!(!verify(&old, id, ts, b"{}", &both), "body is signed");
            let only_new = header([&new], id, ts, body);
            assert!(!verify(&old, id, ts, body, &only_new));
            assert!(!verify(&old, id, ts, body, &both.replace("v1,", "v2,")));
            assert!(!verify(&old, id, ts, body, "v1,not base64!"));
            assert!(!verify(&old, id, ts, body, ""));
        }

        #[test]
        fn the_header_holds_one_v1_entry_per_secret() {
            let secrets: Vec<WebhookSecret> = (0..3)
                .map(|n| WebhookSecret::parse(format!("secret-number-{n}-abcdef")).unwrap())
                .collect();
            let header = header(&secrets, "evt_x", 1, b"{}");
            let entries: Vec<&str> = header.split(' ').collect();
            assert_eq!(entries.len(), 3);
            for (entry, secret) in entries.iter().zip(&secrets) {
                assert_eq!(*entry, sign(secret, "evt_x", 1, b"{}"));
                assert_eq!(entry.len(), 3 + 44, "v1, + 32 bytes in padded base64");
            }
        }

        #[test]
        fn timestamps_are_signed_in_decimal() {
            for n in [0, 7, 10, 1_767_322_800, -1, -45, i64::MAX, i64::MIN] {
                let mut buf = [0u8; 20];
                assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with OpenSSL:
    //   printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET"
    #[test]
    fn matches_openssl_vectors() {
        let secret = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
        assert_eq!(
            sign(&secret, br#"{"id":"evt_abc123xyz","type":"qr.scanned"}"#),
            "sha256=633c90985ad3d21974eaec5ebe4080e4c7c07997dcef8e4b5ae8158411e51b52"
        );
        let secret = WebhookSecret::parse("äöü-non-ascii-secret").unwrap();
        assert_eq!(
            sign(&secret, "{\"a\":\"é😀\"}".as_bytes()),
            "sha256=15f400dd3ff8b8ebfe1a585f2246be15ad990f4eb9d3fcc38702c1929b6e243d"
        );
    }

    #[test]
    fn verify_accepts_own_signature_and_rejects_tampering() {
        let secret = WebhookSecret::parse("0123456789abcdef").unwrap();
        let header = sign(&secret, b"hello");
        assert!(verify(&secret, b"hello", &header));
        assert!(!verify(&secret, b"hellO", &header));
        assert!(!verify(&secret, b"hello", "sha256=zz"));
        assert!(!verify(&secret, b"hello", &header[7..]));
    }
}
