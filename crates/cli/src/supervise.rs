//! Supervision of a process's roles. A role runs until the shutdown token is cancelled;
//! one that ends before that, whether it returns `Ok`, returns an error or panics, can
//! no longer do its work, so the process must not live on pretending to: the roles are
//! stopped and the process exits with an error, for its supervisor (Kubernetes) to
//! restart it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::task::{Id, JoinError, JoinSet};

/// The running roles of one process, by name.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

/// A role that ended, and how.
#[derive(Debug)]
pub struct Exit {
    pub role: &'static str,
    pub how: How,
}

#[derive(Debug)]
pub enum How {
    Returned,
    Failed(anyhow::Error),
    Panicked(String),
    Aborted,
}

impl Exit {
    /// The error the process ends with when this role ended before shutdown.
    pub fn into_error(self) -> anyhow::Error {
        let role = self.role;
        match self.how {
            How::Returned => anyhow!("role {role} stopped before shutdown was requested"),
            How::Failed(error) => error.context(format!("role {role} failed")),
            How::Panicked(message) => anyhow!("role {role} panicked: {message}"),
            How::Aborted => anyhow!("role {role} was aborted"),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.how {
            How::Returned => f.write_str("returned"),
            How::Failed(error) => write!(f, "failed: {error:#}"),
            How::Panicked(message) => write!(f, "panicked: {message}"),
            How::Aborted => f.write_str("aborted"),
        }
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` as the role `role`. It must return once the shutdown token it
    /// watches is cancelled, and not before.
    pub fn spawn(
        &mut self,
        role: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, role);
    }

    /// Waits for the next role to end. Pending forever while no role runs, so it can
    /// sit in a `select!` beside the start-up.
    pub async fn next_exit(&mut self) -> Exit {
        loop {
            match self.tasks.join_next_with_id().await {
                Some(joined) => return self.exit(joined),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// After shutdown was requested: waits for every role to finish, for at most
    /// `grace`, then aborts the rest (their unacknowledged work stays in the broker).
    /// The first role that failed while draining is the error.
    pub async fn drain(&mut self, grace: Duration) -> anyhow::Result<()> {
        let drained = tokio::time::timeout(grace, async {
            let mut first_error = None;
            while let Some(joined) = self.tasks.join_next_with_id().await {
                let exit = self.exit(joined);
                if !matches!(exit.how, How::Returned) {
                    tracing::error!(role = exit.role, outcome = %exit, "role failed while stopping");
                    first_error = first_error.or(Some(exit.into_error()));
                }
            }
            first_error
        })
        .await;
        match drained {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(error),
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "grace period over; stopping with work in flight (it stays in the broker)"
                );
                self.tasks.abort_all();
                while self.tasks.join_next().await.is_some() {}
                self.names.clear();
                Ok(())
            }
        }
    }

    fn exit(&mut self, joined: Result<(Id, anyhow::Result<()>), JoinError>) -> Exit {
        let (id, how) = match joined {
            Ok((id, Ok(()))) => (id, How::Returned),
            Ok((id, Err(error))) => (id, How::Failed(error)),
            Err(error) => {
                let id = error.id();
                let how = if error.is_panic() {
                    How::Panicked(panic_message(error.into_panic()))
                } else {
                    How::Aborted
                };
                (id, how)
            }
        };
        let role = self.names.remove(&id).unwrap_or("unknown");
        Exit { role, how }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn until(token: &CancellationToken) -> impl Future<Output = anyhow::Result<()>> {
        let token = token.clone();
        async move {
            token.cancelled().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn names_the_role_that_ended_and_how() {
        let shutdown = CancellationToken::new();
        for (task, expected) in [
            (
                Box::pin(async { Ok(()) })
                    as std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
                "role quitter stopped before shutdown was requested",
            ),
            (
                Box::pin(async { Err(anyhow!("lost its channel")) }),
                "role quitter failed: lost its channel",
            ),
            (
                Box::pin(async { panic!("invariant broken") }),
                "role quitter panicked: invariant broken",
            ),
        ] {
            let mut roles = Supervisor::new();
            roles.spawn("steady", until(&shutdown));
            roles.spawn("quitter", task);
            let exit = roles.next_exit().await;
            assert_eq!(exit.role, "quitter");
            assert_eq!(format!("{:#}", exit.into_error()), expected);
            assert!(!roles.tasks.is_empty(), "the steady role still runs");
            roles.tasks.abort_all();
        }
    }

    #[tokio::test]
    async fn drains_within_the_grace_period() {
        let shutdown = CancellationToken::new();
        let mut roles = Supervisor::new();
        roles.spawn("a", until(&shutdown));
        roles.spawn("b", until(&shutdown));
        shutdown.cancel();
        roles.drain(Duration::from_secs(5)).await.unwrap();
        assert!(roles.tasks.is_empty());
    }

    #[tokio::test]
    async fn aborts_what_outlives_the_grace_period() {
        let mut roles = Supervisor::new();
        roles.spawn("stuck", std::future::pending());
        roles.drain(Duration::from_millis(20)).await.unwrap();
        assert!(roles.tasks.is_empty());
    }

    #[tokio::test]
    async fn a_role_failing_while_draining_is_the_error() {
        let mut roles = Supervisor::new();
        roles.spawn("flusher", async { Err(anyhow!("cannot flush the log")) });
        let error = roles.drain(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "role flusher failed: cannot flush the log"
        );
    }
}
