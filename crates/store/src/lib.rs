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
mod stats;
mod webhooks;
mod workspaces;

pub use attempts::{
    AttemptDetail, AttemptFilter, AttemptRecord, AttemptStatus, AttemptTrigger, ManualBudget,
    RecordedBatch, Recoverable,
};
pub use cache::TtlCache;
pub use crypto::SecretCipher;
pub use events::{ClaimOutcome, EventKey};
pub use migrate::{migrate, run_retention};
pub use pool::{connect, create_database_if_missing, database_name};
pub use stats::{LatencyPercentiles, StatsWindow, WebhookStats};
pub use webhooks::{
    DeliveryTarget, NewWebhook, RotatedSecret, SigningSecret, Webhook, WebhookPatch,
    WebhookSummary, MAX_PREVIOUS_SECRETS,
};
pub use workspaces::{ApiKey, ApiKeyInfo, CreatedWorkspace, Erasure, Upserted, Workspace};

use deadpool_postgres::Pool;

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
