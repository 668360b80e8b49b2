//! `Authorization: Bearer <credential>` → the workspace it acts for, after one request
//! of the caller's rate limit is spent.
//!
//! Two credentials work on `/v1`:
//! - a workspace API key (`qr3k_…`), everywhere on `/v1` ([`Authenticated`]);
//! - a customer-portal session token (`qr3p_…`), only on the routes of the workspace's
//!   webhooks (their delivery logs, stats, secrets, pings and resends), through
//!   [`WebhookReader`] and [`WebhookWriter`]. A read-only session passes
//!   [`WebhookReader`] only: [`WebhookWriter`] answers it 403. A route that takes
//!   [`Authenticated`] (minting and revoking sessions) answers any session 403, so a
//!   session can never extend itself.
//!
//! API keys are rate limited per key, sessions per workspace: all the sessions of one
//! workspace share one bucket the size of one key's (`crate::ratelimit::Caller`).

use anyhow::Context;
use axum::{extract::FromRequestParts, http::header, http::request::Parts};
use qr3_domain::{ApiKeyId, WorkspaceId};
use qr3_store::{is_portal_token, PortalSession};

use crate::{error::ApiError, ratelimit::Caller, state::ApiState};

/// The workspace of the API key the request presented. Extracting it answers 401 when
/// the key is missing, malformed or unknown (or revoked), 403 for a portal session, and
/// 429 when the key has used up its rate limit (`crate::ratelimit`).
#[derive(Debug, Clone)]
pub(crate) struct Authenticated(pub WorkspaceId);

/// The workspace whose webhooks the request may read: an API key's, or a portal
/// session's (read-only or not).
#[derive(Debug, Clone)]
pub(crate) struct WebhookReader(pub WorkspaceId);

/// The workspace whose webhooks the request may change (and whose secrets it may
/// reveal): an API key's, or a read-write portal session's. A read-only session is
/// answered 403.
#[derive(Debug, Clone)]
pub(crate) struct WebhookWriter(pub WorkspaceId);

/// Who presented the request, once authenticated.
enum Principal {
    ApiKey(WorkspaceId),
    Session(PortalSession),
}

const SESSION_NOT_HERE: &str =
    "a portal session may only manage webhooks; this request needs an API key";
const READ_ONLY: &str =
    "this portal session is read-only: it can neither change anything nor reveal a secret";

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match authenticate(parts, state).await? {
            Principal::ApiKey(workspace) => Ok(Self(workspace)),
            Principal::Session(_) => Err(ApiError::Forbidden(SESSION_NOT_HERE)),
        }
    }
}

impl FromRequestParts<ApiState> for WebhookReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Ok(match authenticate(parts, state).await? {
            Principal::ApiKey(workspace) => Self(workspace),
            Principal::Session(session) => Self(session.workspace_id),
        })
    }
}

impl FromRequestParts<ApiState> for WebhookWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match authenticate(parts, state).await? {
            Principal::ApiKey(workspace) => Ok(Self(workspace)),
            Principal::Session(session) if session.read_only => Err(ApiError::Forbidden(READ_ONLY)),
            Principal::Session(session) => Ok(Self(session.workspace_id)),
        }
    }
}

/// Checks the bearer credential, then spends one request of its bucket.
async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Principal, ApiError> {
    let token = bearer_token(parts)?;
    if is_portal_token(token) {
        let session = state
            .store
            .authenticate_portal_session(token)
            .await
            .context("authenticating a portal session")?
            .ok_or(ApiError::Unauthorized(
                "invalid portal session: it has expired or been revoked",
            ))?;
        state
            .rate_limit
            .check(&Caller::PortalSessions(session.workspace_id.clone()))?;
        return Ok(Principal::Session(session));
    }
    let workspace = state
        .store
        .authenticate(token)
        .await
        .context("authenticating an API key")?
        .ok_or(ApiError::Unauthorized("invalid API key"))?;
    // Only now, once the secret is checked, is the key's bucket spent.
    state.rate_limit.check(&Caller::ApiKey(key_id(token)?))?;
    Ok(Principal::ApiKey(workspace))
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
