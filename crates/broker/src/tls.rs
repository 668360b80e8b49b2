//! How one broker connection is made: `amqp://` in the clear, `amqps://` over rustls,
//! trusting Mozilla's roots plus the CA certificates of `amqp.tls_ca_file` (PEM),
//! for a broker whose certificate a private CA signed.
//!
//! Everything that connects to RabbitMQ calls [`connect`] once per attempt (and per
//! node URL, where there are several), so TLS options are the same on every path.

use std::path::PathBuf;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use qr3_config::AmqpSettings;

/// The TLS options of broker connections. The default trusts Mozilla's roots only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    ca_file: Option<PathBuf>,
}

impl BrokerTls {
    /// The options `amqp.tls_ca_file` gives (empty: none).
    pub fn from_settings(amqp: &AmqpSettings) -> Self {
        let file = amqp.tls_ca_file.trim();
        if file.is_empty() {
            Self::default()
        } else {
            Self::with_ca_file(file)
        }
    }

    /// Also trust the CA certificates in `path` (PEM), read at each connection so that
    /// a renewed file is picked up on the next reconnect.
    pub fn with_ca_file(path: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: Some(path.into()),
        }
    }

    fn config(&self) -> lapin::Result<OwnedTLSConfig> {
        let cert_chain = match &self.ca_file {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|error| {
                std::io::Error::new(
                    error.kind(),
                    format!("amqp.tls_ca_file {}: {error}", path.display()),
                )
            })?),
        };
        Ok(OwnedTLSConfig {
            identity: None,
            cert_chain,
        })
    }
}

/// One connection attempt to `url`, named `name` in the broker's connection list. An
/// `amqps://` URL is TLS with `tls`'s trust; `amqp://` ignores `tls`.
pub async fn connect(url: &str, name: &str, tls: &BrokerTls) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    DefaultConnectionBuilder::new()?
        .with_uri_str(url.to_owned())
        .with_properties(props)
        .with_tls_config(tls.config()?)
        .connect()
        .await
}
