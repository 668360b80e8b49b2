//! Workspaces on the wire (`/admin/v1/workspaces`): the create-or-rename request and the
//! workspace object.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The `{workspace_id}` of every `/admin/v1/workspaces/{workspace_id}…` path, for the
/// OpenAPI document (`routes::admin::path` parses it).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub struct WorkspaceIdParam {
    /// The platform's id for the workspace: 1 to 64 of `A-Z a-z 0-9 _ -`.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub workspace_id: String,
}

/// `PUT /admin/v1/workspaces/{workspace_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Acme GmbH"}))]
pub struct PutWorkspace {
    /// A name for people, 1 to 200 characters, not only whitespace, no control
    /// characters. Not unique.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

/// A page of workspaces (`Page<Workspace>`), as `#[utoipa::path]` names it.
pub type WorkspacePage = super::page::Page<Workspace>;

/// A workspace: the tenant whose webhooks, API keys and delivery log the platform
/// manages.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "acme-42", "name": "Acme GmbH",
    "created_at": "2026-03-15T10:00:00.000Z"}))]
pub struct Workspace {
    /// The platform's own id for the workspace (1 to 64 of `A-Z a-z 0-9 _ -`); events
    /// carry it as `workspace_id`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub id: String,
    pub name: String,
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub created_at: String,
}

impl From<qr3_store::Workspace> for Workspace {
    fn from(workspace: qr3_store::Workspace) -> Self {
        Self {
            id: workspace.id.to_string(),
            name: workspace.name,
            created_at: workspace.created_at.to_string(),
        }
    }
}
