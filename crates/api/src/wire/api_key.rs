//! API keys on the wire (`/admin/v1/workspaces/{workspace_id}/api-keys`): the minted key,
//! shown once, and the key as listings show it, without its secret.

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

/// The ids of `/admin/v1/workspaces/{workspace_id}/api-keys/{key_id}`, for the OpenAPI
/// document (`routes::admin::path` parses them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub struct ApiKeyParams {
    /// The platform's id for the workspace: 1 to 64 of `A-Z a-z 0-9 _ -`.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub workspace_id: String,
    /// The key's id: `key_` and 26 lowercase characters.
    #[param(pattern = "^key_[0-9a-hjkmnp-tv-z]{26}$")]
    pub key_id: String,
}

/// `POST /admin/v1/workspaces/{workspace_id}/api-keys`: the only response that shows the
/// key itself.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "key_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "api_key": "qr3k_01kmnd4e2x7r4h1v3f5s8q0c9b_sQb0vV0Vn3o8w3Qm0bq4m1J8yQmYyq6pQ9N8HqZQ1xY",
    "created_at": "2026-03-15T10:00:00.000Z"}))]
pub struct CreatedApiKey {
    /// `key_` followed by 26 characters; names the key in listings and to revoke it.
    pub id: String,
    /// The key to send as `Authorization: Bearer <api_key>` on `/v1`. Shown in this
    /// response only: store it now.
    pub api_key: String,
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub created_at: String,
}

impl From<qr3_store::ApiKey> for CreatedApiKey {
    fn from(key: qr3_store::ApiKey) -> Self {
        Self {
            id: key.id.to_string(),
            api_key: key.token().to_owned(),
            created_at: key.created_at.to_string(),
        }
    }
}

/// A page of API keys (`Page<ApiKey>`), as `#[utoipa::path]` names it.
pub type ApiKeyPage = super::page::Page<ApiKey>;

/// An API key of a workspace, without its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "key_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "created_at": "2026-03-15T10:00:00.000Z", "revoked_at": null}))]
pub struct ApiKey {
    /// `key_` followed by 26 characters; sorts by creation time.
    pub id: String,
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub created_at: String,
    /// When it was revoked (it answers 401 since); `null` while it works.
    #[schema(required = true, format = DateTime)]
    pub revoked_at: Option<String>,
}

impl From<qr3_store::ApiKeyInfo> for ApiKey {
    fn from(key: qr3_store::ApiKeyInfo) -> Self {
        Self {
            id: key.id.to_string(),
            created_at: key.created_at.to_string(),
            revoked_at: key.revoked_at.map(|t| t.to_string()),
        }
    }
}
