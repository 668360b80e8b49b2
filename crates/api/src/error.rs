//! Every way an API request can fail, and the one place that maps them to HTTP.

use axum::{
    http::{header, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json,
};

use crate::ratelimit::Limit;
use crate::wire::error::{ErrorBody, ErrorCode, ErrorDetail};

/// Why a request failed. Converted to `{"error": {"code", "message"}}` with the right
/// status by `IntoResponse`, the only place that knows the HTTP mapping.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: not JSON, not an object, or not `application/json`.
    #[error("{0}")]
    Malformed(String),
    /// 401, with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: authenticated, but this credential may not make this request (a read-only
    /// portal session).
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404: unknown route, or a webhook that is not in the caller's workspace (whether
    /// it exists elsewhere, never existed or is not even a well-formed id); on
    /// `/admin/v1`, a workspace or API key that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("{method} is not allowed on this route")]
    MethodNotAllowed { method: Method },
    /// 413.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 422 naming one field.
    #[error("{message}")]
    InvalidField { field: String, message: String },
    /// 422 about the request as a whole.
    #[error("{0}")]
    InvalidRequest(String),
    /// 409: the resource's state forbids the request.
    #[error("{0}")]
    Conflict(String),
    /// 408: the request did not complete within `api.request_timeout_ms`.
    #[error("the request took longer than {limit_ms} ms")]
    RequestTimeout { limit_ms: u128 },
    /// 429, with `Retry-After` in whole seconds; `limit` names the limit for the
    /// `qr3_http_rate_limited_total` metric.
    #[error("{message}")]
    RateLimited {
        limit: Limit,
        message: &'static str,
        retry_after_secs: u64,
    },
    /// 503: a dependency (the broker) is unreachable; try again later.
    #[error("{0}")]
    Unavailable(&'static str),
    /// 500: the cause goes to the log, never to the client.
    #[error("unexpected error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub(crate) fn invalid_field(field: impl Into<String>, message: impl ToString) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn webhook_not_found() -> Self {
        Self::NotFound("webhook not found".into())
    }

    pub(crate) fn delivery_not_found() -> Self {
        Self::NotFound("delivery not found".into())
    }

    pub(crate) fn workspace_not_found() -> Self {
        Self::NotFound("workspace not found".into())
    }

    fn code(&self) -> ErrorCode {
        match self {
            ApiError::Malformed(_) => ErrorCode::MalformedRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::InvalidField { .. } => ErrorCode::InvalidField,
            ApiError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::RequestTimeout { .. } => ErrorCode::RequestTimeout,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable(_) => ErrorCode::ServiceUnavailable,
            ApiError::Unexpected(_) => ErrorCode::InternalError,
        }
    }

    fn status(&self) -> StatusCode {
        match self.code() {
            ErrorCode::MalformedRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidField | ErrorCode::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unexpected(cause) = &self {
            // `{:#}` prints the whole context chain on one line.
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let status = self.status();
        let field = match &self {
            ApiError::InvalidField { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
            },
        };
        let rate_limited = match &self {
            ApiError::RateLimited {
                limit,
                retry_after_secs,
                ..
            } => Some((*limit, *retry_after_secs)),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some((limit, seconds)) = rate_limited {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
                .extensions_mut()
                .insert(qr3_telemetry::RateLimitedBy(limit.label()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The router's fallback: a JSON 404 for any path that is not a route.
pub(crate) async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// A JSON 405 for a known path with the wrong method (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed { method }
}
