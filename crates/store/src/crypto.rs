//! Webhook secrets at rest: AES-256-GCM with a random nonce per write and the webhook id
//! as associated data, so a ciphertext copied onto another row does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use qr3_config::EncryptionKey;
use qr3_domain::{WebhookId, WebhookSecret};
use rand::RngCore;

use crate::StoreError;

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct SecretCipher(Aes256Gcm);

impl SecretCipher {
    pub fn new(key: &EncryptionKey) -> Self {
        Self(Aes256Gcm::new(key.bytes().into()))
    }

    pub(crate) fn seal(&self, webhook: &WebhookId, secret: &WebhookSecret) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: webhook.as_str().as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub(crate) fn open(
        &self,
        webhook: &WebhookId,
        sealed: &[u8],
    ) -> Result<WebhookSecret, StoreError> {
        let corrupt = || {
            StoreError::Corrupt(format!(
                "secret of {webhook} does not decrypt with the configured key"
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = self
            .0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: webhook.as_str().as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        let text = String::from_utf8(plain).map_err(|_| corrupt())?;
        WebhookSecret::parse(text).map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> SecretCipher {
        let mut s = qr3_config::Settings::defaults();
        s.secrets.allow_insecure_dev_key = true;
        SecretCipher::new(&s.encryption_key().unwrap())
    }

    #[test]
    fn round_trips_and_binds_to_the_webhook() {
        let c = cipher();
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let secret = WebhookSecret::parse("a-very-secret-secret").unwrap();
        let sealed = c.seal(&a, &secret);
        assert!(
            !sealed.windows(8).any(|w| w == b"a-very-s"),
            "plaintext must not appear"
        );
        assert_eq!(c.open(&a, &sealed).unwrap(), secret);
        assert!(
            c.open(&b, &sealed).is_err(),
            "moved ciphertext must not decrypt"
        );
    }
}
