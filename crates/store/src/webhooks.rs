//! Webhooks: registration, reads scoped to a workspace, secret rotation, and what the
//! workers need.

use std::time::Duration;

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
    /// At most this many deliveries per second, or no cap.
    pub max_per_second: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What the API hands over to register a webhook.
#[derive(Debug)]
pub struct NewWebhook {
    pub url: WebhookUrl,
    pub events: Subscriptions,
    pub secret: WebhookSecret,
    pub max_per_second: Option<u32>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct WebhookPatch {
    pub url: Option<WebhookUrl>,
    pub events: Option<Subscriptions>,
    pub is_active: Option<bool>,
    pub secret: Option<WebhookSecret>,
    /// `Some(None)` removes the cap.
    pub max_per_second: Option<Option<u32>>,
}

/// What a sender needs to deliver to a webhook, read at send time.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    pub id: WebhookId,
    pub workspace_id: WorkspaceId,
    pub url: WebhookUrl,
    /// The current (newest) secret: it signs `X-QR3-Signature`.
    pub secret: WebhookSecret,
    /// Every secret that signs `webhook-signature`, newest first: the current one, then
    /// the rotated-out ones that had not expired when the target was read.
    pub secrets: Vec<SigningSecret>,
    pub is_active: bool,
    /// At most this many deliveries per second, or no cap.
    pub max_per_second: Option<u32>,
}

impl DeliveryTarget {
    /// The secrets to sign `webhook-signature` with at `now`, newest first. A cached
    /// target drops here the rotated-out secrets that expired since it was read.
    pub fn signing_secrets(&self, now: Timestamp) -> impl Iterator<Item = &WebhookSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|at| now < at))
            .map(|s| &s.secret)
    }
}

/// A secret that signs `webhook-signature`: the current one (`expires_at` is `None`),
/// or a rotated-out one until `expires_at`.
#[derive(Debug, Clone)]
pub struct SigningSecret {
    pub secret: WebhookSecret,
    pub expires_at: Option<Timestamp>,
}

/// The outcome of a secret rotation.
#[derive(Debug, Clone)]
pub struct RotatedSecret {
    /// The webhook, whose current secret is now the new one.
    pub webhook: Webhook,
    /// Until when the previous secret keeps signing `webhook-signature`.
    pub previous_expires_at: Timestamp,
}

