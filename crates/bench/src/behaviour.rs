//! What the receiver does with a request to one webhook index: answer with a status after a delay, or hang.

use std::time::Duration;

use axum::http::StatusCode;

/// One receiver path's behaviour (the default, without one, is 200 at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers `status` after `delay_ms`.
    Answer { status: u16, delay_ms: u64 },
    /// Never answers (past any delivery timeout).
    Hang,
}

impl Behaviour {
    /// Waits as this behaviour says and returns the status to answer with.
    pub async fn apply(self) -> StatusCode {
        match self {
            Self::Answer { status, delay_ms } => {
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }
}
