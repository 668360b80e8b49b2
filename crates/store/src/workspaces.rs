//! Workspaces and their API keys.
//!
//! A key reads `qr3k_<26-char ulid>_<43-char secret>`. The ulid part is the key's public
//! id (`key_<ulid>`), used to find the row; only SHA-256 of the secret part is stored and
//! it is compared in constant time.

use base64::Engine;
use qr3_domain::{ApiKeyId, WorkspaceId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Result, Store};

const KEY_PREFIX: &str = "qr3k_";

/// A freshly minted API key: shown once, never stored in clear.
pub struct ApiKey {
    pub id: ApiKeyId,
    token: String,
}

impl ApiKey {
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}, <redacted>)", self.id)
    }
}

#[derive(Debug)]
pub struct CreatedWorkspace {
    pub id: WorkspaceId,
    pub api_key: ApiKey,
}

fn mint() -> (ApiKeyId, String, [u8; 32]) {
    let id = ApiKeyId::generate();
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let ulid = &id.as_str()[ApiKeyId::PREFIX.len()..];
    let token = format!("{KEY_PREFIX}{ulid}_{secret}");
    (id, token, Sha256::digest(secret.as_bytes()).into())
}

/// Splits a presented token into the key id and its secret part.
fn split_token(token: &str) -> Option<(ApiKeyId, &str)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (ulid, secret) = rest.split_at_checked(26)?;
    let secret = secret.strip_prefix('_')?;
    let id = ApiKeyId::parse(&format!("{}{ulid}", ApiKeyId::PREFIX)).ok()?;
    Some((id, secret))
}

impl Store {
    /// Creates a workspace with its first API key.
    pub async fn create_workspace(&self, name: &str) -> Result<CreatedWorkspace> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = WorkspaceId::generate();
        tx.execute(
            "INSERT INTO workspaces (id, name) VALUES ($1, $2)",
            &[&id.as_str(), &name],
        )
        .await?;
        let api_key = insert_key(&tx, &id).await?;
        tx.commit().await?;
        Ok(CreatedWorkspace { id, api_key })
    }

    /// Mints another API key for an existing workspace; `None` if it does not exist.
    pub async fn create_api_key(&self, workspace: &WorkspaceId) -> Result<Option<ApiKey>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM workspaces WHERE id = $1",
                &[&workspace.as_str()],
            )
            .await?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let key = insert_key(&tx, workspace).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// The workspace a presented bearer token belongs to, if it is a valid, unrevoked key.
    pub async fn authenticate(&self, token: &str) -> Result<Option<WorkspaceId>> {
        let Some((id, secret)) = split_token(token) else {
            return Ok(None);
        };
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT workspace_id, secret_sha256 FROM api_keys WHERE id = $1 AND revoked_at IS NULL")
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id.as_str()]).await? else {
            return Ok(None);
        };
        let stored: &[u8] = row.get(1);
        let presented = Sha256::digest(secret.as_bytes());
        if !bool::from(presented.as_slice().ct_eq(stored)) {
            return Ok(None);
        }
        let workspace: &str = row.get(0);
        WorkspaceId::parse(workspace)
            .map(Some)
            .map_err(|e| crate::StoreError::Corrupt(e.to_string()))
    }
}

async fn insert_key(
    tx: &deadpool_postgres::Transaction<'_>,
    workspace: &WorkspaceId,
) -> Result<ApiKey> {
    let (id, token, hash) = mint();
    tx.execute(
        "INSERT INTO api_keys (id, workspace_id, secret_sha256) VALUES ($1, $2, $3)",
        &[&id.as_str(), &workspace.as_str(), &hash.as_slice()],
    )
    .await?;
    Ok(ApiKey { id, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_split_back_into_id_and_secret() {
        let (id, token, hash) = mint();
        let (parsed, secret) = split_token(&token).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(secret.as_bytes())), hash);
    }

    #[test]
    fn garbage_tokens_do_not_split() {
        for t in [
            "",
            "qr3k_",
            "Bearer x",
            "qr3k_0123456789abcdefghjkmnpqrs",
            "qr3k_é",
        ] {
            assert!(split_token(t).is_none(), "{t}");
        }
    }
}