/// Rotated-out secrets kept per webhook at most (besides the current one): a rotation
/// beyond that forgets the oldest at once, which bounds the size of
/// `webhook-signature`.
pub const MAX_PREVIOUS_SECRETS: i64 = 4;

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
                       disabled_at, disabled_reason, created_at, updated_at, max_per_second";

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
        max_per_second: row.get::<_, Option<i32>>(11).map(|n| n.max(1) as u32),
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
                     created_at, updated_at, max_per_second) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) \
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_str(),
                    &workspace.as_str(),
                    &new.url.as_str(),
                    &new.events.to_strings(),
                    &sealed,
                    &new.secret.hint(),
                    &now,
                    &new.max_per_second.map(|n| n as i32),
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
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
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
                        max_per_second = CASE WHEN $10 THEN $11 ELSE max_per_second END,
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
                    &patch.max_per_second.is_some(),
                    &patch.max_per_second.flatten().map(|n| n as i32),
                ],
            )
            .await?;
        if row.is_some() && sealed.is_some() {
            // A secret set this way replaces the old ones at once, ending any rotation's
            // grace period: the way out when a secret has leaked.
            tx.execute(
                "DELETE FROM webhook_previous_secrets WHERE webhook_id = $1",
                &[&id.as_str()],
            )
            .await?;
        }
        tx.commit().await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// Makes `new` the webhook's secret and keeps the previous one signing
    /// `webhook-signature` for `grace`; `None` when the webhook does not exist in this
    /// workspace. Expired previous secrets, and all but the newest
    /// [`MAX_PREVIOUS_SECRETS`], are forgotten.
    pub async fn rotate_webhook_secret(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
        new: &WebhookSecret,
        grace: Duration,
    ) -> Result<Option<RotatedSecret>> {
        let now = Timestamp::now();
        // Configuration bounds the grace period (a year at most); saturate regardless.
        let expires_at = Timestamp::from(
            chrono::Duration::from_std(grace)
                .ok()
                .and_then(|grace| now.as_datetime().checked_add_signed(grace))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        );
        let sealed = self.cipher.seal(id, new);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The row lock orders concurrent rotations and secret changes of one webhook.
        let Some(current) = tx
            .query_opt(
                "SELECT secret_ciphertext FROM webhooks WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
                &[&id.as_str(), &workspace.as_str()],
            )
            .await?
        else {
            return Ok(None);
        };
        // The ciphertext moves as it is: its associated data is the webhook id, which
        // does not change.
        let previous: Vec<u8> = current.get(0);
        tx.execute(
            "INSERT INTO webhook_previous_secrets (webhook_id, secret_ciphertext, rotated_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
            &[&id.as_str(), &previous, &now.as_datetime(), &expires_at.as_datetime()],
        )
        .await?;
        tx.execute(
            "DELETE FROM webhook_previous_secrets WHERE webhook_id = $1 AND (expires_at <= $2 OR id NOT IN \
             (SELECT id FROM webhook_previous_secrets WHERE webhook_id = $1 ORDER BY id DESC LIMIT $3))",
            &[&id.as_str(), &now.as_datetime(), &MAX_PREVIOUS_SECRETS],
        )
        .await?;
        let row = tx
            .query_one(
                &format!(
                    "UPDATE webhooks SET secret_ciphertext = $3, secret_hint = $4, updated_at = $5 \
                     WHERE id = $1 AND workspace_id = $2 RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_str(),
                    &workspace.as_str(),
                    &sealed,
                    &new.hint(),
                    &now.as_datetime(),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(RotatedSecret {
            webhook: webhook_from_row(&row)?,
            previous_expires_at: expires_at,
        }))
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

    /// URL, secrets and active flag of a webhook, whatever its workspace (sender side).
    pub async fn delivery_target(&self, id: &WebhookId) -> Result<Option<DeliveryTarget>> {
        match self.delivery_targets(std::slice::from_ref(id)).await?.pop() {
            Some((_, target)) => target.map(Some),
            None => Ok(None),
        }
    }

    /// [`Store::delivery_target`] of several webhooks in one query: one entry per
    /// webhook that exists (an id not returned does not exist), each read on its own, so
    /// a row this build cannot read fails only its own entry.
    pub async fn delivery_targets(
        &self,
        ids: &[WebhookId],
    ) -> Result<Vec<(WebhookId, Result<DeliveryTarget>)>> {
        let now = Timestamp::now();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT w.id, w.workspace_id, w.url, w.secret_ciphertext, w.is_active, w.max_per_second, \
                 ARRAY(SELECT p.secret_ciphertext FROM webhook_previous_secrets p \
                       WHERE p.webhook_id = w.id AND p.expires_at > $2 ORDER BY p.id DESC), \
                 ARRAY(SELECT p.expires_at FROM webhook_previous_secrets p \
                       WHERE p.webhook_id = w.id AND p.expires_at > $2 ORDER BY p.id DESC) \
                 FROM webhooks w WHERE w.id = ANY($1::text[])",
            )
            .await?;
        let texts: Vec<&str> = ids.iter().map(WebhookId::as_str).collect();
        let rows = client.query(&stmt, &[&texts, &now.as_datetime()]).await?;
        let asked: std::collections::HashMap<&str, &WebhookId> =
            ids.iter().map(|id| (id.as_str(), id)).collect();
        Ok(rows
            .iter()
            .filter_map(|row| {
                let id = *asked.get(row.get::<_, &str>(0))?;
                Some((id.clone(), self.delivery_target_from_row(id, row)))
            })
            .collect())
    }

    fn delivery_target_from_row(&self, id: &WebhookId, row: &Row) -> Result<DeliveryTarget> {
        let secret = self.cipher.open(id, row.get(3))?;
        let previous: Vec<Vec<u8>> = row.get(6);
        let expiries: Vec<DateTime<Utc>> = row.get(7);
        let mut secrets = vec![SigningSecret {
            secret: secret.clone(),
            expires_at: None,
        }];
        // A previous secret only adds a signature during its grace period: one that does
        // not decrypt is left out (and said), so it cannot stop deliveries signed with
        // the current secret.
        for (sealed, expires_at) in previous.iter().zip(expiries) {
            match self.cipher.open(id, sealed) {
                Ok(secret) => secrets.push(SigningSecret {
                    secret,
                    expires_at: Some(Timestamp::from(expires_at)),
                }),
                Err(error) => {
                    tracing::warn!(webhook_id = %id, %error, "a previous secret is unreadable; signing without it")
                }
            }
        }
        Ok(DeliveryTarget {
            id: id.clone(),
            workspace_id: WorkspaceId::parse(row.get(1)).map_err(corrupt)?,
            url: WebhookUrl::from_trusted(row.get(2)).map_err(corrupt)?,
            secret,
            secrets,
            is_active: row.get(4),
            max_per_second: row.get::<_, Option<i32>>(5).map(|n| n.max(1) as u32),
        })
    }

    /// The active webhooks of `workspaces` and what they subscribe to (ingest fan-out),
    /// in one query. Rows are read one by one: a row this build cannot fully read
    /// affects only that webhook. Event types it does not know are left out (the
    /// webhook still gets the ones it knows); a row with no known type or an unreadable
    /// id is left out. Either way it is reported in [`Subscribers::unreadable`].
    pub async fn active_subscribers(&self, workspaces: &[&WorkspaceId]) -> Result<Subscribers> {
        let mut subscribers = Subscribers::default();
        if workspaces.is_empty() {
            return Ok(subscribers);
        }
        let ids: Vec<&str> = workspaces.iter().map(|w| w.as_str()).collect();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT workspace_id, id, events FROM webhooks \
                 WHERE workspace_id = ANY($1) AND is_active ORDER BY workspace_id, id",
            )
            .await?;
        let rows = client.query(&stmt, &[&ids]).await?;
        for row in &rows {
            let workspace: &str = row.get(0);
            let id: &str = row.get(1);
            let names: Vec<String> = row.get(2);
            let Some(workspace) = workspaces.iter().find(|w| w.as_str() == workspace) else {
                continue;
            };
            let Ok(webhook) = WebhookId::parse(id) else {
                subscribers.unreadable.push(Unreadable {
                    webhook: id.to_owned(),
                    reason: UnreadableReason::Id,
                });
                continue;
            };
            let (events, unknown) = Subscriptions::parse_known(&names);
            if !unknown.is_empty() {
                subscribers.unreadable.push(Unreadable {
                    webhook: id.to_owned(),
                    reason: UnreadableReason::UnknownEventTypes(unknown),
                });
            }
            if let Some(events) = events {
                subscribers
                    .by_workspace
                    .entry((*workspace).clone())
                    .or_default()
                    .push(WebhookSummary {
                        id: webhook,
                        events,
                    });
            }
        }
        Ok(subscribers)
    }
}

