//! API keys on the wire (`/admin/v1/workspaces/{workspace_id}/api-keys`): the minted key,
//! shown once, and the key as listings show it, without its secret.

use serde::Serialize;
use utoipa::ToSchema;

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
