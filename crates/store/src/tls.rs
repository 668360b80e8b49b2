//! How a `database.url` becomes a Postgres connection: libpq's `sslmode` and
//! `sslrootcert` parameters, on rustls.
//!
//! tokio-postgres parses the URL but knows only `disable`, `prefer` and `require`, and
//! no `sslrootcert`; [`DatabaseTarget::parse`] takes those two parameters out, parses
//! the rest with tokio-postgres, and builds the rustls configuration libpq's mode
//! means:
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `prefer` (default) | when the server offers it | not checked | not checked |
//! | `require` | always | checked only when `sslrootcert` is given | not checked |
//! | `verify-ca` | always | checked | not checked |
//! | `verify-full` | always | checked | checked |
//!
//! The chain is checked against `sslrootcert` (a PEM file) when given, else against
//! the system's roots plus Mozilla's (`sslrootcert=system` says so explicitly).
//! Every connection to Postgres goes through here: the pool, creating the database,
//! the maintenance connections of the tests and tools.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The name as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain first, then TLS; without a plain-then-TLS
            // retry in the driver, `prefer` is the closest that never fails where
            // `allow` would succeed.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// Where the certificates that a server's chain must lead to come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootSource {
    /// The system's roots plus Mozilla's (no `sslrootcert`, or `sslrootcert=system`).
    System,
    /// A PEM file (`sslrootcert=FILE`).
    File(String),
}

/// A parsed `database.url`: what tokio-postgres needs to connect, with TLS as the URL's
/// `sslmode` and `sslrootcert` say.
#[derive(Clone)]
pub struct DatabaseTarget {
    config: tokio_postgres::Config,
    mode: SslMode,
    tls: MakeRustlsConnect,
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config holds the password: only what helps reading a log.
        f.debug_struct("DatabaseTarget")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("sslmode", &self.mode)
            .finish()
    }
}

impl DatabaseTarget {
    /// Parses a Postgres URL (`postgres://…?sslmode=verify-full&sslrootcert=ca.pem`) or
    /// a key/value connection string (`host=… sslmode=require`), and reads the root
    /// certificates it names.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (rest, params) = take_tls_params(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .context("database.url is not a valid Postgres URL")?;
        let mode = match params.sslmode {
            Some(mode) => mode.parse().context("database.url")?,
            None => SslMode::Prefer,
        };
        let roots = match params.sslrootcert.as_deref() {
            None | Some("system") => RootSource::System,
            Some(path) => RootSource::File(path.to_owned()),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        // libpq: `require` with a root certificate given behaves like `verify-ca`.
        let check = match mode {
            SslMode::Disable | SslMode::Prefer => Check::Nothing,
            SslMode::Require if params.sslrootcert.is_none() => Check::Nothing,
            SslMode::Require | SslMode::VerifyCa => Check::Chain,
            SslMode::VerifyFull => Check::ChainAndName,
        };
        let tls = MakeRustlsConnect::new(client_config(check, &roots)?);
        Ok(Self { config, mode, tls })
    }

    /// The driver's view of the URL (hosts, user, database, options).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same server and options, another database (the `postgres` maintenance one).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut other = self.clone();
        other.config.dbname(dbname);
        other
    }

    /// The URL's `sslmode` (`prefer` when it names none).
    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The connector for [`tokio_postgres::Config::connect`] or a pool manager.
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// The database the URL names (Postgres defaults it to the user name).
    pub fn database_name(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_owned()
    }

    /// One connection, its driver running on a task of its own until the client is
    /// dropped. The error is the driver's, so that callers can read its SQLSTATE;
    /// [`DatabaseTarget::explain`] turns it into a sentence.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls()).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "database connection ended");
            }
        });
        Ok(client)
    }

    /// `error` (from connecting) with what it most likely means for this URL's TLS
    /// settings, for an error message.
    pub fn explain(&self, error: tokio_postgres::Error) -> anyhow::Error {
        // pg_hba.conf has only `hostssl` lines for this client.
        let refuses_plain = self.mode == SslMode::Disable
            && error.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            && error
                .as_db_error()
                .is_some_and(|db| db.message().contains("no encryption"));
        let tls_failed = error.to_string().contains("TLS");
        let error = anyhow::Error::new(error);
        if refuses_plain {
            error.context(
                "cannot connect to the database: the server accepts only TLS connections and database.url has sslmode=disable (use sslmode=require, verify-ca or verify-full)",
            )
        } else if tls_failed {
            error.context(format!(
                "cannot connect to the database over TLS (sslmode={})",
                self.mode
            ))
        } else {
            error.context(format!(
                "cannot connect to the database (sslmode={})",
                self.mode
            ))
        }
    }
}

