//! The error body every failed request answers with.

use serde::Serialize;
use utoipa::ToSchema;

/// `{"error": {...}}`: the body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_field", "field": "events",
    "message": "unknown event type `qr.exploded`"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people: what went wrong and, where it helps, how to fix it.
    pub message: String,
    /// With `invalid_field`: the request field (body field or query parameter) at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub field: Option<String>,
}

/// Machine-readable error codes; the HTTP status follows from the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, not a JSON object, or not sent as `application/json`.
    MalformedRequest,
    /// 401: the API key (on `/admin/v1`, the admin token) is missing, malformed or not
    /// valid.
    Unauthorized,
    /// 403: the credential is valid but may not do this (a read-only portal session
    /// asking to change something or to reveal a secret).
    Forbidden,
    /// 404: no such route, or no such webhook in this workspace (on `/admin/v1`, no
    /// such workspace or API key).
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 422: one field is invalid; `field` names it.
    InvalidField,
    /// 409: the request conflicts with the resource's state (e.g. retrying a delivery
    /// whose event the webhook already received).
    Conflict,
    /// 422: the request as a whole is invalid (e.g. a PATCH that changes nothing).
    InvalidRequest,
    /// 408: the request did not complete within the API's request timeout (a body
    /// sent too slowly, or a dependency too slow to answer); retry.
    RequestTimeout,
    /// 429: too many requests of this kind for now; `Retry-After` says when to retry.
    RateLimited,
    /// 503: a dependency (the message broker) is unreachable; retry later.
    ServiceUnavailable,
    /// 500: something failed on our side; the body says nothing more.
    InternalError,
}
