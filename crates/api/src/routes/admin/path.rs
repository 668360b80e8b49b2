//! The ids of `/admin/v1` paths. Unlike `/v1`, a malformed id is the caller's mistake
//! to be told about: 422 naming the path parameter. A well-formed id that names nothing
//! is the handler's 404.

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};
use qr3_domain::{ApiKeyId, WorkspaceId};

use crate::error::ApiError;

/// The `{workspace_id}` of `/admin/v1/workspaces/{workspace_id}…`.
#[derive(Debug)]
pub(crate) struct WorkspacePath(pub WorkspaceId);

impl<S: Send + Sync> FromRequestParts<S> for WorkspacePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid_workspace_id())?;
        WorkspaceId::parse(&raw)
            .map(WorkspacePath)
            .map_err(|e| ApiError::invalid_field("workspace_id", e))
    }
}

/// The `{workspace_id}` and `{key_id}` of
/// `/admin/v1/workspaces/{workspace_id}/api-keys/{key_id}`.
#[derive(Debug)]
pub(crate) struct ApiKeyPath(pub WorkspaceId, pub ApiKeyId);

impl<S: Send + Sync> FromRequestParts<S> for ApiKeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((workspace, key)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid_workspace_id())?;
        let workspace = WorkspaceId::parse(&workspace)
            .map_err(|e| ApiError::invalid_field("workspace_id", e))?;
        let key = ApiKeyId::parse(&key).map_err(|e| ApiError::invalid_field("key_id", e))?;
        Ok(ApiKeyPath(workspace, key))
    }
}

/// A path segment that is not even UTF-8 once percent-decoded.
fn invalid_workspace_id() -> ApiError {
    ApiError::invalid_field("workspace_id", "the path's ids are not valid UTF-8")
}
