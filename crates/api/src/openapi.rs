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
    openapi::{
        content::Content,
        header::Header,
        path::Operation,
        schema::{ObjectBuilder, Ref, Type},
        security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme},
        RefOr, Response as DocResponse,
    },
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
            `Authorization: Bearer <api key>`; the routes under `/v1/webhooks` also take a \
            customer-portal session token (tag `portal`). The operator API under `/admin/v1` \
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
        (name = "portal", description = "Customer-portal sessions: a link that opens the portal page (`/portal/`) for one workspace's webhooks."),
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
             `workspace create` and `api-key create`); only for `/v1`. On the routes \
             under `/v1/webhooks` a customer-portal session token (`qr3p_…`, from \
             `POST /v1/portal-sessions`) works too: a read-only one only on those that \
             change nothing and reveal no secret (403 otherwise)."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description =
            Some("An operator token from `api.admin_token`; only for `/admin/v1`.".into());
        components.add_security_scheme("admin_token", SecurityScheme::Http(admin));
    }
}

/// The whole document: the base above plus every `/v1` resource's paths, with the
/// answers the layers in front of every handler can give (see [`LimitResponses`]).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for resource in routes::v1_docs()
        .into_iter()
        .chain(routes::admin::admin_docs())
    {
        doc.merge(resource);
    }
    LimitResponses.modify(&mut doc);
    OptionalBodies.modify(&mut doc);
    doc
}

/// Marks the request bodies that may be left out as not required (the derive marks
/// every body of a non-`Option` type required, and an `Option` would also admit `null`,
/// which these routes refuse).
struct OptionalBodies;

/// The operations whose body is optional (`extract::OptionalJsonBody`).
const OPTIONAL_BODIES: &[&str] = &["retry_delivery", "create_portal_session"];

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let Some(operation) = item.post.as_mut() else {
                continue;
            };
            let optional = operation
                .operation_id
                .as_deref()
                .is_some_and(|id| OPTIONAL_BODIES.contains(&id));
            if let (true, Some(body)) = (optional, operation.request_body.as_mut()) {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
    }
}

/// Adds to every operation the 408 of the request timeout, to every operation
/// authenticated with an API key the 429 of the key's rate limit with its
/// `Retry-After` header, and to every change under `/v1/webhooks` the 403 of a
/// read-only portal session. Done once here rather than in each `#[utoipa::path]`, so a new
/// route cannot forget them. A 429 a route already declares (its own limit) is kept
/// and its description extended.
struct LimitResponses;

const RATE_LIMITED: &str = "Too many requests with this API key \
    (`api.rate_limit_per_second`, `api.rate_limit_burst`); retry after `Retry-After` seconds.";
/// [`RATE_LIMITED`], following a route's own 429.
const ALSO_RATE_LIMITED: &str = "Or too many requests with this API key \
    (`api.rate_limit_per_second`, `api.rate_limit_burst`).";

impl Modify for LimitResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/v1/webhooks") {
                let changes = [
                    &mut item.put,
                    &mut item.post,
                    &mut item.delete,
                    &mut item.patch,
                ];
                for operation in changes.into_iter().flatten() {
                    add_read_only_refused(operation);
                }
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_timeout(operation);
                if operation
                    .security
                    .as_ref()
                    .is_some_and(|security| security.contains(&bearer))
                {
                    add_rate_limited(operation);
                }
            }
        }
    }
}

fn error_response(description: &str) -> DocResponse {
    let mut response = DocResponse::new(description);
    response.content.insert(
        "application/json".into(),
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    );
    response
}

fn add_timeout(operation: &mut Operation) {
    operation
        .responses
        .responses
        .entry("408".into())
        .or_insert_with(|| {
            RefOr::T(error_response(
                "The request did not complete within `api.request_timeout_ms` \
                 (a body sent too slowly, or a dependency too slow); retry.",
            ))
        });
}

fn add_read_only_refused(operation: &mut Operation) {
    operation
        .responses
        .responses
        .entry("403".into())
        .or_insert_with(|| {
            RefOr::T(error_response(
                "A read-only portal session: it changes nothing.",
            ))
        });
}

fn add_rate_limited(operation: &mut Operation) {
    let response = operation
        .responses
        .responses
        .entry("429".into())
        .or_insert_with(|| RefOr::T(error_response(RATE_LIMITED)));
    if let RefOr::T(response) = response {
        if response.description != RATE_LIMITED {
            response.description = format!("{} {ALSO_RATE_LIMITED}", response.description);
        }
        let mut retry_after = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        retry_after.description = Some("Whole seconds to wait before retrying.".into());
        response.headers.insert("Retry-After".into(), retry_after);
    }
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
