//! Webhook signing secrets: at least 16 characters, never printed, shown only as a hint.

use std::fmt;

use base64::Engine;
use rand::RngCore;

/// A webhook's signing secret. `Debug` and `Display` never show it, and equality is
/// decided in constant time.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for WebhookSecret {}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    #[error("secret must be at least {min} characters long")]
    TooShort { min: usize },
    #[error("secret must be at most {max} characters long")]
    TooLong { max: usize },
    #[error("secret must not contain control characters")]
    ControlCharacter,
}

impl WebhookSecret {
    pub const MIN_CHARS: usize = 16;
    pub const MAX_CHARS: usize = 256;

    /// Length is counted in characters (Unicode scalar values), as Part A states it.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidSecret> {
        let s = s.into();
        let chars = s.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(InvalidSecret::TooShort {
                min: Self::MIN_CHARS,
            });
        }
        if chars > Self::MAX_CHARS {
            return Err(InvalidSecret::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidSecret::ControlCharacter);
        }
        Ok(Self(s))
    }

    /// A strong secret for a webhook created without one: 32 bytes from the OS CSPRNG,
    /// base64url-encoded (43 characters).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// `secret_hint`: the first four characters followed by U+2026 `…`.
    pub fn hint(&self) -> String {
        let mut hint: String = self.0.chars().take(4).collect();
        hint.push('\u{2026}');
        hint
    }

    /// The secret itself, for signing and for the one response that reveals it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret in the form the Standard Webhooks libraries take: `whsec_` + standard
    /// base64 (with padding) of its UTF-8 bytes. They decode it back to the same key, so
    /// it verifies `webhook-signature` exactly as the plain secret verifies
    /// `X-QR3-Signature`.
    pub fn whsec(&self) -> String {
        let mut out = String::from("whsec_");
        base64::engine::general_purpose::STANDARD.encode_string(self.0.as_bytes(), &mut out);
        out
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_is_four_characters_and_an_ellipsis() {
        let s = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
        assert_eq!(s.hint(), "my-s\u{2026}");
        let s = WebhookSecret::parse("äöüß-and-more-chars").unwrap();
        assert_eq!(s.hint(), "äöüß\u{2026}", "counted in characters, not bytes");
    }

    #[test]
    fn length_is_counted_in_characters() {
        assert_eq!(
            WebhookSecret::parse("0123456789abcde"),
            Err(InvalidSecret::TooShort { min: 16 })
        );
        assert!(WebhookSecret::parse("0123456789abcdef").is_ok());
        // 8 two-byte characters are 16 bytes but only 8 characters.
        assert!(WebhookSecret::parse("éééééééé").is_err());
    }

    // Computed independently: "whsec_" + base64.b64encode(secret.encode()).decode()
    #[test]
    fn whsec_is_base64_of_the_utf8_bytes() {
        let s = WebhookSecret::parse("my-secret-key-min-16-chars").unwrap();
        assert_eq!(s.whsec(), "whsec_bXktc2VjcmV0LWtleS1taW4tMTYtY2hhcnM=");
        let s = WebhookSecret::parse("äöü-non-ascii-secret").unwrap();
        assert_eq!(s.whsec(), "whsec_w6TDtsO8LW5vbi1hc2NpaS1zZWNyZXQ=");
        let s = WebhookSecret::parse("a-newer-secret-0123456789").unwrap();
        assert_eq!(s.whsec(), "whsec_YS1uZXdlci1zZWNyZXQtMDEyMzQ1Njc4OQ==");
    }

    #[test]
    fn never_printed() {
        let s = WebhookSecret::parse("super-secret-value-1234").unwrap();
        assert!(!format!("{s:?}").contains("super"));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = WebhookSecret::generate();
        assert!(a.expose().len() >= 40);
        assert_ne!(a, WebhookSecret::generate());
    }
}
