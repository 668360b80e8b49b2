//! The operator's API under `/admin/v1`: workspaces created under the platform's own
//! ids, their API keys, and offboarding. Every route takes the [`Operator`] extractor
//! first, so an admin token is checked before anything else about the request.
//!
//! Ids in these paths are validated for the caller, unlike `/v1`'s: the operator names
//! workspaces, so a malformed id answers 422 (`field` names it) and a well-formed
//! unknown one 404.
//!
//! [`Operator`]: crate::admin_auth::Operator

mod api_keys;
mod path;
mod workspaces;

use axum::Router;
use utoipa::OpenApi;

use crate::state::ApiState;

/// The routes of every `/admin/v1` resource. Mounted only when an admin token is
/// configured (`crate::router`).
pub(crate) fn admin_resources() -> Router<ApiState> {
    Router::new()
        .merge(workspaces::router())
        .merge(api_keys::router())
}

/// The OpenAPI paths of every `/admin/v1` resource (tag `admin`).
pub(crate) fn admin_docs() -> Vec<utoipa::openapi::OpenApi> {
    vec![workspaces::Doc::openapi(), api_keys::Doc::openapi()]
}
