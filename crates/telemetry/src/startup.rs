//! What a starting process is still waiting for: `/readyz` reports it while the process
//! waits for its dependencies, before any role runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The start-up state of a process, shared by whoever waits for the dependencies and by
/// `/readyz`. Cheap to clone.
///
/// A new `Startup` is starting and waits for nothing in particular yet; each dependency
/// is marked [`waiting`](Self::waiting) with its reason or [`reached`](Self::reached);
/// [`finish`](Self::finish) ends start-up, after which readiness is the process's
/// regular [`ReadyCheck`](crate::ReadyCheck).
#[derive(Clone, Default)]
pub struct Startup {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Dependency name → why it is not usable yet.
    waiting: BTreeMap<&'static str, String>,
    finished: bool,
}

/// Why a starting process is not ready: what it waits for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The dependencies not usable yet, by name (`database`, `broker`), in name order.
    pub dependencies: Vec<&'static str>,
    /// One line for people: `starting: waiting for the database (…)`.
    pub reason: String,
}

impl Startup {
    pub fn new() -> Self {
        Self::default()
    }

    /// `dependency` is not usable yet, because of `why`.
    pub fn waiting(&self, dependency: &'static str, why: impl Into<String>) {
        self.lock().waiting.insert(dependency, why.into());
    }

    /// `dependency` is usable.
    pub fn reached(&self, dependency: &'static str) {
        self.lock().waiting.remove(dependency);
    }

    /// Start-up is over: the roles run.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.waiting.clear();
        state.finished = true;
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// `None` once start-up is over; otherwise what the process still waits for.
    pub fn waiting_for(&self) -> Option<Waiting> {
        let state = self.lock();
        if state.finished {
            return None;
        }
        let reason = if state.waiting.is_empty() {
            "starting".to_owned()
        } else {
            let parts: Vec<String> = state
                .waiting
                .iter()
                .map(|(dependency, why)| format!("waiting for the {dependency} ({why})"))
                .collect();
            format!("starting: {}", parts.join("; "))
        };
        Some(Waiting {
            dependencies: state.waiting.keys().copied().collect(),
            reason,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain map and a flag: a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("waiting_for", &self.waiting_for())
            .finish()
    }
}