/// What [`Store::active_subscribers`] read.
#[derive(Debug, Default)]
pub struct Subscribers {
    /// Each workspace's active webhooks (absent: none).
    pub by_workspace: std::collections::HashMap<WorkspaceId, Vec<WebhookSummary>>,
    /// Rows read only in part, or not at all.
    pub unreadable: Vec<Unreadable>,
}

impl Subscribers {
    pub fn of(&self, workspace: &WorkspaceId) -> &[WebhookSummary] {
        self.by_workspace
            .get(workspace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A webhook row ingest could not fully read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The row's id, as stored.
    pub webhook: String,
    pub reason: UnreadableReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadableReason {
    /// The id is not a webhook id: the row is left out.
    Id,
    /// These names are not event types this build knows: left out of the row.
    UnknownEventTypes(Vec<String>),
}

impl UnreadableReason {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            UnreadableReason::Id => "unreadable_id",
            UnreadableReason::UnknownEventTypes(_) => "unknown_event_type",
        }
    }
}

/// The answer of the manual-request rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualBudget {
    /// The request may go ahead.
    Granted,
    /// The webhook used its budget for this window; it refills after this long.
    Exhausted(std::time::Duration),
}

impl Store {
    /// Counts one manual request (retry or recover) against the webhook's budget of
    /// `per_minute` in the current one-minute window. The webhook row is locked for the
    /// count, so the limit holds across API replicas. `None` when the webhook does not
    /// exist in this workspace.
    pub async fn take_manual_budget(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        per_minute: u32,
    ) -> Result<Option<ManualBudget>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE webhooks SET
                    manual_window_start = CASE WHEN manual_window_start IS NULL
                        OR manual_window_start <= now() - interval '1 minute'
                        THEN now() ELSE manual_window_start END,
                    manual_window_count = CASE WHEN manual_window_start IS NULL
                        OR manual_window_start <= now() - interval '1 minute'
                        THEN 1 ELSE manual_window_count + 1 END
                 WHERE id = $1 AND workspace_id = $2
                 RETURNING manual_window_count,
                    GREATEST(0, EXTRACT(EPOCH FROM (manual_window_start + interval '1 minute' - now())))::float8",
                &[&webhook.as_str(), &workspace.as_str()],
            )
            .await?;
        Ok(row.map(|row| {
            let count: i32 = row.get(0);
            if i64::from(count) <= i64::from(per_minute) {
                ManualBudget::Granted
            } else {
                let seconds: f64 = row.get(1);
                ManualBudget::Exhausted(std::time::Duration::from_secs_f64(seconds.max(0.0)))
            }
        }))
    }
}
