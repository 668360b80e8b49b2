//! Configuration of every qr3 webhooks role, layered as SPEC "Stable operator interface"
//! says: built-in defaults, then an optional TOML file, then `QR3__SECTION__KEY`
//! environment variables. Validated once at start-up; secrets never print.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use sha2::Digest;

/// The built-in defaults, commented, shipped inside the binary.
pub const DEFAULTS_TOML: &str = include_str!("default.toml");

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A value that must never appear in logs: `Debug` prints `<redacted>`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub api: ApiSettings,
    pub metrics: MetricsSettings,
    pub ingest: IngestSettings,
    pub delivery: DeliverySettings,
    pub retention: RetentionSettings,
    pub secrets: SecretsSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
    pub portal: PortalSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password, hence redacted.
    pub url: Redacted<String>,
    pub pool_size: usize,
    pub migrate_on_start: MigrateOnStart,
}

/// Whether a role migrates the database at start-up (`database.migrate_on_start`):
/// `true`, `false`, or `"auto"` (only `all`, the single-process mode for local use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateOnStart {
    /// Migrate when the process runs every role (`all`); a separate role does not.
    Auto,
    Always,
    Never,
}

impl MigrateOnStart {
    /// Whether a process migrates at start-up, given whether it runs every role.
    pub fn applies(self, runs_every_role: bool) -> bool {
        match self {
            MigrateOnStart::Auto => runs_every_role,
            MigrateOnStart::Always => true,
            MigrateOnStart::Never => false,
        }
    }
}

