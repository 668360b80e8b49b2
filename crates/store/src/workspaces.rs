//! Workspaces and their API keys: creating a workspace under the platform's own id (or
//! a generated one), renaming it, minting, listing and revoking keys, authenticating a
//! presented key, and erasing a workspace with everything it owns (offboarding).
//!
//! A key reads `qr3k_<26-char ulid>_<43-char secret>`. The ulid part is the key's public
//! id (`key_<ulid>`), used to find the row; only SHA-256 of the secret part is stored and
//! it is compared in constant time. Authentication reads the database on every request
//! (nothing is cached), so a revoked key is refused by every API replica at once.
//!
//! A workspace whose `deleted_at` is set is being erased: it is gone for every read here,
//! a key can no longer be minted for it, and only [`Store::erase_workspace`] touches it.

use base64::Engine;
use chrono::{DateTime, Utc};
use qr3_domain::{ApiKeyId, Timestamp, WorkspaceId, WorkspaceName};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_postgres::{error::SqlState, Row};

use crate::{Result, Store, StoreError};

const KEY_PREFIX: &str = "qr3k_";
/// Ingest claims deleted per statement while erasing a workspace, so no single
/// transaction grows with the workspace's history.
const ERASE_CLAIMS_BATCH: i64 = 10_000;

/// A freshly minted API key: shown once, never stored in clear.
pub struct ApiKey {
    pub id: ApiKeyId,
    pub created_at: Timestamp,
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

/// An API key as listings show it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: ApiKeyId,
    pub created_at: Timestamp,
    /// When it was revoked; `None` while it authenticates.
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug)]
pub struct CreatedWorkspace {
    pub id: WorkspaceId,
    pub api_key: ApiKey,
}

/// A live workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    /// Stored with millisecond precision, so it is also the exact paging key.
    pub created_at: Timestamp,
}

/// What [`Store::upsert_workspace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    Created(Workspace),
    /// It existed; its name is now the one given (perhaps the same).
    Updated(Workspace),
    /// A workspace with this id is being erased: finish the erasure first.
    BeingErased,
}

/// What [`Store::erase_workspace`] removed in this call (a repeat after a crash counts
/// only what was left).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erasure {
    pub webhooks: u64,
    pub api_keys: u64,
    /// Ingest claims (`ingested_events` rows).
    pub events: u64,
    /// Delivery-log rows.
    pub deliveries: u64,
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

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn workspace_from_row(row: &Row) -> Result<Workspace> {
    Ok(Workspace {
        id: WorkspaceId::parse(row.get(0)).map_err(corrupt)?,
        name: row.get(1),
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(2)),
    })
}

fn key_from_row(row: &Row) -> Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: ApiKeyId::parse(row.get(0)).map_err(corrupt)?,
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(1)),
        revoked_at: row.get::<_, Option<DateTime<Utc>>>(2).map(Timestamp::from),
    })
}

impl Store {
    /// Creates a workspace under a generated `ws_…` id, with its first API key.
    pub async fn create_workspace(&self, name: &str) -> Result<CreatedWorkspace> {
        let id = WorkspaceId::generate();
        self.create_workspace_as(&id, name)
            .await?
            .ok_or_else(|| corrupt(format!("generated workspace id {id} already exists")))
    }

