//! Postgres storage for qr3 webhooks: workspaces (provisioned and erased by the
//! platform) and API keys, webhooks (secrets encrypted at rest), idempotent-ingest
//! claims and the partitioned delivery log.
//!
//! Invariant: every query that reads or changes a webhook on behalf of a customer is
//! scoped by workspace id, so one workspace can never see another's rows.

#![forbid(unsafe_code)]

mod attempts;
mod cache;
mod crypto;
mod events;
mod migrate;
mod pool;
mod portal_sessions;
mod rate;
mod reveal;
mod sent;
mod stats;
mod tls;
mod webhooks;
mod workspaces;

pub use attempts::{
    AttemptDetail, AttemptFilter, AttemptRecord, AttemptStatus, RecordedBatch, Recoverable,
};
pub use cache::TtlCache;
pub use crypto::SecretCipher;
pub use events::{ClaimOutcome, EventKey};
pub use migrate::{
    check_schema, migrate, migrate_to, required_schema_version, run_retention, SchemaCheck,
};
pub use pool::{
    connect, connect_once, create_database_if_missing, database_name, is_missing_database,
};
pub use portal_sessions::{is_portal_token, NewPortalSession, PortalSession, PORTAL_TOKEN_PREFIX};
pub use rate::RateBlock;
pub use reveal::RevealedSecret;
pub use stats::{LatencyPercentiles, StatsWindow, WebhookStats};
pub use tls::{DatabaseTarget, SslMode};
pub use webhooks::{
    DeliveryTarget, ManualBudget, NewWebhook, RotatedSecret, SigningSecret, Subscribers,
    Unreadable, UnreadableReason, Webhook, WebhookPatch, WebhookSummary, MAX_PREVIOUS_SECRETS,
};
pub use workspaces::{ApiKey, ApiKeyInfo, CreatedWorkspace, Erasure, Upserted, Workspace};

pub use deadpool_postgres::Pool;

/// Why a storage operation failed. Not-found is not an error: lookups return `Option`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the error says the database is unreachable or refusing work for now
    /// (connection lost or refused, pool exhausted, server shutting down or starting,
    /// out of resources, a serialization failure or deadlock, a read-only standby
    /// during failover): waiting and trying again is the answer. Anything else, such as
    /// an unreadable row, is about the data at hand and would fail again the same way.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Database(error) => match error.code() {
                // No SQLSTATE: the connection itself failed (I/O, closed, TLS).
                None => true,
                Some(code) => is_transient_sqlstate(code.code()),
            },
            StoreError::Corrupt(_) => false,
        }
    }
}

/// SQLSTATE classes that describe the server's state, not the statement or its data:
/// 08 connection exception, 53 insufficient resources, 57 operator intervention
/// (admin shutdown, cannot connect now), 58 system error, 40 transaction rollback
/// (serialization failure, deadlock), 55P03 lock not available and 25006 read-only
/// transaction (a standby promoted mid-failover).
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58" | "40"))
        || code == "55P03"
        || code == "25006"
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the database: a connection pool plus the key for secrets at rest.
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    cipher: SecretCipher,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(pool: Pool, cipher: SecretCipher) -> Self {
        Self { pool, cipher }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_are_transient_and_data_errors_are_not() {
        for code in [
            "08006", "53300", "57P01", "57P03", "40001", "40P01", "55P03", "25006",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["22P02", "23505", "42P01", "XX000"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
    }
}
