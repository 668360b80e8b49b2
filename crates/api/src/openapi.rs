//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`s and the
//! wire types' `ToSchema`s, served at `GET /v1/openapi.json` without authentication.
//! `docs/openapi.json` is a checked-in copy; a test keeps the two equal.

use std::sync::OnceLock;

use axum::{
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use utoipa::{
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
    Modify, OpenApi,
};

use crate::{routes, state::ApiState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "qr3 webhooks API",
        version = "1.0.0",
        description = "Register webhooks for the events of a qr3 workspace and read their \
            delivery logs. Every `/v1` request except this document authenticates with \
            `Authorization: Bearer <api key>`. The operator API under `/admin/v1` \
            (tag `admin`: workspaces and their API keys) authenticates with \
            `Authorization: Bearer <admin token>` and answers 404 throughout where no \
            admin token is configured. Every error is \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`.",
    ),
    paths(openapi_json),
    modifiers(&BearerAuth),
    tags(
        (name = "webhooks", description = "Webhook endpoints of a workspace."),
        (name = "deliveries", description = "The delivery log: one entry per attempt."),
        (name = "meta", description = "This document."),
        (name = "admin", description = "The operator's API: workspaces under the platform's own ids, their API keys, and offboarding. Authenticates with an admin token (`api.admin_token`), never with an API key."),
    )
)]
struct ApiDoc;

/// Declares the security schemes the paths refer to: `bearer` (a workspace API key, on
/// `/v1`) and `admin_token` (on `/admin/v1`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "A workspace API key (`qr3k_…`), minted with \
             `POST /admin/v1/workspaces/{workspace_id}/api-keys` (or the CLI's \
             `workspace create` and `api-key create`); only for `/v1`."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description =
            Some("An operator token from `api.admin_token`; only for `/admin/v1`.".into());
        components.add_security_scheme("admin_token", SecurityScheme::Http(admin));
    }
}

/// The whole document: the base above plus every `/v1` resource's paths.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for resource in routes::v1_docs()
        .into_iter()
        .chain(routes::admin::admin_docs())
    {
        doc.merge(resource);
    }
    doc
}

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/v1/openapi.json", get(openapi_json))
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    operation_id = "get_openapi",
    responses((status = 200, description = "The OpenAPI 3 document.", content_type = "application/json", body = Object)),
)]
pub(crate) async fn openapi_json() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        openapi_document()
            .to_pretty_json()
            .expect("an OpenAPI document is plain data and always serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}