    /// Creates a workspace under `id`, with its first API key; `None` when a workspace
    /// with this id exists already (or is being erased).
    pub async fn create_workspace_as(
        &self,
        id: &WorkspaceId,
        name: &str,
    ) -> Result<Option<CreatedWorkspace>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO workspaces (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&id.as_str(), &name],
            )
            .await?;
        if inserted == 0 {
            return Ok(None);
        }
        let api_key = insert_key(&tx, id).await?;
        tx.commit().await?;
        Ok(Some(CreatedWorkspace {
            id: id.clone(),
            api_key,
        }))
    }

    /// Creates the workspace `id` or renames it; one statement, so concurrent calls
    /// with one id serialise on its row.
    pub async fn upsert_workspace(
        &self,
        id: &WorkspaceId,
        name: &WorkspaceName,
    ) -> Result<Upserted> {
        let client = self.pool.get().await?;
        // `xmax = 0` only on a row this statement inserted; an updated one carries
        // this transaction's id there.
        let row = client
            .query_opt(
                "INSERT INTO workspaces (id, name) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name
                 WHERE workspaces.deleted_at IS NULL
                 RETURNING id, name, created_at, xmax = 0",
                &[&id.as_str(), &name.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Upserted::BeingErased);
        };
        let workspace = workspace_from_row(&row)?;
        Ok(if row.get::<_, bool>(3) {
            Upserted::Created(workspace)
        } else {
            Upserted::Updated(workspace)
        })
    }

    /// The live workspace `id`.
    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, name, created_at FROM workspaces WHERE id = $1 AND deleted_at IS NULL",
                &[&id.as_str()],
            )
            .await?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    /// Live workspaces, newest first (by `created_at`, then id), after `after` (the
    /// last one of the previous page), at most `limit + 1` of them so the caller can
    /// tell whether more follow.
    pub async fn list_workspaces(
        &self,
        after: Option<(Timestamp, &WorkspaceId)>,
        limit: i64,
    ) -> Result<Vec<Workspace>> {
        let client = self.pool.get().await?;
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at.as_datetime()), Some(id.as_str())),
            None => (None, None),
        };
        let rows = client
            .query(
                "SELECT id, name, created_at FROM workspaces
                 WHERE deleted_at IS NULL
                   AND ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2::text))
                 ORDER BY created_at DESC, id DESC
                 LIMIT $3",
                &[&after_at, &after_id, &(limit + 1)],
            )
            .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    /// Mints another API key for a live workspace; `None` if there is none.
    pub async fn create_api_key(&self, workspace: &WorkspaceId) -> Result<Option<ApiKey>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !lock_live_workspace(&tx, workspace).await? {
            return Ok(None);
        }
        let key = insert_key(&tx, workspace).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// The keys of a live workspace, revoked ones included, newest first, after `after`,
    /// at most `limit + 1`; `None` when the workspace does not exist.
    pub async fn list_api_keys(
        &self,
        workspace: &WorkspaceId,
        after: Option<&ApiKeyId>,
        limit: i64,
    ) -> Result<Option<Vec<ApiKeyInfo>>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT k.id, k.created_at, k.revoked_at
                 FROM workspaces w
                 LEFT JOIN LATERAL (
                    SELECT id, created_at, revoked_at FROM api_keys
                    WHERE workspace_id = w.id AND ($2::text IS NULL OR id < $2)
                    ORDER BY id DESC
                    LIMIT $3
                 ) k ON true
                 WHERE w.id = $1 AND w.deleted_at IS NULL
                 ORDER BY k.id DESC",
                &[
                    &workspace.as_str(),
                    &after.map(ApiKeyId::as_str),
                    &(limit + 1),
                ],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        // A workspace without (further) keys is one row of NULLs.
        rows.iter()
            .filter(|row| row.get::<_, Option<&str>>(0).is_some())
            .map(key_from_row)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Revokes a key of a live workspace; every later request with it answers 401.
    /// Revoking a revoked key changes nothing. `None` when there is no such key there.
    pub async fn revoke_api_key(
        &self,
        workspace: &WorkspaceId,
        key: &ApiKeyId,
    ) -> Result<Option<ApiKeyInfo>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
                 FROM workspaces w
                 WHERE k.id = $1 AND k.workspace_id = $2
                   AND w.id = k.workspace_id AND w.deleted_at IS NULL
                 RETURNING k.id, k.created_at, k.revoked_at",
                &[&key.as_str(), &workspace.as_str()],
            )
            .await?;
        row.as_ref().map(key_from_row).transpose()
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
        WorkspaceId::parse(workspace).map(Some).map_err(corrupt)
    }

    /// Offboarding: erases the workspace `id` and everything it owns. `None` when there
    /// is no workspace `id` (live or half-erased).
    ///
    /// In this order, each step idempotent, so a call repeated after a crash (or a
    /// client that gave up) midway finds the marked row and finishes:
    /// 1. one transaction marks the workspace (`deleted_at`) and deletes its webhooks
    ///    (their previous secrets cascade) and API keys. From its commit no key
    ///    authenticates, ingest claims none of its events, and senders skip its queued
    ///    jobs as their webhooks are gone (once their caches expire);
    /// 2. its delivery-log rows, one statement per partition, so each transaction stays
    ///    short and the progress of a long erasure survives a crash. There is no index
    ///    on the log's `workspace_id` (it would cost every attempt written), so each
    ///    partition is scanned once;
    /// 3. its ingest claims, by primary-key prefix, in batches. After the log, so a
    ///    claim statement that read the workspace as live just before step 1 has long
    ///    committed;
    /// 4. the workspace row, which cascades to any webhook or key created in the
    ///    moment between a concurrent request's check and step 1.
    pub async fn erase_workspace(&self, id: &WorkspaceId) -> Result<Option<Erasure>> {
        let ws = id.as_str();
        let mut client = self.pool.get().await?;
        let mut erased = Erasure::default();

        let tx = client.transaction().await?;
        let found = tx
            .query_opt(
                "UPDATE workspaces SET deleted_at = coalesce(deleted_at, now())
                 WHERE id = $1 RETURNING id",
                &[&ws],
            )
            .await?;
        if found.is_none() {
            return Ok(None);
        }
        erased.webhooks = tx
            .execute("DELETE FROM webhooks WHERE workspace_id = $1", &[&ws])
            .await?;
        erased.api_keys = tx
            .execute("DELETE FROM api_keys WHERE workspace_id = $1", &[&ws])
            .await?;
        tx.commit().await?;

        // `regclass::text` quotes a name where it needs it. The payloads the attempts
        // share go too (they are not counted as deliveries). `delivery_log`'s rows name
        // their workspace only through their payload row, so they go first, each
        // partition joined with its day's payloads.
        let partitions = client
            .query(
                "SELECT i.inhrelid::regclass::text, p.relname::text
                 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname IN ('delivery_attempts', 'event_payloads', 'delivery_log', 'delivery_log_payloads')
                 ORDER BY p.relname = 'delivery_log_payloads', 1",
                &[],
            )
            .await?;
        for partition in partitions {
            let name: String = partition.get(0);
            let parent: &str = partition.get(1);
            let sql = if parent == "delivery_log" {
                // A daily partition's payloads are in the payload partition of that
                // day; the default partition's anywhere.
                let day = name
                    .rsplit_once("_p")
                    .map(|(_, day)| day)
                    .filter(|day| day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()))
                    .map(|day| format!(" AND p.created_at = '{day}'::timestamp AT TIME ZONE 'UTC'"))
                    .unwrap_or_default();
                format!(
                    "DELETE FROM {name} a USING delivery_log_payloads p
                     WHERE p.workspace_id = $1 AND p.event = a.event
                       AND p.created_at = date_trunc('day', a.created_at, 'UTC'){day}"
                )
            } else {
                format!("DELETE FROM {name} WHERE workspace_id = $1")
            };
            let attempts = parent == "delivery_attempts" || parent == "delivery_log";
            match client.execute(sql.as_str(), &[&ws]).await {
                Ok(n) if attempts => erased.deliveries += n,
                Ok(_) => {}
                // Retention dropped it meanwhile: its rows are gone too.
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {}
                Err(e) => return Err(e.into()),
            }
        }

        loop {
            let n = client
                .execute(
                    "DELETE FROM ingested_events WHERE (workspace_id, event_id) IN (
                        SELECT workspace_id, event_id FROM ingested_events
                        WHERE workspace_id = $1 LIMIT $2)",
                    &[&ws, &ERASE_CLAIMS_BATCH],
                )
                .await?;
            erased.events += n;
            if n < ERASE_CLAIMS_BATCH as u64 {
                break;
            }
        }

        client
            .execute(
                "DELETE FROM workspaces WHERE id = $1 AND deleted_at IS NOT NULL",
                &[&ws],
            )
            .await?;
        Ok(Some(erased))
    }
}

async fn insert_key(
    tx: &deadpool_postgres::Transaction<'_>,
    workspace: &WorkspaceId,
) -> Result<ApiKey> {
    let (id, token, hash) = mint();
    let row = tx
        .query_one(
            "INSERT INTO api_keys (id, workspace_id, secret_sha256) VALUES ($1, $2, $3)
             RETURNING created_at",
            &[&id.as_str(), &workspace.as_str(), &hash.as_slice()],
        )
        .await?;
    Ok(ApiKey {
        id,
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(0)),
        token,
    })
}

/// Whether `workspace` exists and is not being erased, holding a share lock on its row
/// until `tx` ends. The lock orders a credential's creation against an erasure: either
/// the erasure's first step sees (and deletes) the new key or session, or this sees the
/// workspace marked and the caller stops.
pub(crate) async fn lock_live_workspace(
    tx: &deadpool_postgres::Transaction<'_>,
    workspace: &WorkspaceId,
) -> Result<bool> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM workspaces WHERE id = $1 AND deleted_at IS NULL FOR SHARE",
            &[&workspace.as_str()],
        )
        .await?
        .is_some())
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
