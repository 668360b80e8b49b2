//! What every handler shares: the store and the API's settings.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use qr3_broker::SharedPublisher;
use qr3_config::Settings;
use qr3_domain::{TargetPolicy, WebhookId, WorkspaceId};
use qr3_store::{Store, Webhook};

use crate::admin_auth::AdminTokens;
use crate::error::ApiError;
use crate::ratelimit::RateLimit;

/// The settings the API acts on, taken from [`Settings`] once at start-up.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted (`api.max_body_bytes`); 413 beyond.
    pub max_body_bytes: usize,
    /// Which webhook URLs are accepted (`api.require_https`,
    /// `delivery.allow_private_targets`).
    pub target_policy: TargetPolicy,
    /// How long `POST /v1/webhooks/{id}/ping` waits for the attempt (`api.ping_wait_ms`).
    pub ping_wait: Duration,
    /// How long a rotated-out secret keeps signing (`secrets.rotation_grace_ms`).
    pub secret_rotation_grace: Duration,
    /// Manual retries and recoveries per webhook and minute
    /// (`api.manual_requests_per_minute`).
    pub manual_requests_per_minute: u32,
    /// Events one recover request queues at most (`api.recover_max_events`).
    pub recover_max_events: u32,
    /// The operator tokens of `/admin/v1` (`api.admin_token`); `None` turns the admin
    /// API off.
    pub admin_tokens: Option<AdminTokens>,
    /// Requests per second one API key may make (`api.rate_limit_per_second`).
    pub rate_limit_per_second: u32,
    /// Requests one API key may make at once (`api.rate_limit_burst`).
    pub rate_limit_burst: u32,
    /// Longest a `/v1` request may take, body included (`api.request_timeout_ms`).
    pub request_timeout: Duration,
    /// The portal page's public URL (`portal.public_url`); `None`: from the `Host`.
    pub portal_url: Option<String>,
    /// The `Content-Security-Policy` of the portal's responses, its `frame-ancestors`
    /// from `portal.frame_ancestors`.
    pub portal_csp: String,
}

impl ApiConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            max_body_bytes: settings.api.max_body_bytes,
            target_policy: TargetPolicy {
                require_https: settings.api.require_https,
                allow_private: settings.delivery.allow_private_targets,
            },
            ping_wait: Duration::from_millis(settings.api.ping_wait_ms),
            secret_rotation_grace: settings.secrets.rotation_grace(),
            manual_requests_per_minute: settings.api.manual_requests_per_minute,
            recover_max_events: settings.api.recover_max_events,
            admin_tokens: AdminTokens::from_settings(&settings.api),
            rate_limit_per_second: settings.api.rate_limit_per_second,
            rate_limit_burst: settings.api.rate_limit_burst,
            request_timeout: settings.api.request_timeout(),
            portal_url: Some(settings.portal.public_url.clone()).filter(|url| !url.is_empty()),
            portal_csp: crate::portal::content_security_policy(&settings.portal.frame_ancestors),
        }
    }
}

/// Where the API publishes delivery jobs: pings, manual retries and recoveries.
pub struct JobChannel {
    pub publisher: SharedPublisher,
    pub deliveries_queue: String,
}

impl std::fmt::Debug for JobChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobChannel")
            .field("deliveries_queue", &self.deliveries_queue)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The webhook `id` of `workspace`: 404 when it does not exist there, whether it
    /// exists in another workspace or not at all.
    pub(crate) async fn webhook(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
    ) -> Result<Webhook, ApiError> {
        self.store
            .get_webhook(workspace, id)
            .await
            .context("reading a webhook")?
            .ok_or_else(ApiError::webhook_not_found)
    }
}

/// The state of the API router. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub config: Arc<ApiConfig>,
    pub jobs: Arc<JobChannel>,
    /// The callers' request buckets, shared by every clone (so by every request).
    pub(crate) rate_limit: Arc<RateLimit>,
}

impl ApiState {
    pub fn new(store: Store, config: ApiConfig, jobs: JobChannel) -> Self {
        let rate_limit = RateLimit::new(config.rate_limit_per_second, config.rate_limit_burst);
        Self {
            store,
            config: Arc::new(config),
            jobs: Arc::new(jobs),
            rate_limit: Arc::new(rate_limit),
        }
    }

    /// Connects to the broker lazily, on the first job published.
    pub fn from_settings(store: Store, settings: &Settings) -> Self {
        let jobs = JobChannel {
            publisher: SharedPublisher::new(settings.amqp.url.expose().clone(), "qr3-api")
                .with_tls(qr3_broker::BrokerTls::from_settings(&settings.amqp)),
            deliveries_queue: qr3_broker::Topology::from_settings(settings).deliveries_queue(),
        };
        Self::new(store, ApiConfig::from_settings(settings), jobs)
    }
}
