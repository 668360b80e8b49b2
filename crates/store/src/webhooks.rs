//! Webhooks: registration, reads scoped to a workspace, and what the workers need.

use chrono::{DateTime, Utc};
use qr3_domain::{
    EventType, Subscriptions, Timestamp, WebhookId, WebhookSecret, WebhookUrl, WorkspaceId,
};
use tokio_postgres::Row;

use crate::{Result, Store, StoreError};

/// A webhook as the API shows it (the secret is decrypted only for the one response
/// that reveals it).
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: WebhookId,
    pub workspace_id: WorkspaceId,
    pub url: String,
    pub events: Vec<String>,
    pub secret_hint: String,
    pub is_active: bool,
    pub consecutive_failures: i32,
    pub disabled_at: Option<Timestamp>,
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What the API hands over to register a webhook.
#[derive(Debug)]
pub struct NewWebhook {
    pub url: WebhookUrl,
    pub events: Subscriptions,
    pub secret: WebhookSecret,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct WebhookPatch {
    pub url: Option<WebhookUrl>,
    pub events: Option<Subscriptions>,
    pub is_active: Option<bool>,
    pub secret: Option<WebhookSecret>,
}

/// What a sender needs to deliver to a webhook, read at send time.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    pub id: WebhookId,
    pub workspace_id: WorkspaceId,
    pub url: String,
    pub secret: WebhookSecret,
    pub is_active: bool,
}

/// An active webhook's subscriptions, for fan-out.
#[derive(Debug, Clone)]
pub struct WebhookSummary {
    pub id: WebhookId,
    pub events: Subscriptions,
}

impl WebhookSummary {
    pub fn wants(&self, event: EventType) -> bool {
        self.events.matches(event)
    }
}

const COLUMNS: &str =
    "id, workspace_id, url, events, secret_hint, is_active, consecutive_failures, \
                       disabled_at, disabled_reason, created_at, updated_at";

/// Why the API disabled a webhook at the customer's request.
pub const DISABLED_BY_REQUEST: &str = "disabled through the API";

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn webhook_from_row(row: &Row) -> Result<Webhook> {
    Ok(Webhook {
        id: WebhookId::parse(row.get(0)).map_err(corrupt)?,
        workspace_id: WorkspaceId::parse(row.get(1)).map_err(corrupt)?,
        url: row.get(2),
        events: row.get(3),
        secret_hint: row.get(4),
        is_active: row.get(5),
        consecutive_failures: row.get(6),
        disabled_at: row.get::<_, Option<DateTime<Utc>>>(7).map(Timestamp::from),
        disabled_reason: row.get(8),
        created_at: Timestamp::from(row.get::<_, DateTime<Utc>>(9)),
        updated_at: Timestamp::from(row.get::<_, DateTime<Utc>>(10)),
    })
}