impl<'de> Deserialize<'de> for MigrateOnStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(MigrateOnStart::Always),
            Raw::Flag(false) => Ok(MigrateOnStart::Never),
            Raw::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
                "auto" => Ok(MigrateOnStart::Auto),
                "true" => Ok(MigrateOnStart::Always),
                "false" => Ok(MigrateOnStart::Never),
                _ => Err(serde::de::Error::custom(format!(
                    "database.migrate_on_start: `{text}` is not true, false or \"auto\""
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// One broker URL, or the nodes of a cluster: a TOML string or array of strings, or
    /// from `QR3__AMQP__URL` a comma-separated list. Kept as one comma-separated string
    /// (`qr3_broker::Nodes` splits it); may hold passwords, hence redacted.
    #[serde(deserialize_with = "amqp_urls")]
    pub url: Redacted<String>,
    pub events_exchange: String,
    pub prefix: String,
    pub prefetch: u16,
    pub delivery_limit: u32,
    /// CA certificates (PEM file) trusted for `amqps://` besides Mozilla's roots; empty
    /// for none.
    pub tls_ca_file: String,
}

impl AmqpSettings {
    /// The node URLs of `amqp.url`, in the order given.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }
}

/// `amqp.url`: a string (itself possibly comma-separated) or an array of strings,
/// joined into one comma-separated list.
fn amqp_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Redacted<String>, D::Error> {
    Ok(Redacted::new(string_list(d)?.join(",")))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub require_https: bool,
    pub ping_wait_ms: u64,
    pub manual_requests_per_minute: u32,
    pub recover_max_events: u32,
    /// The operator tokens of `/admin/v1` (several during a rotation); empty when the
    /// admin API is off. From a TOML string or array, or from `QR3__API__ADMIN_TOKEN`
    /// as a comma-separated list.
    #[serde(default, deserialize_with = "admin_tokens")]
    pub admin_token: Redacted<Vec<String>>,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub header_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_connections: usize,
}

impl ApiSettings {
    /// The shortest admin token accepted, in characters.
    pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
    /// The longest admin token accepted, in characters.
    pub const MAX_ADMIN_TOKEN_CHARS: usize = 512;

    /// Whether `/admin/v1` is served: at least one admin token is configured.
    pub fn admin_enabled(&self) -> bool {
        !self.admin_token.expose().is_empty()
    }

    /// The most `api.max_connections` accepted.
    pub const MAX_CONNECTIONS: usize = 1_000_000;

    /// How long a client may take to send a request's headers.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// How long a request may take from its headers to the response.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The customer portal (`/portal/`) and its sessions (`POST /v1/portal-sessions`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSettings {
    /// The absolute URL of the portal page as customers' browsers reach it (ending in
    /// `/portal/`); a session's `url` is this plus `#<token>`. Empty: built from the
    /// request's `Host` header as `http://<host>/portal/` (local use).
    pub public_url: String,
    /// Origins allowed to embed the portal in a frame (`frame-ancestors` of its
    /// Content-Security-Policy), such as `https://app.qr3.app`. Empty: no framing.
    #[serde(deserialize_with = "string_list")]
    pub frame_ancestors: Vec<String>,
}

impl PortalSettings {
    /// The longest a portal session may last, and the longest `expires_in` accepted.
    pub const MAX_SESSION: Duration = Duration::from_secs(86_400);
}

/// A list setting: a TOML string or array of strings, or from the environment a
/// comma-separated string; every item is split at commas and blank entries are dropped.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Items {
        List(Vec<String>),
        One(String),
    }
    let items = match Items::deserialize(d)? {
        Items::List(items) => items,
        Items::One(item) => vec![item],
    };
    Ok(items
        .iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Whether `origin` is a CSP host source naming one web origin: `http` or `https`, a
/// host (its first label may be `*`), an optional port, nothing else.
fn is_frame_ancestor(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Admin tokens: a TOML string or array of strings, or from the environment a
/// comma-separated string (with `with_list_parse_key`, a list already). Blank entries
/// are dropped, so `QR3__API__ADMIN_TOKEN=""` leaves the admin API off.
fn admin_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Redacted<Vec<String>>, D::Error> {
    Ok(Redacted::new(string_list(d)?))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub max_event_bytes: usize,
    /// Deprecated and ignored: ingest reads subscriptions fresh for every batch, so a
    /// webhook created or re-enabled before an event is published gets it. Still
    /// accepted so existing configuration files keep loading.
    pub subscription_cache_ms: u64,
    pub concurrency: usize,
    pub jobs_per_message: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    #[serde(deserialize_with = "delays")]
    pub retry_delays_ms: Vec<u64>,
    pub timeout_ms: u64,
    pub disable_after_failures: u32,
    pub concurrency: usize,
    pub max_in_flight_per_webhook: usize,
    pub defer_ms: u64,
    pub allow_private_targets: bool,
    pub webhook_cache_ms: u64,
    pub log_batch_size: usize,
    pub log_flush_ms: u64,
    pub response_body_bytes: usize,
    /// Deprecated and ignored: `max_per_second` now holds across every sender through
    /// Postgres. Still accepted so that old configuration files load.
    #[serde(default)]
    pub rate_limit_share: Option<u32>,
    pub job_failure_limit: u32,
    /// Deprecated and ignored: a job waits for its webhook's in-flight slot as long as
    /// the webhook is expected to serve it within `defer_ms`. Still accepted so that
    /// old configuration files load.
    #[serde(default)]
    pub admission_wait_ms: Option<u64>,
    pub breaker_timeouts: u32,
}

impl DeliverySettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The first wait of a parked job (`defer_ms`).
    pub fn defer(&self) -> Duration {
        Duration::from_millis(self.defer_ms)
    }

    /// Attempts a delivery gets at most: the first, plus one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        self.retry_delays_ms.len() as u32 + 1
    }

    /// The delay before attempt `next_attempt` (2, 3, …), or `None` when there is none.
    pub fn delay_before(&self, next_attempt: u32) -> Option<Duration> {
        let index = usize::try_from(next_attempt.checked_sub(2)?).ok()?;
        self.retry_delays_ms
            .get(index)
            .map(|ms| Duration::from_millis(*ms))
    }
}

/// A list of delays: a TOML array, or from the environment a comma-separated string
/// (`1000,5000`) or a single number (`1000`), which the environment source cannot tell
/// from a scalar.
fn delays<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Number(u64),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Delays {
        List(Vec<Item>),
        One(Item),
    }
    let items = match Delays::deserialize(d)? {
        Delays::List(items) => items,
        Delays::One(item) => vec![item],
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Number(ms) => out.push(ms),
            Item::Text(text) => {
                for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    out.push(part.parse::<u64>().map_err(|_| {
                        serde::de::Error::custom(format!(
                            "delivery.retry_delays_ms: `{part}` is not a number of milliseconds"
                        ))
                    })?);
                }
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub delivery_log_days: u32,
    pub maintain_every_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    #[serde(default)]
    pub encryption_key: Option<Redacted<String>>,
    pub allow_insecure_dev_key: bool,
    pub rotation_grace_ms: u64,
}

impl SecretsSettings {
    /// The longest `secrets.rotation_grace_ms` accepted: 365 days.
    pub const MAX_ROTATION_GRACE_MS: u64 = 365 * 24 * 3600 * 1000;

    /// How long a rotated-out secret keeps signing `webhook-signature`.
    pub fn rotation_grace(&self) -> Duration {
        Duration::from_millis(self.rotation_grace_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace_period_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// The 32-byte key that encrypts webhook secrets at rest.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// The `QR3__SECTION__KEY` environment variables as a configuration source.
fn environment() -> config::Environment {
    config::Environment::with_prefix("QR3")
        .prefix_separator("__")
        .separator("__")
        .list_separator(",")
        .with_list_parse_key("delivery.retry_delays_ms")
        .with_list_parse_key("api.admin_token")
        .with_list_parse_key("portal.frame_ancestors")
        .try_parsing(true)
}

impl Settings {
    /// Defaults, then `file` if given, then the `QR3__…` environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(environment());
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults, then `vars` read as the `QR3__…` environment of a child process would
    /// be (unvalidated): the settings a process started with that environment runs with.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let vars: config::Map<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULTS_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(environment().source(Some(vars)))
            .build()?
            .try_deserialize()?)
    }

    /// The built-in defaults alone (no file, no environment): the base tests start from.
    pub fn defaults() -> Self {
        config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULTS_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("the embedded defaults are valid (checked by a unit test)")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.database.pool_size == 0 {
            return invalid("database.pool_size must be at least 1");
        }
        if self.amqp.prefix.is_empty()
            || !self
                .amqp
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return invalid(
                "amqp.prefix must be non-empty and use only letters, digits, '.', '_' and '-'",
            );
        }
        let urls = self.amqp.urls();
        if urls.is_empty() {
            return invalid("amqp.url must name at least one node");
        }
        for (n, url) in urls.iter().enumerate() {
            // The URL itself may hold a password: name its position only.
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError::Invalid(format!(
                    "amqp.url entry {} must start with amqp:// or amqps://",
                    n + 1
                )));
            }
        }
        if self.amqp.events_exchange.is_empty() {
            return invalid("amqp.events_exchange must not be empty");
        }
        if self.delivery.retry_delays_ms.contains(&0) {
            return invalid("delivery.retry_delays_ms entries must be positive");
        }
        if self.delivery.timeout_ms == 0 {
            return invalid("delivery.timeout_ms must be positive");
        }
        if self.delivery.disable_after_failures == 0 {
            return invalid("delivery.disable_after_failures must be at least 1");
        }
        if self.delivery.concurrency == 0 || self.delivery.concurrency > usize::from(u16::MAX) {
            return invalid("delivery.concurrency must be between 1 and 65535");
        }
        if self.delivery.max_in_flight_per_webhook == 0 || self.delivery.defer_ms == 0 {
            return invalid(
                "delivery.max_in_flight_per_webhook and delivery.defer_ms must be positive",
            );
        }
        if self.delivery.response_body_bytes > 65536 {
            return invalid("delivery.response_body_bytes must be at most 65536");
        }
        let ca_file = self.amqp.tls_ca_file.trim();
        if !ca_file.is_empty() {
            if let Err(error) = std::fs::metadata(ca_file) {
                return Err(ConfigError::Invalid(format!(
                    "amqp.tls_ca_file {ca_file}: {error}"
                )));
            }
        }
        if self.amqp.delivery_limit < 2 {
            return invalid("amqp.delivery_limit must be at least 2");
        }
        if self.delivery.job_failure_limit == 0 {
            return invalid("delivery.job_failure_limit must be at least 1");
        }
        if self.retention.maintain_every_ms == 0 {
            return invalid("retention.maintain_every_ms must be positive");
        }
        if self.delivery.breaker_timeouts == 0 {
            return invalid("delivery.breaker_timeouts must be positive");
        }
        if self.api.recover_max_events == 0 || self.api.recover_max_events > 100_000 {
            return invalid("api.recover_max_events must be between 1 and 100000");
        }
        self.validate_admin_tokens()?;
        if self.api.manual_requests_per_minute == 0 {
            return invalid("api.manual_requests_per_minute must be at least 1");
        }
        if self.api.rate_limit_per_second == 0 || self.api.rate_limit_burst == 0 {
            return invalid(
                "api.rate_limit_per_second and api.rate_limit_burst must be at least 1",
            );
        }
        if self.api.header_read_timeout_ms == 0 {
            return invalid("api.header_read_timeout_ms must be positive");
        }
        if self.api.request_timeout_ms <= self.api.ping_wait_ms {
            return invalid("api.request_timeout_ms must be longer than api.ping_wait_ms");
        }
        if !(1..=ApiSettings::MAX_CONNECTIONS).contains(&self.api.max_connections) {
            return invalid("api.max_connections must be between 1 and 1000000");
        }
        if self.delivery.log_batch_size == 0 {
            return invalid("delivery.log_batch_size must be at least 1");
        }
        if self.ingest.concurrency == 0 || self.amqp.prefetch == 0 {
            return invalid("ingest.concurrency and amqp.prefetch must be at least 1");
        }
        if !(1..=1000).contains(&self.ingest.jobs_per_message) {
            return invalid("ingest.jobs_per_message must be between 1 and 1000");
        }
        if self.retention.delivery_log_days == 0 {
            return invalid("retention.delivery_log_days must be at least 1");
        }
        if !(1..=SecretsSettings::MAX_ROTATION_GRACE_MS).contains(&self.secrets.rotation_grace_ms) {
            return invalid(
                "secrets.rotation_grace_ms must be between 1 and 31536000000 (365 days)",
            );
        }
        self.encryption_key()?;
        self.validate_portal()?;
        Ok(())
    }

    /// The portal's URL is absolute http(s) without query or fragment (a session's
    /// token is appended as the fragment), and its frame ancestors are plain origins
    /// (they go into a Content-Security-Policy header as they are).
    fn validate_portal(&self) -> Result<(), ConfigError> {
        let url = &self.portal.public_url;
        if !url.is_empty()
            && (!(url.starts_with("https://") || url.starts_with("http://"))
                || url.contains(['#', '?', ' ', '"', '<', '>']))
        {
            return Err(ConfigError::Invalid(
                "portal.public_url must be an absolute http(s) URL without query or fragment, \
                 e.g. https://webhooks.example.com/portal/"
                    .into(),
            ));
        }
        for origin in &self.portal.frame_ancestors {
            if !is_frame_ancestor(origin) {
                return Err(ConfigError::Invalid(format!(
                    "portal.frame_ancestors: `{origin}` is not an origin such as \
                     https://app.example.com (scheme, host, optional port; no path)"
                )));
            }
        }
        Ok(())
    }

    /// Each admin token is long enough to resist guessing, fits an `Authorization`
    /// header, and can never be mistaken for a workspace API key (`qr3k_…`).
    fn validate_admin_tokens(&self) -> Result<(), ConfigError> {
        let (min, max) = (
            ApiSettings::MIN_ADMIN_TOKEN_CHARS,
            ApiSettings::MAX_ADMIN_TOKEN_CHARS,
        );
        for (i, token) in self.api.admin_token.expose().iter().enumerate() {
            // Messages name the token by position, never by value.
            let n = i + 1;
            if !(min..=max).contains(&token.len()) {
                return Err(ConfigError::Invalid(format!(
                    "api.admin_token: token {n} must be {min} to {max} characters \
                     (generate one with `openssl rand -hex 32`)"
                )));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(ConfigError::Invalid(format!(
                    "api.admin_token: token {n} may hold only printable ASCII without \
                     spaces or commas"
                )));
            }
            if token.starts_with("qr3k_") {
                return Err(ConfigError::Invalid(format!(
                    "api.admin_token: token {n} must not start with `qr3k_`, the prefix of \
                     workspace API keys"
                )));
            }
        }
        Ok(())
    }

    /// The key for secrets at rest; refuses to run without one unless the insecure
    /// development key is explicitly allowed.
    pub fn encryption_key(&self) -> Result<EncryptionKey, ConfigError> {
        match &self.secrets.encryption_key {
            Some(encoded) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded.expose().trim())
                    .map_err(|_| {
                        ConfigError::Invalid("secrets.encryption_key must be base64".into())
                    })?;
                let key: [u8; 32] = bytes.try_into().map_err(|_| {
                    ConfigError::Invalid("secrets.encryption_key must decode to 32 bytes".into())
                })?;
                Ok(EncryptionKey(key))
            }
            None if self.secrets.allow_insecure_dev_key => {
                // A well-known key: anyone can decrypt what it protects. Development only.
                Ok(EncryptionKey(
                    sha2::Sha256::digest(b"qr3-webhooks insecure development key").into(),
                ))
            }
            None => Err(ConfigError::Invalid(
                "secrets.encryption_key is not set (generate one with `openssl rand -base64 32`, \
                 or set secrets.allow_insecure_dev_key = true for local development)"
                    .into(),
            )),
        }
    }

    /// Whether secrets are protected by the well-known development key.
    pub fn uses_insecure_dev_key(&self) -> bool {
        self.secrets.encryption_key.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_a_child_environment() {
        let s = Settings::from_vars([
            ("QR3__AMQP__PREFIX", "qr3_x"),
            ("QR3__DELIVERY__RETRY_DELAYS_MS", "500,1500"),
            ("OTHER", "ignored"),
        ])
        .unwrap();
        assert_eq!(s.amqp.prefix, "qr3_x");
        assert_eq!(s.delivery.retry_delays_ms, vec![500, 1500]);
        assert_eq!(
            s.amqp.events_exchange,
            Settings::defaults().amqp.events_exchange
        );
    }

    #[test]
    fn embedded_defaults_match_the_spec() {
        let s = Settings::defaults();
        assert_eq!(
            s.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/qr3"
        );
        assert_eq!(s.amqp.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.amqp.events_exchange, "qr3.events");
        assert_eq!(s.amqp.prefix, "qr3");
        assert_eq!(s.api.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.metrics.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(s.delivery.retry_delays_ms, [60_000, 300_000]);
        assert_eq!(s.delivery.timeout_ms, 10_000);
        assert_eq!(s.delivery.disable_after_failures, 10);
        assert!(!s.delivery.allow_private_targets);
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.delivery.max_attempts(), 3);
        assert_eq!(s.delivery.delay_before(2), Some(Duration::from_secs(60)));
        assert_eq!(s.delivery.delay_before(3), Some(Duration::from_secs(300)));
        assert_eq!(s.delivery.delay_before(4), None);
        assert_eq!(s.secrets.rotation_grace(), Duration::from_secs(24 * 3600));
        assert_eq!(s.database.migrate_on_start, MigrateOnStart::Auto);
    }

    #[test]
    fn an_old_file_with_rate_limit_share_still_loads() {
        let path =
            std::env::temp_dir().join(format!("qr3-config-share-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[delivery]\nrate_limit_share = 4\nadmission_wait_ms = 250\n[secrets]\nallow_insecure_dev_key = true\n",
        )
        .unwrap();
        let loaded = Settings::load(Some(&path));
        std::fs::remove_file(&path).unwrap();
        let settings = loaded.expect("a deprecated key is accepted");
        assert_eq!(settings.delivery.rate_limit_share, Some(4));
        assert_eq!(settings.delivery.admission_wait_ms, Some(250));
        assert_eq!(settings.delivery.breaker_timeouts, 3);
    }

    #[test]
    fn migrate_on_start_is_a_flag_or_auto() {
        let parse = |value: &str| {
            config::Config::builder()
                .add_source(config::File::from_str(
                    DEFAULTS_TOML,
                    config::FileFormat::Toml,
                ))
                .add_source(config::File::from_str(
                    &format!("[database]\nmigrate_on_start = {value}"),
                    config::FileFormat::Toml,
                ))
                .build()
                .and_then(|c| c.try_deserialize::<Settings>())
                .map(|s| s.database.migrate_on_start)
        };
        assert_eq!(parse("true").unwrap(), MigrateOnStart::Always);
        assert_eq!(parse("false").unwrap(), MigrateOnStart::Never);
        assert_eq!(parse("\"auto\"").unwrap(), MigrateOnStart::Auto);
        assert_eq!(parse("\"false\"").unwrap(), MigrateOnStart::Never);
        assert!(parse("\"sometimes\"").is_err());
        assert!(MigrateOnStart::Auto.applies(true));
        assert!(!MigrateOnStart::Auto.applies(false));
        assert!(MigrateOnStart::Always.applies(false));
        assert!(!MigrateOnStart::Never.applies(true));
    }

    #[test]
    fn rotation_grace_must_be_positive_and_at_most_a_year() {
        let mut s = Settings::defaults();
        s.secrets.allow_insecure_dev_key = true;
        assert!(s.validate().is_ok());
        for bad in [0, SecretsSettings::MAX_ROTATION_GRACE_MS + 1] {
            s.secrets.rotation_grace_ms = bad;
            assert!(
                matches!(s.validate(), Err(ConfigError::Invalid(m)) if m.contains("rotation_grace_ms")),
                "{bad}"
            );
        }
        s.secrets.rotation_grace_ms = 300;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn api_limits_default_and_are_validated() {
        let mut s = Settings::defaults();
        s.secrets.allow_insecure_dev_key = true;
        assert_eq!(s.api.rate_limit_per_second, 50);
        assert_eq!(s.api.rate_limit_burst, 100);
        assert_eq!(s.api.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(s.api.request_timeout(), Duration::from_secs(30));
        assert_eq!(s.api.max_connections, 4096);
        assert!(s.validate().is_ok());
        let invalid = |change: fn(&mut Settings), key: &str| {
            let mut bad = s.clone();
            change(&mut bad);
            assert!(
                matches!(bad.validate(), Err(ConfigError::Invalid(m)) if m.contains(key)),
                "{key}"
            );
        };
        invalid(|s| s.api.rate_limit_per_second = 0, "rate_limit_per_second");
        invalid(|s| s.api.rate_limit_burst = 0, "rate_limit_burst");
        invalid(
            |s| s.api.header_read_timeout_ms = 0,
            "header_read_timeout_ms",
        );
        invalid(
            |s| s.api.request_timeout_ms = s.api.ping_wait_ms,
            "request_timeout_ms",
        );
        invalid(|s| s.api.max_connections = 0, "max_connections");
        invalid(
            |s| s.api.max_connections = ApiSettings::MAX_CONNECTIONS + 1,
            "max_connections",
        );
    }

    #[test]
    fn refuses_to_start_without_a_key() {
        let s = Settings::defaults();
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid(m)) if m.contains("encryption_key"))
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let mut s = Settings::defaults();
        s.database.url = Redacted::new("postgres://user:hunter2@db/qr3".into());
        s.secrets.encryption_key = Some(Redacted::new("c2VjcmV0".into()));
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("c2VjcmV0"));
    }

    fn with_admin_tokens(tokens: &[&str]) -> Settings {
        let mut s = Settings::defaults();
        s.secrets.allow_insecure_dev_key = true;
        s.api.admin_token = Redacted::new(tokens.iter().map(|t| t.to_string()).collect());
        s
    }

    #[test]
    fn a_broker_ca_file_that_is_not_there_stops_the_start() {
        let mut s = Settings::defaults();
        s.secrets.allow_insecure_dev_key = true;
        assert!(s.amqp.tls_ca_file.is_empty());
        s.amqp.tls_ca_file = "/nonexistent/ca.pem".into();
        let error = s.validate().unwrap_err().to_string();
        assert!(
            error.contains("amqp.tls_ca_file /nonexistent/ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn the_admin_api_is_off_by_default() {
        let s = Settings::defaults();
        assert!(s.api.admin_token.expose().is_empty());
        assert!(!s.api.admin_enabled());
    }

    #[test]
    fn admin_tokens_are_long_printable_and_not_api_keys() {
        let good = "a".repeat(32);
        assert!(with_admin_tokens(&[&good, &"b".repeat(512)])
            .validate()
            .is_ok());
        let long = "c".repeat(513);
        let prefixed = format!("qr3k_{}", "d".repeat(40));
        let spaced = format!("{} x", "e".repeat(40));
        for (bad, expected) in [
            ("short", "32 to 512 characters"),
            (long.as_str(), "32 to 512 characters"),
            (prefixed.as_str(), "must not start with `qr3k_`"),
            (spaced.as_str(), "printable ASCII"),
        ] {
            let error = with_admin_tokens(&[&good, bad])
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("token 2") && error.contains(expected),
                "{error}"
            );
            assert!(!error.contains(bad), "the token is not echoed: {error}");
        }
    }

    #[test]
    fn admin_tokens_read_from_a_string_a_list_or_a_comma_separated_string() {
        let from_toml = |toml: &str| -> Vec<String> {
            config::Config::builder()
                .add_source(config::File::from_str(
                    DEFAULTS_TOML,
                    config::FileFormat::Toml,
                ))
                .add_source(config::File::from_str(toml, config::FileFormat::Toml))
                .build()
                .and_then(|c| c.try_deserialize::<Settings>())
                .unwrap()
                .api
                .admin_token
                .expose()
                .clone()
        };
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        assert_eq!(
            from_toml(&format!("[api]\nadmin_token = \"{a}\"")),
            std::slice::from_ref(&a)
        );
        assert_eq!(
            from_toml(&format!("[api]\nadmin_token = [\"{a}\", \"{b}\"]")),
            [a.clone(), b.clone()]
        );
        assert_eq!(
            from_toml(&format!("[api]\nadmin_token = \"{a}, {b}\"")),
            [a.clone(), b.clone()]
        );
        assert!(from_toml("[api]\nadmin_token = \"\"").is_empty());
    }

    #[test]
    fn portal_frame_ancestors_are_origins_from_a_list_or_the_environment() {
        let from_env = |value: &str| -> Settings {
            let vars = [("QR3__PORTAL__FRAME_ANCESTORS".to_owned(), value.to_owned())];
            config::Config::builder()
                .add_source(config::File::from_str(
                    DEFAULTS_TOML,
                    config::FileFormat::Toml,
                ))
                .add_source(environment().source(Some(vars.into_iter().collect())))
                .build()
                .and_then(|c| c.try_deserialize::<Settings>())
                .unwrap()
        };
        let s = from_env("https://app.qr3.app, http://localhost:3000");
        assert_eq!(
            s.portal.frame_ancestors,
            ["https://app.qr3.app", "http://localhost:3000"]
        );
        assert!(Settings::defaults().portal.frame_ancestors.is_empty());
        for good in [
            "https://app.qr3.app",
            "https://*.qr3.app",
            "http://127.0.0.1:8080",
        ] {
            assert!(is_frame_ancestor(good), "{good}");
        }
        for bad in [
            "app.qr3.app",
            "https://app.qr3.app/",
            "https://app.qr3.app; script-src *",
            "'self'",
            "*",
            "https://",
            "https://a..b",
            "https://a:port",
            "javascript:alert(1)",
        ] {
            assert!(!is_frame_ancestor(bad), "{bad}");
        }
        let mut s = Settings::defaults();
        s.secrets.allow_insecure_dev_key = true;
        s.portal.frame_ancestors = vec!["https://a.example/ x".into()];
        assert!(s.validate().is_err());
        s.portal.frame_ancestors = vec![];
        s.portal.public_url = "webhooks.example.com/portal/".into();
        assert!(s.validate().is_err());
        s.portal.public_url = "https://webhooks.example.com/portal/".into();
        assert!(s.validate().is_ok());
    }

    #[test]
    fn admin_tokens_read_from_the_environment_comma_separated() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let from_env = |value: &str| -> Vec<String> {
            let vars = [("QR3__API__ADMIN_TOKEN".to_owned(), value.to_owned())];
            config::Config::builder()
                .add_source(config::File::from_str(
                    DEFAULTS_TOML,
                    config::FileFormat::Toml,
                ))
                .add_source(environment().source(Some(vars.into_iter().collect())))
                .build()
                .and_then(|c| c.try_deserialize::<Settings>())
                .unwrap()
                .api
                .admin_token
                .expose()
                .clone()
        };
        assert_eq!(from_env(&a), std::slice::from_ref(&a));
        assert_eq!(from_env(&format!("{a},{b}")), [a.clone(), b.clone()]);
        assert!(from_env("").is_empty());
    }

    #[test]
    fn admin_tokens_do_not_print() {
        let s = with_admin_tokens(&[&"s3cr3t".repeat(8)]);
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn key_must_be_32_bytes_of_base64() {
        let mut s = Settings::defaults();
        s.secrets.encryption_key = Some(Redacted::new("dG9vLXNob3J0".into()));
        assert!(s.encryption_key().is_err());
        s.secrets.encryption_key = Some(Redacted::new(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        ));
        assert!(s.encryption_key().is_ok());
    }

    /// Settings from the defaults, a TOML snippet and `QR3__…` variables, validated.
    fn amqp_from(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULTS_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(
                "[secrets]\nallow_insecure_dev_key = true",
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .add_source(environment().source(Some(vars)))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn amqp_url_reads_one_node_a_toml_array_or_a_comma_separated_list() {
        let (a, b, c) = (
            "amqp://u:p@10.0.0.1:5672/%2f",
            "amqp://u:p@10.0.0.2:5672/%2f",
            "amqps://u:p@10.0.0.3:5671/%2f",
        );
        let urls =
            |s: Settings| -> Vec<String> { s.amqp.urls().into_iter().map(str::to_owned).collect() };
        assert_eq!(
            urls(amqp_from(&format!("[amqp]\nurl = \"{a}\""), &[]).unwrap()),
            [a]
        );
        assert_eq!(
            urls(amqp_from(&format!("[amqp]\nurl = [\"{a}\", \"{b}\", \"{c}\"]"), &[]).unwrap()),
            [a, b, c]
        );
        assert_eq!(
            urls(amqp_from(&format!("[amqp]\nurl = \"{a}, {b}\""), &[]).unwrap()),
            [a, b]
        );
        // The environment overrides the file, comma-separated.
        let from_env = amqp_from(
            &format!("[amqp]\nurl = \"{a}\""),
            &[("QR3__AMQP__URL", &format!("{b},{c}"))],
        )
        .unwrap();
        assert_eq!(urls(from_env.clone()), [b, c]);
        assert_eq!(from_env.amqp.url.expose(), &format!("{b},{c}"));
        assert_eq!(urls(amqp_from("", &[("QR3__AMQP__URL", a)]).unwrap()), [a]);
    }

    #[test]
    fn amqp_url_entries_must_be_amqp_urls_and_errors_do_not_show_them() {
        for bad in [
            "[amqp]\nurl = []",
            "[amqp]\nurl = \" , \"",
            "[amqp]\nurl = [\"amqp://u:p@h:1/%2f\", \"http://u:hunter2@h:2/\"]",
        ] {
            let error = amqp_from(bad, &[]).unwrap_err().to_string();
            assert!(error.contains("amqp.url"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let error = amqp_from("", &[("QR3__AMQP__URL", "amqp://h:1/%2f,h2:5672")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("entry 2"), "{error}");
        let s = amqp_from("", &[("QR3__AMQP__URL", "amqp://u:hunter2@h:1/%2f")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
