//! A receiver that misbehaves on demand, written on raw TCP so it can do what a
//! well-behaved HTTP server never would: hang, drop the connection mid-response, or
//! answer with a body far larger than anyone asked for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the receiver answers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Status500,
    /// Never answers (past the sender's timeout).
    Hang,
    /// Closes the connection in the middle of the status line.
    CloseMidResponse,
    /// 200 with a 32 MiB body.
    HugeBody,
    /// 302 elsewhere.
    Redirect,
}

/// One request: event id, attempt header, arrival, and whether it was answered 2xx.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub event_id: String,
    pub attempt: u16,
    pub at: Instant,
    pub ok: bool,
}

pub struct ChaosReceiver {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

impl ChaosReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (m, a) = (mode.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, m.clone(), a.clone()));
            }
        });
        Ok(Self {
            addr,
            mode,
            arrivals,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhooks/qr3", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().expect("lock").clone()
    }
}

async fn serve(stream: TcpStream, mode: Arc<Mutex<Mode>>, arrivals: Arc<Mutex<Vec<Arrival>>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut event_id = String::new();
        let mut attempt = 0u16;
        let mut line = String::new();
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-qr3-event-id" => event_id = value.trim().to_owned(),
                    "x-qr3-delivery-attempt" => attempt = value.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let now = *mode.lock().expect("lock");
        let ok = matches!(now, Mode::Ok | Mode::HugeBody);
        arrivals.lock().expect("lock").push(Arrival {
            event_id,
            attempt,
            at: Instant::now(),
            ok,
        });
        let out = stream.get_mut();
        let written = match now {
            Mode::Ok => out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await,
            Mode::Status500 => out.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom").await,
            Mode::Redirect => {
                out.write_all(b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n").await
            }
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::CloseMidResponse => {
                let _ = out.write_all(b"HTTP/1.1 20").await;
                let _ = out.shutdown().await;
                return;
            }
            Mode::HugeBody => {
                const SIZE: usize = 32 << 20;
                let chunk = vec![b'x'; 64 * 1024];
                let mut result = out.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").as_bytes()).await;
                let mut sent = 0;
                while result.is_ok() && sent < SIZE {
                    result = out.write_all(&chunk).await;
                    sent += chunk.len();
                }
                result
            }
        };
        if written.is_err() {
            return;
        }
    }
}
