//! A service process (a Postgres cluster, a RabbitMQ node) started for one test process
//! and stopped when that process ends, however it ends.
//!
//! Rust's test harness has no hook after the last test, so the service runs under a
//! small shell watchdog that holds the read end of a pipe whose write end only the test
//! process has. When the test process exits (or is killed), the pipe closes, `read`
//! returns, and the watchdog runs the stop command and deletes the service's directory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running service; dropping it (or the process ending) stops it.
pub struct Service {
    watchdog: Child,
    _lifeline: Option<ChildStdin>,
    pub dir: PathBuf,
}

impl Service {
    /// Runs `start` (a shell command, in the background) and, once the test process is
    /// gone, `stop` (a shell command), then removes `dir`. Both run with `sh -c`; their
    /// output goes to `dir/service.log`.
    pub fn start(dir: &Path, start: &str, stop: &str) -> anyhow::Result<Self> {
        let log = dir.join("service.log");
        let script = format!(
            "exec >>'{log}' 2>&1; {start} & read _ignored; {stop}; wait; rm -rf '{dir}'",
            log = log.display(),
            dir = dir.display(),
        );
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let lifeline = watchdog.stdin.take();
        Ok(Self {
            watchdog,
            _lifeline: lifeline,
            dir: dir.to_owned(),
        })
    }

    /// The service's log so far, for an error message.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.join("service.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Closing the pipe tells the watchdog to stop the service.
        self._lifeline.take();
        let _ = self.watchdog.wait();
    }
}

/// Whether this process runs as root (services that refuse root then run as their own
/// system user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A free TCP port on 127.0.0.1 (free now; the service binds it a moment later).
///
/// Chosen at random below the kernel's ephemeral range, where no outgoing connection
/// takes its local port: a port the OS hands out for a listener (`:0`) is in that
/// range, and between the check and the service's bind an outgoing connection of a
/// busy test (a receiver's clients, a pool) could take it as its own.
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::BuildHasher;
    const LOWEST: u16 = 10_000;
    let first_ephemeral = first_ephemeral_port().unwrap_or(32_768);
    if let Some(span) = first_ephemeral
        .checked_sub(LOWEST)
        .filter(|span| *span >= 1_000)
    {
        let random = std::collections::hash_map::RandomState::new();
        for attempt in 0..64u32 {
            let port = LOWEST + (random.hash_one(attempt) % u64::from(span)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`),
/// if readable.
fn first_ephemeral_port() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A fresh directory for one service of this process, empty.
pub fn fresh_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("qr3-{kind}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Shell-quotes `s` in single quotes.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
