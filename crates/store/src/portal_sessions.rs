//! Customer-portal sessions: short-lived bearer tokens that let a browser manage one
//! workspace's webhooks, minted with an API key and revocable.
//!
//! A token reads `qr3p_rw_<43-char secret>` or, for a read-only session,
//! `qr3p_ro_<43-char secret>` (32 random bytes, base64url). The mode in the token only
//! tells the portal page which controls to show; what a session may do is read from its
//! row. Only SHA-256 of the whole token is stored; a presented token is hashed and found by that hash, which
//! reveals nothing useful through its timing. Authentication reads the database on
//! every request (nothing is cached), so a revoked session is refused by every API
//! replica at once, and a session of a workspace being erased is refused like one of a
//! workspace that does not exist.

use base64::Engine;
use chrono::{DateTime, Utc};
use qr3_domain::{PortalSessionId, Timestamp, WorkspaceId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

use crate::{Result, Store, StoreError};

/// The prefix of every portal-session token.
pub const PORTAL_TOKEN_PREFIX: &str = "qr3p_";
/// Length of a token: the prefix, the mode (`rw_` or `ro_`) and 43 characters of
/// base64url.
const TOKEN_LEN: usize = PORTAL_TOKEN_PREFIX.len() + 3 + 43;

/// A portal session as stored (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSession {
    pub id: PortalSessionId,
    pub workspace_id: WorkspaceId,
    /// A read-only session may read everything its workspace's API keys may read about
    /// webhooks, except their secrets, and change nothing.
    pub read_only: bool,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A freshly minted session with its token: shown once, never stored in clear.
pub struct NewPortalSession {
    pub session: PortalSession,
    token: String,
}

impl NewPortalSession {
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl std::fmt::Debug for NewPortalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewPortalSession({}, <redacted>)", self.session.id)
    }
}

fn mint_token(read_only: bool) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let mode = if read_only { "ro_" } else { "rw_" };
    let token = format!(
        "{PORTAL_TOKEN_PREFIX}{mode}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = Sha256::digest(token.as_bytes()).into();
    (token, hash)
}

/// Whether `token` has the shape of a portal-session token (before any lookup).
pub fn is_portal_token(token: &str) -> bool {
    token.starts_with(PORTAL_TOKEN_PREFIX)
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

const COLUMNS: &str = "id, workspace_id, read_only, created_at, expires_at, revoked_at";

fn session_from_row(row: &Row) -> Result<PortalSession> {
    Ok(PortalSession {
        id: PortalSessionId::parse(row.get(0)).map_err(corrupt)?,
        workspace_id: WorkspaceId::parse(row.get(1)).map_err(corrupt)?,
        read_only: row.get(2),
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(3)),
        expires_at: Timestamp::from(row.get::<_, DateTime<Utc>>(4)),
        revoked_at: row.get::<_, Option<DateTime<Utc>>>(5).map(Timestamp::from),
    })
}

impl Store {
    /// Mints a session of the live workspace `workspace` that expires after `lifetime`
    /// (millisecond precision); `None` when the workspace does not exist. The
    /// workspace's sessions that have expired are deleted on the way.
    pub async fn create_portal_session(
        &self,
        workspace: &WorkspaceId,
        read_only: bool,
        lifetime: std::time::Duration,
    ) -> Result<Option<NewPortalSession>> {
        let id = PortalSessionId::generate();
        let (token, hash) = mint_token(read_only);
        let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !crate::workspaces::lock_live_workspace(&tx, workspace).await? {
            return Ok(None);
        }
        tx.execute(
            "DELETE FROM portal_sessions WHERE workspace_id = $1 AND expires_at < now()",
            &[&workspace.as_str()],
        )
        .await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO portal_sessions (id, workspace_id, token_sha256, read_only, expires_at)
                     VALUES ($1, $2, $3, $4,
                        date_trunc('milliseconds', now()) + $5::float8 * interval '1 millisecond')
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_str(),
                    &workspace.as_str(),
                    &hash.as_slice(),
                    &read_only,
                    &(lifetime_ms as f64),
                ],
            )
            .await?;
        let session = session_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(NewPortalSession { session, token }))
    }

    /// The live session a presented token belongs to: not expired, not revoked, of a
    /// live workspace. `None` otherwise, and for anything that is not a session token.
    pub async fn authenticate_portal_session(&self, token: &str) -> Result<Option<PortalSession>> {
        if !is_portal_token(token) || token.len() != TOKEN_LEN {
            return Ok(None);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT s.id, s.workspace_id, s.read_only, s.created_at, s.expires_at, s.revoked_at
                 FROM portal_sessions s JOIN workspaces w ON w.id = s.workspace_id
                 WHERE s.token_sha256 = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
                   AND w.deleted_at IS NULL",
            )
            .await?;
        client
            .query_opt(&stmt, &[&hash.as_slice()])
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    /// Revokes a session of `workspace`; every later request with its token answers
    /// 401. Revoking a revoked (or expired) session changes nothing. `None` when there
    /// is no such session in this workspace.
    pub async fn revoke_portal_session(
        &self,
        workspace: &WorkspaceId,
        id: &PortalSessionId,
    ) -> Result<Option<PortalSession>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE portal_sessions SET revoked_at = coalesce(revoked_at, now())
                     WHERE id = $1 AND workspace_id = $2
                     RETURNING {COLUMNS}"
                ),
                &[&id.as_str(), &workspace.as_str()],
            )
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_prefix_the_length_and_no_repeats() {
        let (a, hash) = mint_token(false);
        let (b, _) = mint_token(true);
        assert!(a.starts_with("qr3p_rw_") && b.starts_with("qr3p_ro_"));
        assert!(is_portal_token(&a));
        assert_eq!(a.len(), TOKEN_LEN);
        assert_eq!(b.len(), TOKEN_LEN);
        assert_ne!(a, b);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(a.as_bytes())), hash);
        assert!(!is_portal_token("qr3k_abc"));
    }
}
