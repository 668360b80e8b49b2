//! The whole-request timeout of the `/v1` routes (`api.request_timeout_ms`): from the
//! moment the headers are read to the response, body upload included. A request past
//! it is dropped where it stands and answered 408 with the JSON error body.
//!
//! Dropping a handler mid-way is safe here: a database transaction not yet committed
//! rolls back, and a delivery job published but not yet confirmed is at worst sent
//! once more if the client retries (delivery is at-least-once anyway).

use std::time::Duration;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// Axum middleware: `next` within `limit`, else 408. Installed by [`crate::router`].
pub(crate) async fn request_timeout(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            tracing::info!(timeout_ms = limit.as_millis() as u64, "request timed out");
            ApiError::RequestTimeout {
                limit_ms: limit.as_millis(),
            }
            .into_response()
        }
    }
}
