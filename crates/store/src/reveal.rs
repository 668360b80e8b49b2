//! A webhook's signing secret as `GET /v1/webhooks/{id}/secret` reveals it: the current
//! secret in clear and until when rotated-out secrets keep signing beside it.

use chrono::{DateTime, Utc};
use qr3_domain::{Timestamp, WebhookId, WebhookSecret, WorkspaceId};

use crate::{Result, Store};

/// The current secret of a webhook and the end of its rotation's grace period.
#[derive(Debug, Clone)]
pub struct RevealedSecret {
    /// Keys `X-QR3-Signature` and the first `webhook-signature`.
    pub secret: WebhookSecret,
    /// The latest time a rotated-out secret still signs `webhook-signature`; `None`
    /// when no previous secret is in its grace period.
    pub previous_expires_at: Option<Timestamp>,
}

impl Store {
    /// The webhook's current secret and grace period; `None` when the webhook does not
    /// exist in this workspace.
    pub async fn reveal_webhook_secret(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
    ) -> Result<Option<RevealedSecret>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT w.secret_ciphertext,
                        (SELECT max(p.expires_at) FROM webhook_previous_secrets p
                         WHERE p.webhook_id = w.id AND p.expires_at > now())
                 FROM webhooks w WHERE w.id = $1 AND w.workspace_id = $2",
                &[&id.as_str(), &workspace.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(RevealedSecret {
            secret: self.cipher.open(id, row.get(0))?,
            previous_expires_at: row.get::<_, Option<DateTime<Utc>>>(1).map(Timestamp::from),
        }))
    }
}
