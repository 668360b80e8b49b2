//! The `/v1` resources, one module (and one file) each: its routes, its handlers and
//! their OpenAPI descriptions.

pub(crate) mod admin;
pub(crate) mod deliveries;
mod jobs;
pub(crate) mod manual;
pub(crate) mod ping;
pub(crate) mod portal_sessions;
pub(crate) mod rotate;
pub(crate) mod secret;
pub(crate) mod stats;
pub(crate) mod webhooks;

use axum::Router;
use utoipa::OpenApi;

use crate::state::ApiState;

// Adding a resource (for instance `POST /v1/webhooks/{id}/ping` in `routes/ping.rs`):
// 1. write the module with `pub(crate) fn router() -> Router<ApiState>` and
//    `#[derive(OpenApi)] #[openapi(paths(...))] pub(crate) struct Doc;`;
// 2. merge its router in `v1_resources` and its `Doc` in `v1_docs`, below.
// `crate::router` then gives it the JSON 404/405, the body limit and the state, and
// `docs/openapi.json` is regenerated with `QR3_BLESS=1 cargo test -p qr3-api`.

/// The routes of every `/v1` resource.
pub(crate) fn v1_resources() -> Router<ApiState> {
    Router::new()
        .merge(webhooks::router())
        .merge(deliveries::router())
        .merge(ping::router())
        .merge(rotate::router())
        .merge(manual::router())
        .merge(stats::router())
        .merge(secret::router())
        .merge(portal_sessions::router())
}

/// The OpenAPI paths of every `/v1` resource, merged into the served document.
pub(crate) fn v1_docs() -> Vec<utoipa::openapi::OpenApi> {
    vec![
        webhooks::Doc::openapi(),
        deliveries::Doc::openapi(),
        ping::Doc::openapi(),
        rotate::Doc::openapi(),
        manual::Doc::openapi(),
        stats::Doc::openapi(),
        secret::Doc::openapi(),
        portal_sessions::Doc::openapi(),
    ]
}