impl Store {
    pub async fn insert_webhook(
        &self,
        workspace: &WorkspaceId,
        new: NewWebhook,
    ) -> Result<Webhook> {
        let id = WebhookId::generate();
        let now = Timestamp::now().as_datetime();
        let sealed = self.cipher.seal(&id, &new.secret);
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO webhooks (id, workspace_id, url, events, secret_ciphertext, secret_hint, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_str(),
                    &workspace.as_str(),
                    &new.url.as_str(),
                    &new.events.to_strings(),
                    &sealed,
                    &new.secret.hint(),
                    &now,
                ],
            )
            .await?;
        webhook_from_row(&row)
    }

    pub async fn get_webhook(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
    ) -> Result<Option<Webhook>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND workspace_id = $2"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&id.as_str(), &workspace.as_str()])
            .await?
            .as_ref()
            .map(webhook_from_row)
            .transpose()
    }

    /// A page of a workspace's webhooks, newest first, starting after `after`. Returns at
    /// most `limit + 1` rows so the caller can tell whether there is more.
    pub async fn list_webhooks(
        &self,
        workspace: &WorkspaceId,
        after: Option<&WebhookId>,
        limit: i64,
    ) -> Result<Vec<Webhook>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM webhooks WHERE workspace_id = $1 AND ($2::text IS NULL OR id < $2) \
                 ORDER BY id DESC LIMIT $3"
            ))
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &workspace.as_str(),
                    &after.map(WebhookId::as_str),
                    &(limit + 1),
                ],
            )
            .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    /// Applies `patch`; `None` when the webhook does not exist in this workspace.
    /// Re-enabling resets the failure count and clears the disabled state.
    pub async fn update_webhook(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
        patch: WebhookPatch,
    ) -> Result<Option<Webhook>> {
        let sealed = patch.secret.as_ref().map(|s| self.cipher.seal(id, s));
        let hint = patch.secret.as_ref().map(WebhookSecret::hint);
        let events = patch.events.as_ref().map(Subscriptions::to_strings);
        // The application's clock, as for created_at, so the two never disagree.
        let now = Timestamp::now().as_datetime();
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE webhooks SET
                        url = COALESCE($3, url),
                        events = COALESCE($4, events),
                        secret_ciphertext = COALESCE($5, secret_ciphertext),
                        secret_hint = COALESCE($6, secret_hint),
                        consecutive_failures = CASE WHEN $7 AND NOT is_active THEN 0 ELSE consecutive_failures END,
                        disabled_at = CASE WHEN $7 THEN NULL
                                           WHEN NOT $7 AND is_active THEN $9
                                           ELSE disabled_at END,
                        disabled_reason = CASE WHEN $7 THEN NULL
                                               WHEN NOT $7 AND is_active THEN $8
                                               ELSE disabled_reason END,
                        is_active = COALESCE($7, is_active),
                        updated_at = $9
                     WHERE id = $1 AND workspace_id = $2
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_str(),
                    &workspace.as_str(),
                    &patch.url.as_ref().map(WebhookUrl::as_str),
                    &events,
                    &sealed,
                    &hint,
                    &patch.is_active,
                    &DISABLED_BY_REQUEST,
                    &now,
                ],
            )
            .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// Deletes a webhook; `false` when it does not exist in this workspace. Its log rows
    /// stay until retention drops them; queued jobs for it are skipped by the senders.
    pub async fn delete_webhook(&self, workspace: &WorkspaceId, id: &WebhookId) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "DELETE FROM webhooks WHERE id = $1 AND workspace_id = $2",
                &[&id.as_str(), &workspace.as_str()],
            )
            .await?;
        Ok(n > 0)
    }

    /// The webhook's secret in clear, for the responses that reveal it.
    pub async fn webhook_secret(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
    ) -> Result<Option<WebhookSecret>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT secret_ciphertext FROM webhooks WHERE id = $1 AND workspace_id = $2",
                &[&id.as_str(), &workspace.as_str()],
            )
            .await?;
        row.map(|r| self.cipher.open(id, r.get(0))).transpose()
    }

    /// URL, secret and active flag of a webhook, whatever its workspace (sender side).
    pub async fn delivery_target(&self, id: &WebhookId) -> Result<Option<DeliveryTarget>> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached("SELECT workspace_id, url, secret_ciphertext, is_active FROM webhooks WHERE id = $1").await?;
        let Some(row) = client.query_opt(&stmt, &[&id.as_str()]).await? else {
            return Ok(None);
        };
        Ok(Some(DeliveryTarget {
            id: id.clone(),
            workspace_id: WorkspaceId::parse(row.get(0)).map_err(corrupt)?,
            url: row.get(1),
            secret: self.cipher.open(id, row.get(2))?,
            is_active: row.get(3),
        }))
    }

    /// A workspace's active webhooks and what they subscribe to (ingest fan-out).
    pub async fn active_subscriptions(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Vec<WebhookSummary>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, events FROM webhooks WHERE workspace_id = $1 AND is_active ORDER BY id",
            )
            .await?;
        let rows = client.query(&stmt, &[&workspace.as_str()]).await?;
        rows.iter()
            .map(|row| {
                let events: Vec<String> = row.get(1);
                Ok(WebhookSummary {
                    id: WebhookId::parse(row.get(0)).map_err(corrupt)?,
                    events: Subscriptions::parse(&events).map_err(corrupt)?,
                })
            })
            .collect()
    }
}
