//! `/admin/v1/workspaces` and `/admin/v1/workspaces/{workspace_id}`: create a workspace
//! under the platform's own id or rename it (PUT), read one, page through all, and
//! offboard one (DELETE erases it with everything it owns).

use anyhow::Context;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use qr3_domain::WorkspaceName;
use qr3_store::Upserted;
use utoipa::OpenApi;

use super::path::WorkspacePath;
use crate::{
    admin_auth::Operator,
    error::ApiError,
    extract::{JsonBody, Query},
    pagination::{PageRequest, WorkspaceCursor},
    state::ApiState,
    wire::{
        error::ErrorBody,
        page::{Page, PageQuery},
        workspace::{PutWorkspace, Workspace, WorkspaceIdParam, WorkspacePage},
    },
};

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/admin/v1/workspaces", get(list))
        .route(
            "/admin/v1/workspaces/{workspace_id}",
            get(read).put(put).delete(delete),
        )
}

#[derive(OpenApi)]
#[openapi(paths(put, read, list, delete))]
pub(crate) struct Doc;

/// Create a workspace under the platform's id, or rename it.
///
/// Idempotent: the first call creates the workspace (201), later ones set its name (200).
/// Creating a workspace mints no API key; `POST …/api-keys` does. Events the platform
/// publishes with this id as `workspace_id` reach the workspace's webhooks from now on.
#[utoipa::path(
    put,
    path = "/admin/v1/workspaces/{workspace_id}",
    tag = "admin",
    operation_id = "put_workspace",
    params(WorkspaceIdParam),
    request_body = PutWorkspace,
    responses(
        (status = 201, description = "Created.", body = Workspace,
            headers(("Location" = String, description = "`/admin/v1/workspaces/{workspace_id}`"))),
        (status = 200, description = "It existed; its name is now the one given.", body = Workspace),
        (status = 400, description = "Not JSON, not an object, or not `application/json`.", body = ErrorBody),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "The admin API is off: no admin token is configured.", body = ErrorBody),
        (status = 409, description = "A workspace with this id is being deleted: repeat the DELETE first.", body = ErrorBody),
        (status = 413, description = "Body larger than the configured limit.", body = ErrorBody),
        (status = 422, description = "Malformed `workspace_id` or invalid `name`; `field` names it.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn put(
    State(state): State<ApiState>,
    _: Operator,
    WorkspacePath(id): WorkspacePath,
    JsonBody(body): JsonBody<PutWorkspace>,
) -> Result<Response, ApiError> {
    let name = WorkspaceName::parse(body.name).map_err(|e| ApiError::invalid_field("name", e))?;
    let upserted = state
        .store
        .upsert_workspace(&id, &name)
        .await
        .context("creating or renaming a workspace")?;
    Ok(match upserted {
        Upserted::Created(workspace) => {
            tracing::info!(workspace = %id, "workspace created");
            let location = format!("/admin/v1/workspaces/{id}");
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(Workspace::from(workspace)),
            )
                .into_response()
        }
        Upserted::Updated(workspace) => {
            tracing::info!(workspace = %id, "workspace renamed");
            Json(Workspace::from(workspace)).into_response()
        }
        Upserted::BeingErased => {
            return Err(ApiError::Conflict(format!(
                "workspace {id} is being deleted: repeat DELETE /admin/v1/workspaces/{id} \
                 to finish, then create it again"
            )))
        }
    })
}

/// Read one workspace.
#[utoipa::path(
    get,
    path = "/admin/v1/workspaces/{workspace_id}",
    tag = "admin",
    operation_id = "get_workspace",
    params(WorkspaceIdParam),
    responses(
        (status = 200, description = "The workspace.", body = Workspace),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "No such workspace (or it is being deleted), or the admin API is off.", body = ErrorBody),
        (status = 422, description = "Malformed `workspace_id`.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn read(
    State(state): State<ApiState>,
    _: Operator,
    WorkspacePath(id): WorkspacePath,
) -> Result<Json<Workspace>, ApiError> {
    let workspace = state
        .store
        .get_workspace(&id)
        .await
        .context("reading a workspace")?
        .ok_or_else(ApiError::workspace_not_found)?;
    Ok(Json(workspace.into()))
}

/// List workspaces, newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/workspaces",
    tag = "admin",
    operation_id = "list_workspaces",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of workspaces.", body = WorkspacePage),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "The admin API is off: no admin token is configured.", body = ErrorBody),
        (status = 422, description = "Invalid `limit` or `cursor`, or an unknown parameter.", body = ErrorBody),
        (status = 500, description = "Unexpected error.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    _: Operator,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<Workspace>>, ApiError> {
    let request =
        PageRequest::<WorkspaceCursor>::parse(query.limit.as_deref(), query.cursor.as_deref())?;
    let after = request.after.as_ref().map(|c| (c.created_at, &c.id));
    let rows = state
        .store
        .list_workspaces(after, i64::from(request.limit))
        .await
        .context("listing workspaces")?;
    let rows = rows
        .into_iter()
        .map(|w| (WorkspaceCursor::of(&w), w))
        .collect();
    Ok(Json(request.page(
        rows,
        |(cursor, _)| cursor,
        |(_, w)| Workspace::from(w),
    )))
}

/// Delete a workspace and erase its data (offboarding).
///
/// Erases its webhooks and their secrets, its API keys, its delivery log and its
/// ingest claims, then the workspace. From the first moment its keys answer 401;
/// delivery jobs already queued for it are skipped, and events published for it
/// afterwards are acknowledged and counted, never delivered.
///
/// Idempotent: if the request fails or the connection drops midway (the delivery log
/// may take a while), repeat it until it answers 204; a workspace being deleted
/// answers 404 to reads and 409 to a PUT meanwhile. Once it is gone, 404.
#[utoipa::path(
    delete,
    path = "/admin/v1/workspaces/{workspace_id}",
    tag = "admin",
    operation_id = "delete_workspace",
    params(WorkspaceIdParam),
    responses(
        (status = 204, description = "Erased; empty body."),
        (status = 401, description = "Missing, malformed or invalid admin token.", body = ErrorBody),
        (status = 404, description = "No such workspace (never created, or already erased), or the admin API is off.", body = ErrorBody),
        (status = 422, description = "Malformed `workspace_id`.", body = ErrorBody),
        (status = 500, description = "Unexpected error; repeat the request.", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(crate) async fn delete(
    State(state): State<ApiState>,
    _: Operator,
    WorkspacePath(id): WorkspacePath,
) -> Result<StatusCode, ApiError> {
    // Its own task: a client that gives up does not stop the erasure halfway (a
    // repeat would finish it, but there is no reason to leave it to one).
    let store = state.store.clone();
    let workspace = id.clone();
    let erased = tokio::spawn(async move { store.erase_workspace(&workspace).await })
        .await
        .context("the erasure task failed")?
        .context("erasing a workspace")?
        .ok_or_else(ApiError::workspace_not_found)?;
    tracing::info!(
        workspace = %id,
        webhooks = erased.webhooks,
        api_keys = erased.api_keys,
        events = erased.events,
        deliveries = erased.deliveries,
        "workspace deleted and its data erased"
    );
    Ok(StatusCode::NO_CONTENT)
}
