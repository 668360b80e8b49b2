//! `Authorization: Bearer <admin token>` on `/admin/v1` → the operator ([`Operator`]).
//!
//! Admin tokens come from `api.admin_token` (several at once during a rotation). Only
//! their SHA-256 is kept in memory; a presented token is hashed and compared with every
//! configured one in constant time, so neither its length nor how much of it matches
//! shows in the timing. A workspace API key is never an admin token (the configuration
//! refuses tokens starting `qr3k_`), and [`crate::auth::Authenticated`] never accepts an
//! admin token, so neither credential works on the other API.
//!
//! Without an admin token configured the admin routes are not mounted at all, so every
//! `/admin/v1` path answers the router's JSON 404; this extractor answers the same 404
//! should it ever run unconfigured.
//!
//! [`Operator`] is the principal of every admin request: a later endpoint that acts for
//! any workspace on the operator's behalf (e.g. minting a portal session) takes it as
//! an extractor too.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use qr3_config::ApiSettings;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::{auth::bearer_token, error::ApiError, state::ApiState};

/// The configured admin tokens, as SHA-256 digests. Never printed.
#[derive(Clone)]
pub struct AdminTokens(Vec<[u8; 32]>);

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured, <redacted>)", self.0.len())
    }
}

impl AdminTokens {
    /// The tokens of `api.admin_token`; `None` when there are none (admin API off).
    pub fn from_settings(api: &ApiSettings) -> Option<Self> {
        let digests: Vec<[u8; 32]> = api
            .admin_token
            .expose()
            .iter()
            .map(|token| Sha256::digest(token.as_bytes()).into())
            .collect();
        (!digests.is_empty()).then_some(Self(digests))
    }

    /// Whether `presented` is one of the tokens. Every configured token is compared,
    /// whichever matches.
    fn accepts(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let matched = self.0.iter().fold(Choice::from(0), |any, token| {
            any | token.as_slice().ct_eq(presented.as_slice())
        });
        matched.into()
    }
}

/// A request made by the operator: it presented one of the admin tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operator;

const MISSING: &str = "missing admin token: send `Authorization: Bearer <admin token>`";
const MALFORMED: &str =
    "malformed Authorization header: expected `Authorization: Bearer <admin token>`";
const INVALID: &str = "invalid admin token";

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Some(tokens) = &state.config.admin_tokens else {
            return Err(ApiError::NotFound(format!(
                "no route for {} {}",
                parts.method,
                parts.uri.path()
            )));
        };
        let token = bearer_token(parts).map_err(|_| {
            if parts.headers.contains_key(header::AUTHORIZATION) {
                ApiError::Unauthorized(MALFORMED)
            } else {
                ApiError::Unauthorized(MISSING)
            }
        })?;
        if tokens.accepts(token) {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized(INVALID))
        }
    }
}

#[cfg(test)]
mod tests {
    use qr3_config::Redacted;

    use super::*;

    fn tokens(list: &[&str]) -> Option<AdminTokens> {
        let mut api = qr3_config::Settings::defaults().api;
        api.admin_token = Redacted::new(list.iter().map(|t| t.to_string()).collect());
        AdminTokens::from_settings(&api)
    }

    #[test]
    fn every_configured_token_is_accepted_and_nothing_else() {
        let (new, old) = ("n".repeat(32), "o".repeat(40));
        let tokens = tokens(&[&new, &old]).unwrap();
        assert!(tokens.accepts(&new));
        assert!(tokens.accepts(&old));
        for wrong in [
            "",
            "n",
            &"n".repeat(31),
            &"n".repeat(33),
            &format!("{new} "),
        ] {
            assert!(!tokens.accepts(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn no_tokens_means_no_admin_api_and_tokens_never_print() {
        assert!(tokens(&[]).is_none());
        let secret = "s3cr3t".repeat(8);
        let debug = format!("{:?}", tokens(&[&secret]).unwrap());
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }
}
