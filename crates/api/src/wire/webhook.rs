//! Webhooks on the wire: the create and update requests and the webhook object.

use qr3_domain::{EventType, WebhookSecret};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{
    openapi::{schema::Schema, ObjectBuilder, RefOr, Type},
    PartialSchema, ToSchema,
};

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://example.com/webhooks/qr3",
    "events": ["qr.scanned", "qr.created"], "secret": "my-secret-key-min-16-chars"}))]
pub struct CreateWebhook {
    /// Absolute `https://` URL (`http://` only where the deployment allows it) that is not
    /// a private, loopback or otherwise internal address.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types to deliver: at least one; `*` for every event except `webhook.ping`.
    #[schema(value_type = Vec<EventSubscription>, min_items = 1)]
    pub events: Vec<String>,
    /// Signing secret, 16 to 256 characters. Omit it (or send `null`) to have a strong
    /// one generated; either way the response shows it this once.
    #[schema(min_length = 16, max_length = 256)]
    pub secret: Option<String>,
    /// At most this many deliveries per second to this webhook (1 to 10000); extra
    /// deliveries wait their turn instead of failing. Omit or `null` for no cap.
    #[schema(minimum = 1, maximum = 10000)]
    pub max_per_second: Option<u32>,
}

/// `PATCH /v1/webhooks/{id}`: at least one field; absent fields are left unchanged.
/// `null` is refused rather than read as "unchanged".
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"events": ["*"], "is_active": true}))]
pub struct UpdateWebhook {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, max_length = 2048)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<EventSubscription>, min_items = 1)]
    pub events: Option<Vec<String>>,
    /// `false` disables the webhook; `true` re-enables it and resets its failure count.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    pub is_active: Option<bool>,
    /// A new signing secret (16 to 256 characters); the response shows it this once.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 16, max_length = 256)]
    pub secret: Option<String>,
    /// A new cap on deliveries per second (1 to 10000), or `null` to remove the cap.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub max_per_second: Option<Option<u32>>,
}

impl UpdateWebhook {
    pub fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.events.is_none()
            && self.is_active.is_none()
            && self.secret.is_none()
            && self.max_per_second.is_none()
    }
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A field that may be absent (`#[serde(default)]` gives `None`) but not `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A page of webhooks (`Page<Webhook>`), as `#[utoipa::path]` names it.
pub type WebhookPage = super::page::Page<Webhook>;

/// A registered webhook.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "wh_01kmnd4e2x7r4h1v3f5s8q0c9b",
    "url": "https://example.com/webhooks/qr3", "events": ["qr.scanned", "qr.created"],
    "is_active": true, "secret": "my-secret-key-min-16-chars",
    "secret_whsec": "whsec_bXktc2VjcmV0LWtleS1taW4tMTYtY2hhcnM=", "secret_hint": "my-s…",
    "created_at": "2026-03-15T10:00:00.000Z", "updated_at": "2026-03-15T10:00:00.000Z",
    "disabled_at": null, "disabled_reason": null, "max_per_second": null}))]
pub struct Webhook {
    /// `wh_` followed by 26 characters; sorts by creation time.
    pub id: String,
    pub url: String,
    #[schema(value_type = Vec<EventSubscription>)]
    pub events: Vec<String>,
    /// `false` once disabled, through the API or after too many consecutive failures.
    pub is_active: bool,
    /// The full signing secret: only in the response that set it (create, a PATCH of
    /// `secret`, or a rotation). It keys `X-QR3-Signature`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub secret: Option<String>,
    /// The same secret in the form the Standard Webhooks libraries take: `whsec_` +
    /// base64 of its UTF-8 bytes. It verifies `webhook-signature`. Shown with `secret`,
    /// and only then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, example = "whsec_bXktc2VjcmV0LWtleS1taW4tMTYtY2hhcnM=")]
    pub secret_whsec: Option<String>,
    /// The secret's first four characters followed by `…` (U+2026).
    pub secret_hint: String,
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub created_at: String,
    #[schema(format = DateTime, example = "2026-03-15T10:00:00.000Z")]
    pub updated_at: String,
    /// When the webhook was disabled; `null` while it is active.
    #[schema(required = true, format = DateTime)]
    pub disabled_at: Option<String>,
    /// Why it was disabled; `null` while it is active.
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// The cap on deliveries per second; `null` when there is none.
    #[schema(required = true, minimum = 1, maximum = 10000)]
    pub max_per_second: Option<u32>,
    /// Only in the response of `rotate-secret`: until when the previous secret keeps
    /// signing `webhook-signature` beside the new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime, example = "2026-03-16T10:00:00.000Z")]
    pub previous_secret_expires_at: Option<String>,
}

impl Webhook {
    /// The wire form of a stored webhook; `secret` is given only by the responses that
    /// reveal it (and shows as `secret` and `secret_whsec`).
    pub fn from_store(webhook: qr3_store::Webhook, secret: Option<&WebhookSecret>) -> Self {
        Self {
            id: webhook.id.to_string(),
            url: webhook.url,
            events: webhook.events,
            is_active: webhook.is_active,
            secret: secret.map(|s| s.expose().to_owned()),
            secret_whsec: secret.map(WebhookSecret::whsec),
            secret_hint: webhook.secret_hint,
            created_at: webhook.created_at.to_string(),
            updated_at: webhook.updated_at.to_string(),
            disabled_at: webhook.disabled_at.map(|t| t.to_string()),
            disabled_reason: webhook.disabled_reason,
            max_per_second: webhook.max_per_second,
            previous_secret_expires_at: None,
        }
    }
}

/// Schema of one entry of `events`: an event type of SPEC Part A, or `*`. Built from
/// the domain's list so the document cannot drift from what the API accepts.
pub struct EventSubscription;

impl PartialSchema for EventSubscription {
    fn schema() -> RefOr<Schema> {
        let names = std::iter::once("*").chain(EventType::ALL.iter().map(|t| t.as_str()));
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names))
            .description(Some(
                "An event type, or `*` for every event except `webhook.ping`. \
                 `scan.created` is an alias of `qr.scanned`.",
            ))
            .into()
    }
}

impl ToSchema for EventSubscription {}

/// Schema of an event type as a delivery reports it.
pub struct EventTypeName;

impl PartialSchema for EventTypeName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(EventType::ALL.iter().map(|t| t.as_str())))
            .description(Some("An event type, as the platform published it."))
            .into()
    }
}

impl ToSchema for EventTypeName {
    fn name() -> std::borrow::Cow<'static, str> {
        "EventType".into()
    }
}
