//! Integration tests of qr3-telemetry: the ops endpoints, the server loop and the API
//! request middleware, driven through their public API.

mod ops;
mod serve;
mod shutdown;
mod track_http;

use axum::{body::Body, http::Request, response::Response, Router};
use tower::ServiceExt;

/// Sends one `GET` through `router` and returns the response with its body as text.
async fn get(router: Router, path: &str) -> (Response<()>, String) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = router.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    (Response::from_parts(parts, ()), text)
}
