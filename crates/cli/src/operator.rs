//! The operator's commands for workspaces and API keys: the CLI equivalents of
//! `/admin/v1`, working straight on the database (no admin token, no running API).
//! Each prints one JSON object on stdout.

use anyhow::{bail, Context};
use qr3_config::Settings;
use qr3_domain::{ApiKeyId, WorkspaceId, WorkspaceName};
use qr3_store::ApiKeyInfo;
use serde_json::{json, Value};

use crate::app;

/// `workspace create NAME [--id ID]`: the workspace (under `id`, or a generated
/// `ws_…` one) and its first API key, `{"workspace_id", "api_key"}`.
pub async fn create_workspace(
    settings: &Settings,
    name: &str,
    id: Option<&str>,
) -> anyhow::Result<Value> {
    let name = WorkspaceName::parse(name).context("invalid NAME")?;
    let id = match id {
        Some(id) => WorkspaceId::parse(id).context("invalid --id")?,
        None => WorkspaceId::generate(),
    };
    let store = app::open_store(settings).await?;
    let Some(created) = store
        .create_workspace_as(&id, name.as_str())
        .await
        .context("cannot create the workspace")?
    else {
        bail!("workspace {id} already exists (mint another key with `api-key create`)");
    };
    Ok(json!({ "workspace_id": created.id, "api_key": created.api_key.token() }))
}

/// `workspace delete ID`: erases the workspace and everything it owns, like `DELETE
/// /admin/v1/workspaces/{id}`; safe to repeat after an interruption.
pub async fn delete_workspace(settings: &Settings, id: &str) -> anyhow::Result<Value> {
    let id = WorkspaceId::parse(id).context("invalid ID")?;
    let store = app::open_store(settings).await?;
    let Some(erased) = store
        .erase_workspace(&id)
        .await
        .context("cannot delete the workspace (repeat the command to finish)")?
    else {
        bail!("no workspace {id}");
    };
    Ok(json!({
        "workspace_id": id,
        "deleted": {
            "webhooks": erased.webhooks,
            "api_keys": erased.api_keys,
            "events": erased.events,
            "deliveries": erased.deliveries,
        },
    }))
}

/// `api-key create --workspace ID`: `{"id", "api_key", "created_at"}`.
pub async fn create_api_key(settings: &Settings, workspace: &str) -> anyhow::Result<Value> {
    let workspace = WorkspaceId::parse(workspace).context("invalid --workspace")?;
    let store = app::open_store(settings).await?;
    let key = store
        .create_api_key(&workspace)
        .await
        .context("cannot mint the API key")?
        .with_context(|| format!("no workspace {workspace}"))?;
    Ok(json!({ "id": key.id, "api_key": key.token(), "created_at": key.created_at }))
}

/// `api-key list --workspace ID`: every key, newest first, without secrets,
/// `{"data": [{"id", "created_at", "revoked_at"}]}`.
pub async fn list_api_keys(settings: &Settings, workspace: &str) -> anyhow::Result<Value> {
    const PAGE: i64 = 100;
    let workspace = WorkspaceId::parse(workspace).context("invalid --workspace")?;
    let store = app::open_store(settings).await?;
    let mut keys: Vec<ApiKeyInfo> = Vec::new();
    loop {
        let page = store
            .list_api_keys(&workspace, keys.last().map(|k| &k.id), PAGE)
            .await
            .context("cannot list API keys")?
            .with_context(|| format!("no workspace {workspace}"))?;
        let more = page.len() as i64 > PAGE;
        keys.extend(page.into_iter().take(PAGE as usize));
        if !more {
            break;
        }
    }
    let data: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(json!({ "data": data }))
}

/// `api-key revoke --workspace ID KEY_ID`: the revoked key, `{"id", "created_at",
/// "revoked_at"}`. Every request with it answers 401 from now on.
pub async fn revoke_api_key(
    settings: &Settings,
    workspace: &str,
    key: &str,
) -> anyhow::Result<Value> {
    let workspace = WorkspaceId::parse(workspace).context("invalid --workspace")?;
    let key = ApiKeyId::parse(key).context("invalid KEY_ID")?;
    let store = app::open_store(settings).await?;
    let revoked = store
        .revoke_api_key(&workspace, &key)
        .await
        .context("cannot revoke the API key")?
        .with_context(|| format!("no API key {key} in workspace {workspace}"))?;
    Ok(key_json(&revoked))
}

fn key_json(key: &ApiKeyInfo) -> Value {
    json!({ "id": key.id, "created_at": key.created_at, "revoked_at": key.revoked_at })
}

/// Prints `value` as one line of JSON on stdout.
pub fn print(value: &Value) {
    println!("{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_without_secrets() {
        let key = ApiKeyInfo {
            id: ApiKeyId::generate(),
            created_at: qr3_domain::Timestamp::parse("2026-03-15T10:00:00Z").unwrap(),
            revoked_at: None,
        };
        let json = key_json(&key);
        assert_eq!(json["created_at"], "2026-03-15T10:00:00.000Z");
        assert_eq!(json["revoked_at"], Value::Null);
        assert_eq!(json.as_object().unwrap().len(), 3);
    }
}
