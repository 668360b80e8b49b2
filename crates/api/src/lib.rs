//! The public HTTP API of qr3 webhooks (SPEC Part C "Public API"): webhook registration
//! and delivery logs under `/v1`, authenticated by workspace API keys, and the
//! operator's `/admin/v1` (workspaces and their API keys), authenticated by admin
//! tokens; both described by an OpenAPI 3 document served at `GET /v1/openapi.json`.
//! It also serves the customer portal page at `/portal/` (`portal`).
//!
//! Invariants:
//! - every response this router produces, errors included, is JSON; an error is
//!   `{"error": {"code", "message"}}` and is mapped to HTTP in one place
//!   (`ApiError`'s `IntoResponse`);
//! - every `/v1` read or write goes through the authenticated workspace, so another
//!   workspace's ids answer 404 exactly like unknown ids;
//! - a workspace API key works only on `/v1`, an admin token only on `/admin/v1`, a
//!   portal session token only on `/v1`'s routes of its workspace's webhooks (`auth`);
//! - wire types (module `wire`) are separate from store and domain types;
//! - an authenticated request spends one request of its caller's rate-limit bucket
//!   (`ratelimit`), and only after authenticating; nothing else is rate limited here;
//! - [`serve`] closes a connection that has not sent a request's headers within
//!   `api.header_read_timeout_ms` and holds at most `api.max_connections`.

#![forbid(unsafe_code)]

mod admin_auth;
mod auth;
mod error;
mod extract;
mod openapi;
mod pagination;
mod portal;
mod ratelimit;
mod routes;
mod server;
mod state;
mod timeout;
mod wire;

use axum::{extract::DefaultBodyLimit, middleware, Router};

pub use admin_auth::AdminTokens;
pub use openapi::openapi_document;
pub use server::{serve, ServeLimits};
pub use state::{ApiConfig, ApiState, JobChannel};

/// The `/v1` API with its state applied: every resource of `routes::v1_resources`, `GET
/// /v1/openapi.json`, a JSON 404 for unknown routes, a JSON 405 for a wrong method,
/// the body-size limit of `api.max_body_bytes` and the whole-request timeout of
/// `api.request_timeout_ms` (408). The per-key rate limit is spent by the
/// `Authenticated` extractor, so only authenticated requests count. The operator's
/// `/admin/v1` (`routes::admin`) is mounted only when `api.admin_token` is set;
/// otherwise all of it is the JSON 404 of an unknown route.
///
/// The result has no state left, so the ops endpoints (`/healthz`, `/readyz`,
/// `/metrics`) and middleware (HTTP metrics) can be added by the binary with
/// `router(state).merge(ops).layer(…)`. New `/v1` resources belong in
/// `routes::v1_resources`, so they get the JSON 404/405, the body limit and the request
/// timeout too.
pub fn router(state: ApiState) -> Router {
    let max_body_bytes = state.config.max_body_bytes;
    let request_timeout = state.config.request_timeout;
    let mut routes = routes::v1_resources();
    if state.config.admin_tokens.is_some() {
        routes = routes.merge(routes::admin::admin_resources());
    }
    routes
        .merge(openapi::router())
        .merge(portal::router())
        // Applies to the routes above only: must come after every `merge`.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::route_not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            timeout::request_timeout,
        ))
        .with_state(state)
}

/// A JSON 503 (`service_unavailable`) with `message`, for a `/v1` request the process
/// cannot serve yet (it is still waiting for its dependencies at start-up).
pub fn unavailable(message: &'static str) -> axum::response::Response {
    axum::response::IntoResponse::into_response(error::ApiError::Unavailable(message))
}
