//! Process-wide `tracing` subscriber: level filter and text or JSON output on stderr.

use std::io::IsTerminal;

use anyhow::Context;
use qr3_config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
///
/// Calling it again (tests start several apps in one process) keeps the first
/// subscriber and returns `Ok`.
pub fn init_tracing(log: &LogSettings) -> anyhow::Result<()> {
    let filter = if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
        EnvFilter::try_from_default_env().context("RUST_LOG is not a valid log filter")?
    } else {
        EnvFilter::try_new(&log.level)
            .with_context(|| format!("log.level {:?} is not a valid log filter", log.level))?
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // The only failure is "a global subscriber (or `log` logger) is already set".
    if let Err(error) = installed {
        tracing::debug!(%error, "tracing already initialised, keeping the existing subscriber");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(format: LogFormat, level: &str) -> LogSettings {
        LogSettings {
            format,
            level: level.to_owned(),
        }
    }

    #[test]
    fn initialising_twice_is_harmless() {
        init_tracing(&settings(LogFormat::Json, "info")).unwrap();
        init_tracing(&settings(LogFormat::Text, "debug")).unwrap();
    }

    #[test]
    fn rejects_an_invalid_level() {
        if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
            return; // RUST_LOG overrides log.level, so the bad level is never parsed.
        }
        let error = init_tracing(&settings(LogFormat::Text, "info,[=")).unwrap_err();
        assert!(error.to_string().contains("log.level"), "{error:#}");
    }
}
