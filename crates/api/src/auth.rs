//! `Authorization: Bearer <api key>` → the workspace the key belongs to, after one
//! request of the key's rate limit is spent.

use anyhow::Context;
use axum::{extract::FromRequestParts, http::header, http::request::Parts};
use qr3_domain::{ApiKeyId, WorkspaceId};

use crate::{error::ApiError, ratelimit::Caller, state::ApiState};

/// The workspace of the API key the request presented. Extracting it answers 401 when
/// the key is missing, malformed or unknown (or revoked), and 429 when the key has
/// used up its rate limit (`crate::ratelimit`).
#[derive(Debug, Clone)]
pub(crate) struct Authenticated(pub WorkspaceId);

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
        let workspace = state
            .store
            .authenticate(token)
            .await
            .context("authenticating an API key")?
            .ok_or(ApiError::Unauthorized("invalid API key"))?;
        // Only now, once the secret is checked, is the key's bucket spent.
        state.rate_limit.check(&Caller::ApiKey(key_id(token)?))?;
        Ok(Self(workspace))
    }
}

/// The public id of a key the store has just accepted: `qr3k_<ulid>_<secret>` is key
/// `key_<ulid>` (the format `qr3_store` mints and parses).
fn key_id(token: &str) -> anyhow::Result<ApiKeyId> {
    let ulid = token
        .strip_prefix("qr3k_")
        .and_then(|rest| rest.get(..26))
        .context("an accepted API key does not read qr3k_<ulid>_…")?;
    Ok(ApiKeyId::parse(&format!("{}{ulid}", ApiKeyId::PREFIX))?)
}

const MISSING: &str = "missing API key: send `Authorization: Bearer <api key>`";
const MALFORMED: &str =
    "malformed Authorization header: expected `Authorization: Bearer <api key>`";

/// The token of the one `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(ApiError::Unauthorized(MISSING)),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(ApiError::Unauthorized(MALFORMED)),
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty() && !token.contains(' '))
        .ok_or(ApiError::Unauthorized(MALFORMED))
}
