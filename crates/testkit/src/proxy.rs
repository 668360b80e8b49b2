//! A TCP proxy on 127.0.0.1 that lets a test take Postgres or RabbitMQ away from one
//! process and bring it back, without touching the shared servers other tests use.
//!
//! Point the process under test at [`TcpProxy::addr`]. While the proxy is closed it
//! closes every connection as soon as it is accepted, before a byte is exchanged, as a
//! stopped service behind a load balancer looks, so connecting fails at once;
//! [`TcpProxy::open`] starts forwarding to the real service, and [`TcpProxy::close`]
//! stops again and cuts every forwarded connection. The port stays bound throughout,
//! so no other test's socket can take it in between.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Decides from the first bytes a client sends whether to refuse its connection.
pub type Refusal = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// A loopback TCP proxy to a target service that can be opened and closed.
pub struct TcpProxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    refused: Arc<AtomicUsize>,
    refuse: Arc<std::sync::Mutex<Option<Refusal>>>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    /// A closed proxy to `target` (`host:port`, resolved now) on a free loopback port.
    pub async fn closed(target: &str) -> std::io::Result<Self> {
        let target = tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "target does not resolve")
            })?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, opened) = watch::channel(false);
        let refused = Arc::new(AtomicUsize::new(0));
        let refuse: Arc<std::sync::Mutex<Option<Refusal>>> = Arc::default();
        let accepting = tokio::spawn({
            let (refused, refuse) = (refused.clone(), refuse.clone());
            async move {
                // Dropped with this task when the proxy is, which cuts every connection.
                let mut connections = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            if !*opened.borrow() {
                                drop(client);
                                continue;
                            }
                            let rule = refuse
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            connections.spawn(forward(
                                client,
                                target,
                                rule,
                                refused.clone(),
                                opened.clone(),
                            ));
                        }
                        Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    }
                }
            }
        });
        Ok(Self {
            addr,
            open,
            refused,
            refuse,
            accepting,
        })
    }

    /// Refuses (closes without forwarding) every connection whose first bytes
    /// `refuse` rejects, like a server's access rules would.
    pub fn refusing(self, refuse: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        *self
            .refuse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(refuse));
        self
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections refused so far by the [`refusing`](Self::refusing) rule.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Starts forwarding new connections.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Stops forwarding: new connections are closed at once, and every forwarded one
    /// is cut.
    pub fn close(&self) {
        self.open.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    refuse: Option<Refusal>,
    refused: Arc<AtomicUsize>,
    mut opened: watch::Receiver<bool>,
) {
    let mut first = Vec::new();
    if let Some(refuse) = refuse {
        let mut buffer = vec![0; 8192];
        let Ok(n) = client.read(&mut buffer).await else {
            return;
        };
        buffer.truncate(n);
        if refuse(&buffer) {
            refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
        first = buffer;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    if upstream.write_all(&first).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = opened.wait_for(|open| !*open) => {}
    }
}

/// The database a Postgres client asks for in its startup message (the first bytes it
/// sends on a connection without TLS): `None` when the bytes are not a startup message
/// or name no database.
pub fn postgres_startup_database(first: &[u8]) -> Option<String> {
    // Int32 length, Int32 protocol version 3.0, then NUL-terminated key/value pairs.
    let version = first.get(4..8)?;
    if version != 196_608u32.to_be_bytes() {
        return None;
    }
    let mut fields = first.get(8..)?.split(|b| *b == 0);
    while let Some(key) = fields.next() {
        let value = fields.next()?;
        if key == b"database" {
            return String::from_utf8(value.to_vec()).ok();
        }
        if key.is_empty() {
            break;
        }
    }
    None
}
