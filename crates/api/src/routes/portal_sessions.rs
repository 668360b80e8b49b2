//! `/v1/portal-sessions`: mint a customer-portal session with an API key, revoke one.
//!
//! A session's token goes only into the fragment of the portal URL returned (`#qr3p_…`),
//! which browsers never send to a server, so it appears in no access log. The token
//! acts for the workspace on its webhook routes only (`crate::auth`); it cannot mint or
//! revoke sessions, so a session cannot outlive its `expires_at`.

use std::time::Duration;

use anyhow::Context;
use axum::{
    extract::{Path, State},
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, post},
    Json, Router,
};
use qr3_config::PortalSettings;
use qr3_domain::PortalSessionId;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::{
    auth::Authenticated, error::ApiError, extract::OptionalJsonBody, state::ApiState,
    wire::error::ErrorBody,
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/portal-sessions", post(create))
        .route("/v1/portal-sessions/{session_id}", delete(revoke))
}

#[derive(OpenApi)]
#[openapi(
    paths(create, revoke),
    components(schemas(CreatePortalSession, PortalSessionCreated))
)]
pub(crate) struct Doc;

/// How long a session lasts when `expires_in` is left out.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// `POST /v1/portal-sessions`: every field is optional, and so is the body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"expires_in": 3600, "read_only": false}))]
pub struct CreatePortalSession {
    /// Seconds the session lasts: 1 to 86400 (a day); 3600 when left out.
    #[schema(minimum = 1, maximum = 86400, default = 3600)]
    pub expires_in: Option<u64>,
    /// `true`: the portal shows the webhooks, their deliveries and stats, and changes
    /// nothing (the API refuses such a session anything else with 403).
    #[serde(default)]
    pub read_only: bool,
}

/// A new portal session.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "ps_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "url": "https://webhooks.qr3.app/portal/#qr3p_rw_Yk3cT0x2L6g1nQ9rV8w4sZ5aB7dE0fH2jK4mN6pR8tU",
    "expires_at": "2026-03-15T11:00:00.000Z", "read_only": false}))]
pub struct PortalSessionCreated {
    /// `ps_` followed by 26 characters: revoke the session with it.
    pub id: String,
    /// The portal, with the session's token in the fragment: open it in a browser or an
    /// iframe. The only place the token is shown; treat the URL as a secret.
    pub url: String,
    #[schema(format = DateTime, example = "2026-03-15T11:00:00.000Z")]
    pub expires_at: String,
    pub read_only: bool,
}

/// Open a customer-portal session for the workspace.
///
/// The answer's `url` opens the portal page (`/portal/`) signed in as this session: the
/// workspace's webhooks, their delivery logs and stats, and (unless `read_only`) every
/// change the API allows on them. The token is in the URL's fragment only, which
/// browsers do not send to servers. The session works on the workspace's webhook routes
/// only (not on `/v1/portal-sessions`, nor `/admin/v1`), is rate limited together with
/// the workspace's other sessions at one API key's rate, ends at `expires_at`, and can
/// be revoked before with `DELETE /v1/portal-sessions/{session_id}`.
#[utoipa::path(
    post,
    path = "/v1/portal-sessions",
    tag = "portal",
    operation_id = "create_portal_session",
    request_body(content = CreatePortalSession, description = "Optional.", content_type = "application/json"),
    responses(
        (status = 201, description = "The session and the portal URL carrying its token.", body = PortalSessionCreated,
            headers(("Cache-Control" = String, description = "`no-store`: the body holds the token."))),
        (status = 400, description = "A body that is not JSON, not an object, or not `application/json`.", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 403, description = "A portal session cannot open sessions; use an API key.", body = ErrorBody),
        (status = 422, description = "`expires_in` outside 1 to 86400, `read_only` not a boolean, or an unknown field.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    Authenticated(workspace): Authenticated,
    parts: RequestHost,
    OptionalJsonBody(body): OptionalJsonBody<CreatePortalSession>,
) -> Result<Response, ApiError> {
    let lifetime = match body.expires_in {
        None => DEFAULT_LIFETIME,
        Some(secs) if (1..=PortalSettings::MAX_SESSION.as_secs()).contains(&secs) => {
            Duration::from_secs(secs)
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "expires_in",
                "expires_in must be 1 to 86400 seconds (a day at most)",
            ))
        }
    };
    let created = state
        .store
        .create_portal_session(&workspace, body.read_only, lifetime)
        .await
        .context("creating a portal session")?
        // The key authenticated a moment ago: the workspace is being erased.
        .ok_or(ApiError::Unauthorized("invalid API key"))?;
    let base = match &state.config.portal_url {
        Some(url) => url.clone(),
        None => parts.portal_url()?,
    };
    tracing::info!(%workspace, session = %created.session.id, read_only = body.read_only,
        expires_at = %created.session.expires_at, "portal session created");
    let body = PortalSessionCreated {
        id: created.session.id.to_string(),
        url: format!("{base}#{}", created.token()),
        expires_at: created.session.expires_at.to_string(),
        read_only: created.session.read_only,
    };
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response())
}

/// Revoke a portal session.
///
/// Every request with its token answers 401 from now on, on every API replica (sessions
/// are checked against the database on each request); a portal open with it stops
/// working at its next request. Revoking a revoked or expired session answers 204
/// again.
#[utoipa::path(
    delete,
    path = "/v1/portal-sessions/{session_id}",
    tag = "portal",
    operation_id = "revoke_portal_session",
    params(("session_id" = String, Path, description = "The session's id (`ps_…`).")),
    responses(
        (status = 204, description = "Revoked; empty body."),
        (status = 401, description = "Missing, malformed or invalid API key.", body = ErrorBody),
        (status = 403, description = "A portal session cannot revoke sessions; use an API key.", body = ErrorBody),
        (status = 404, description = "No such session in this workspace.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(
    State(state): State<ApiState>,
    Authenticated(workspace): Authenticated,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound("portal session not found".into());
    let id = PortalSessionId::parse(&session_id).map_err(|_| not_found())?;
    state
        .store
        .revoke_portal_session(&workspace, &id)
        .await
        .context("revoking a portal session")?
        .ok_or_else(not_found)?;
    tracing::info!(%workspace, session = %id, "portal session revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The `Host` a request was sent to, for a portal URL when `portal.public_url` is not
/// configured.
pub(crate) struct RequestHost(Option<String>);

impl RequestHost {
    fn portal_url(&self) -> Result<String, ApiError> {
        let host = self.0.as_deref().ok_or_else(|| {
            ApiError::InvalidRequest(
                "no Host header to build the portal URL from (set portal.public_url)".into(),
            )
        })?;
        Ok(format!("http://{host}/portal/"))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestHost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Only a plain host[:port] is echoed back into the URL.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .map(str::to_owned);
        Ok(Self(host))
    }
}
