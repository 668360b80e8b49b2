//! A Postgres cluster that accepts only TLS connections (`hostssl` in `pg_hba.conf`),
//! its certificate signed by a CA made up for the test process. Started once per test
//! process on first use, on a free port, from `initdb`; stopped and deleted when the
//! process ends (see [`crate::service`]).
//!
//! The server certificate names `localhost` only, so `verify-full` to `localhost`
//! succeeds and to `127.0.0.1` fails on the name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ca::TestCa;
use crate::service::{free_port, fresh_dir, is_root, quote, Service};

/// The running cluster and the files a client needs.
pub struct TlsPostgres {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing the server has (PEM).
    pub other_ca_file: PathBuf,
    _service: Service,
}

static SHARED: OnceLock<Result<TlsPostgres, String>> = OnceLock::new();

impl TlsPostgres {
    /// The process's cluster, started on the first call (blocking: call it from
    /// `spawn_blocking` in async tests).
    pub fn shared() -> anyhow::Result<&'static TlsPostgres> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("cannot start the TLS Postgres cluster: {e}"))
    }

    /// A URL to its `postgres` database as user `postgres` through `host`, with `params`
    /// (`sslmode=…&sslrootcert=…`) appended.
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }

    fn start() -> anyhow::Result<Self> {
        let dir = fresh_dir("pgtls")?;
        let bin = bindir()?;
        let data = dir.join("data");
        let as_owner = if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.display().to_string()])
                .status()?;
            if !status.success() {
                bail!("cannot give {} to the postgres user", dir.display());
            }
            "setpriv --reuid=postgres --regid=postgres --init-groups ".to_owned()
        } else {
            String::new()
        };
        let initdb = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{as_owner}{initdb} -D {data} -U postgres -A trust -N -E UTF8 --locale=C",
                initdb = quote(&bin.join("initdb").display().to_string()),
                data = quote(&data.display().to_string()),
            ))
            .output()
            .context("cannot run initdb")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            );
        }

        let ca = TestCa::new("qr3 test CA")?;
        let other = TestCa::new("qr3 other test CA")?;
        let server = ca.issue(&["localhost"])?;
        let ca_file = dir.join("ca.pem");
        let other_ca_file = dir.join("other-ca.pem");
        ca.write_cert(&ca_file)?;
        other.write_cert(&other_ca_file)?;
        write_private(&data.join("server.crt"), &server.cert_pem)?;
        write_private(&data.join("server.key"), &server.key_pem)?;
        let port = free_port()?;
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
        conf.push_str(&format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 30\nshared_buffers = 16MB\n",
            dir.display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf)?;
        // TLS only, over TCP; the Unix socket (for nothing but the server's own use).
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.display().to_string()])
                .status()?;
        }
        let service = Service::start(
            &dir,
            &format!(
                "{as_owner}{postgres} -D {data}",
                postgres = quote(&bin.join("postgres").display().to_string()),
                data = quote(&data.display().to_string()),
            ),
            "kill -INT $!",
        )?;
        let cluster = Self {
            port,
            ca_file,
            other_ca_file,
            _service: service,
        };
        cluster.wait_until_ready()?;
        Ok(cluster)
    }
}

/// Where `initdb` and `postgres` are: `QR3_TEST_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else the `PATH`.
fn bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("QR3_TEST_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version);
    Ok(match newest {
        Some((_, bin)) => bin,
        None => PathBuf::new(),
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl TlsPostgres {
    /// Waits until the server accepts a TLS connection (it answers "starting up" for a
    /// moment after it opens its port).
    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = self.url("127.0.0.1", "sslmode=require");
        let deadline = Instant::now() + Duration::from_secs(60);
        runtime.block_on(async {
            loop {
                match qr3_store::connect_once(&url).await {
                    Ok(_) => return Ok(()),
                    Err(error) if Instant::now() > deadline => {
                        bail!("{error:#}; server log: {}", self._service.log())
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    }
}
