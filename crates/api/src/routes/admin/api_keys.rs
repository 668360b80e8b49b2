//! `/admin/v1/workspaces/{workspace_id}/api-keys`: mint a workspace's API keys, list
//! them (never their secrets), revoke one. A workspace holds any number of keys, so a
//! rotation mints the new key, moves the clients over, then revokes the old one.

use anyhow::Context;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get},
    Json, Router,
};
use qr3_domain::ApiKeyId;
use utoipa::OpenApi;

use super::path::{ApiKeyPath, WorkspacePath};
use crate::{
    admin_auth::Operator,
    error::ApiError,
    extract::Query,
    pagination::PageRequest,
    state::ApiState,
    wire::{
        api_key::{ApiKey, ApiKeyPage, ApiKeyParams, CreatedApiKey},
        error::ErrorBody,
        page::{Page, PageQuery},
        workspace::WorkspaceIdParam,
    },
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/admin/v1/workspaces/{workspace_id}/api-keys",
            get(list).post(create),
        )
        .route(
            "/admin/v1/workspaces/{workspace_id}/api-keys/{key_id}",
            delete(revoke),
        )
}

#[derive(OpenApi)]
#[openapi(paths(create, list, revoke))]
pub(crate) struct Doc;

/// Mint an API key for a workspace.
///
/// The response is the only one that shows the key (`api_key`); only a hash of it is
/// stored. The workspace's other keys keep working. No request body.
#[utoipa::path(
    post,
    path = "/admin/v1/workspaces/{workspace_id}/api-keys",
    tag = "admin",
    operation_id = "create_api_key",
    params(WorkspaceIdParam),
    responses(
        (status = 201, description = "The new key, shown this once.", body = CreatedApiKey,
            headers(("Cache-Control" = String, description = "`no-store`: the body holds the key."))),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "No such workspace, or the admin API is off.", body = ErrorBody),
        (status = 422, description = "Malformed `workspace_id`.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    _: Operator,
    WorkspacePath(workspace): WorkspacePath,
) -> Result<Response, ApiError> {
    let key = state
        .store
        .create_api_key(&workspace)
        .await
        .context("minting an API key")?
        .ok_or_else(ApiError::workspace_not_found)?;
    tracing::info!(%workspace, key = %key.id, "API key minted");
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(CreatedApiKey::from(key)),
    )
        .into_response())
}

/// List a workspace's API keys, newest first, revoked ones included.
#[utoipa::path(
    get,
    path = "/admin/v1/workspaces/{workspace_id}/api-keys",
    tag = "admin",
    operation_id = "list_api_keys",
    params(WorkspaceIdParam, PageQuery),
    responses(
        (status = 200, description = "A page of keys, without their secrets.", body = ApiKeyPage),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "No such workspace, or the admin API is off.", body = ErrorBody),
        (status = 422, description = "Malformed `workspace_id`, invalid `limit` or `cursor`, or an unknown parameter.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    _: Operator,
    WorkspacePath(workspace): WorkspacePath,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let request = PageRequest::<ApiKeyId>::parse(query.limit.as_deref(), query.cursor.as_deref())?;
    let (after, limit) = request.store_args();
    let rows = state
        .store
        .list_api_keys(&workspace, after, limit)
        .await
        .context("listing API keys")?
        .ok_or_else(ApiError::workspace_not_found)?;
    Ok(Json(request.page(rows, |k| &k.id, ApiKey::from)))
}

/// Revoke an API key.
///
/// Every request with it answers 401 from now on, on every API replica (keys are
/// checked against the database on each request). Revoking a revoked key answers 204
/// again and keeps its first `revoked_at`.
#[utoipa::path(
    delete,
    path = "/admin/v1/workspaces/{workspace_id}/api-keys/{key_id}",
    tag = "admin",
    operation_id = "revoke_api_key",
    params(ApiKeyParams),
    responses(
        (status = 204, description = "Revoked; empty body."),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "No such key in this workspace (or no such workspace), or the admin API is off.", body = ErrorBody),
        (status = 422, description = "Malformed `workspace_id` or `key_id`.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn revoke(
    State(state): State<ApiState>,
    _: Operator,
    ApiKeyPath(workspace, key): ApiKeyPath,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .revoke_api_key(&workspace, &key)
        .await
        .context("revoking an API key")?
        .ok_or_else(|| ApiError::NotFound("API key not found".into()))?;
    tracing::info!(%workspace, %key, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