/// What the client checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(check: Check, roots: &RootSource) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match check {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        Check::Chain | Check::ChainAndName => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
                    .build()
                    .context("cannot build the TLS certificate verifier for database.url")?;
            if check == Check::Chain {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            } else {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            }
        }
    };
    Ok(config)
}

fn root_store(source: &RootSource) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match source {
        RootSource::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!("database.url: cannot read sslrootcert {path:?} (PEM certificates)")
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                bail!("database.url: sslrootcert {path:?} holds no usable certificate");
            }
        }
        RootSource::System => {
            let native = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(native.certs);
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    Ok(store)
}

/// `sslmode=prefer` and `require` without a root certificate: encryption without
/// authentication, as libpq does. Handshake signatures are still verified.
#[derive(Debug)]
struct NoCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
/// webpki checks the name last, after the chain, so a name mismatch means the chain
/// was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The URL's `sslmode` and `sslrootcert`, taken out of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `url` into itself without `sslmode` and `sslrootcert`, and those two.
fn take_tls_params(url: &str) -> anyhow::Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        return take_from_key_values(url);
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => params.sslmode = Some(percent_decode(value)?),
            "sslrootcert" => params.sslrootcert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// The key/value form: `host=db sslmode='verify-full' sslrootcert=/etc/ca.pem`.
fn take_from_key_values(s: &str) -> anyhow::Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            bail!("database.url: `{key}` has no value");
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => bail!("database.url: unterminated quote in `{key}`"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        match key.as_str() {
            "sslmode" => params.sslmode = Some(value),
            "sslrootcert" => params.sslrootcert = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), params))
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("database.url: bad percent-encoding in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("database.url: `{s}` is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_taken_out() {
        let (rest, params) = take_tls_params(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, params) = take_tls_params("postgresql://db/app?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(params.sslmode.as_deref(), Some("require"));
        let (rest, params) = take_tls_params("postgres://db/app").unwrap();
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(params, TlsParams::default());
    }

    #[test]
    fn key_value_parameters_are_taken_out() {
        let (rest, params) = take_tls_params(
            "host=db user=u password='a b\\'c' sslmode=verify-ca sslrootcert = '/x y.pem'",
        )
        .unwrap();
        assert_eq!(rest, "host='db' user='u' password='a b\\'c'");
        assert_eq!(params.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/x y.pem"));
        let config = tokio_postgres::Config::from_str(&rest).unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn every_libpq_mode_parses_and_others_are_refused() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let target =
                DatabaseTarget::parse(&format!("postgres://db/app?sslmode={text}")).unwrap();
            assert_eq!(target.ssl_mode(), mode);
        }
        let default = DatabaseTarget::parse("postgres://db/app").unwrap();
        assert_eq!(default.ssl_mode(), SslMode::Prefer);
        let error = DatabaseTarget::parse("postgres://db/app?sslmode=strict").unwrap_err();
        assert!(
            format!("{error:#}").contains("sslmode `strict`"),
            "{error:#}"
        );
    }

    #[test]
    fn a_missing_root_certificate_file_is_a_clear_error() {
        let error = DatabaseTarget::parse(
            "postgres://db/app?sslmode=verify-full&sslrootcert=/nonexistent.pem",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot read sslrootcert \"/nonexistent.pem\""),
            "{error:#}"
        );
        // Not read at all when nothing checks the chain.
        DatabaseTarget::parse("postgres://db/app?sslmode=prefer&sslrootcert=/nonexistent.pem")
            .unwrap();
    }

    #[test]
    fn debug_hides_the_password() {
        let target = DatabaseTarget::parse("postgres://u:hunter2@db/app").unwrap();
        assert!(!format!("{target:?}").contains("hunter2"));
    }
}
