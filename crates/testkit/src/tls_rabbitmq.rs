//! A RabbitMQ node with a TLS listener only (no plain AMQP), its certificate for
//! `localhost` signed by a CA made up for the test process. Started once per test
//! process on first use, beside the shared node: its own node name, ports (TLS and
//! distribution), data and log directories and configuration file, no plugins.
//! Stopped and deleted when the process ends (see [`crate::service`]).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::ca::TestCa;
use crate::service::{free_port, fresh_dir, quote, Service};

/// The running node and the CA file a client needs.
pub struct TlsRabbitMq {
    pub port: u16,
    /// The CA that signed the node's certificate (PEM).
    pub ca_file: PathBuf,
    _service: Service,
}

static SHARED: OnceLock<Result<TlsRabbitMq, String>> = OnceLock::new();

impl TlsRabbitMq {
    /// The process's node, started on the first call (blocking, for seconds: call it
    /// from `spawn_blocking` in async tests).
    pub fn shared() -> anyhow::Result<&'static TlsRabbitMq> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("cannot start the TLS RabbitMQ node: {e}"))
    }

    /// `amqps://guest:guest@localhost:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }

    fn start() -> anyhow::Result<Self> {
        let dir = fresh_dir("rabbittls")?;
        let ca = TestCa::new("qr3 test broker CA")?;
        let server = ca.issue(&["localhost"])?;
        let ca_file = dir.join("ca.pem");
        ca.write_cert(&ca_file)?;
        std::fs::write(dir.join("server.pem"), &server.cert_pem)?;
        std::fs::write(dir.join("server.key"), &server.key_pem)?;
        let port = free_port()?;
        let dist_port = free_port()?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {dir}/ca.pem\n\
                 ssl_options.certfile = {dir}/server.pem\n\
                 ssl_options.keyfile = {dir}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                dir = dir.display()
            ),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let node = format!("qr3tls{}@localhost", std::process::id());
        let d = |name: &str| quote(&dir.join(name).display().to_string());
        let env = [
            format!("RABBITMQ_NODENAME={}", quote(&node)),
            format!("RABBITMQ_DIST_PORT={dist_port}"),
            format!("RABBITMQ_CONFIG_FILE={}", d("rabbitmq.conf")),
            format!("RABBITMQ_CONF_ENV_FILE={}", d("rabbitmq-env.conf")),
            format!("RABBITMQ_ENABLED_PLUGINS_FILE={}", d("enabled_plugins")),
            format!("RABBITMQ_MNESIA_BASE={}", d("mnesia")),
            format!("RABBITMQ_LOG_BASE={}", d("log")),
            format!("RABBITMQ_PID_FILE={}", d("pid")),
            "RABBITMQ_LOGS=-".to_owned(),
        ]
        .join(" ");
        let server = std::env::var("QR3_TEST_RABBITMQ_SERVER")
            .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".into());
        let service = Service::start(
            &dir,
            &format!("env {env} {}", quote(&server)),
            "kill -TERM $!",
        )?;
        let node = Self {
            port,
            ca_file,
            _service: service,
        };
        node.wait_until_ready()?;
        Ok(node)
    }

    /// Waits until the node accepts an AMQP login over TLS.
    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tls = qr3_broker::BrokerTls::with_ca_file(&self.ca_file);
        let deadline = Instant::now() + Duration::from_secs(90);
        runtime.block_on(async {
            loop {
                match qr3_broker::tls::connect(&self.url(), "qr3-test-ready", &tls).await {
                    Ok(connection) => {
                        let _ = connection.close(200, "ready".into()).await;
                        return Ok(());
                    }
                    Err(error) if Instant::now() > deadline => {
                        bail!("{error}; node log: {}", self._service.log())
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }
}
