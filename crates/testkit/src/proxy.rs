//! A TCP proxy on 127.0.0.1 that lets a test take Postgres or RabbitMQ away from one
//! process and bring it back, without touching the shared servers other tests use.
//!
//! Point the process under test at [`TcpProxy::addr`]. While the proxy is closed
//! nothing listens there, so connecting fails at once with "connection refused", as if
//! the service were stopped; [`TcpProxy::open`] starts forwarding to the real service,
//! and [`TcpProxy::close`] stops listening again and cuts every forwarded connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Decides from the first bytes a client sends whether to refuse its connection.
pub type Refusal = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// A loopback TCP proxy to `target` that can be opened and closed.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    refuse: Option<Refusal>,
    refused: Arc<AtomicUsize>,
    accepting: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port`, resolved now) on a free loopback port, closed:
    /// nothing listens on [`addr`](Self::addr) until [`open`](Self::open).
    pub async fn closed(target: &str) -> std::io::Result<Self> {
        let target = tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "target does not resolve")
            })?;
        // Bind port 0 to have the OS pick a free port, then let it go: nothing listens
        // there until `open` binds it again.
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        Ok(Self {
            addr,
            target,
            refuse: None,
            refused: Arc::new(AtomicUsize::new(0)),
            accepting: Mutex::new(None),
        })
    }

    /// Refuses (closes without forwarding) every connection whose first bytes
    /// `refuse` rejects, like a server's access rules would.
    pub fn refusing(mut self, refuse: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        self.refuse = Some(Arc::new(refuse));
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

    /// Starts listening and forwarding. Does nothing when already open.
    pub async fn open(&self) -> std::io::Result<()> {
        if self.lock().is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        let (target, refuse, refused) = (self.target, self.refuse.clone(), self.refused.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task when the proxy closes, which cuts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let (refuse, refused) = (refuse.clone(), refused.clone());
                        connections.spawn(forward(client, target, refuse, refused));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.lock() = Some(task);
        Ok(())
    }

    /// Stops listening and cuts every forwarded connection.
    pub async fn close(&self) {
        let task = self.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.accepting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.lock().take() {
            task.abort();
        }
    }
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    refuse: Option<Refusal>,
    refused: Arc<AtomicUsize>,
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
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
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
