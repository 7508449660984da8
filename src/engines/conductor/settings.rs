//! The Conductor adapter's settings (`docs/contract.md` §1, and the README's "Connecting to Conductor").

use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};
use crate::settings::redact_url;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Conductor")]
pub struct ConductorSettings {
    /// Conductor server (http://HOST:PORT): serve a Conductor-compatible worker API at /api/ and forward to it; the checker asks the engine too
    #[arg(
        id = "conductor-url",
        long = "conductor-url",
        env = "TASKPULSE_CONDUCTOR_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,

    /// Longest the Conductor server may take to answer a proxied request before the worker gets 504; above the longest long-poll your workers ask for
    #[arg(id = "conductor-timeout", long = "conductor-timeout", env = "TASKPULSE_CONDUCTOR_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Conductor's own PostgreSQL, read-only: every task transition from its task table (source conductor_db) and the WAIT queue
    #[arg(
        id = "conductor-db",
        long = "conductor-db",
        env = "TASKPULSE_CONDUCTOR_DB",
        value_name = "URL"
    )]
    pub db: Option<String>,

    /// How often Conductor's store (--conductor-db) is read for changed tasks
    #[arg(id = "conductor-poll-interval", long = "conductor-poll-interval", env = "TASKPULSE_CONDUCTOR_POLL_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
}

impl Default for ConductorSettings {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl ConductorSettings {
    /// Whether any part of the adapter is switched on.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.db.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, why: String| Err(Error::Config(format!("`{name}` {why}")));
        if self.timeout.is_zero() {
            return bad(
                "conductor-timeout",
                "must be greater than 0 (e.g. 30s)".into(),
            );
        }
        if self.poll_interval < Duration::from_millis(100) {
            return bad(
                "conductor-poll-interval",
                "must be at least 100ms (e.g. 2s)".into(),
            );
        }
        if let Some(url) = &self.url {
            if !url.starts_with("http://") {
                return bad(
                    "conductor-url",
                    format!("must be an http:// URL of the Conductor server (TLS to the engine is not supported; run taskpulse next to it), got `{}`", redact_url(url)),
                );
            }
            if url.parse::<http::Uri>().is_err() {
                return bad(
                    "conductor-url",
                    format!("is not a valid URL: `{}`", redact_url(url)),
                );
            }
        }
        if let Some(url) = &self.db {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return bad(
                    "conductor-db",
                    format!(
                        "must be a postgres:// URL of Conductor's database, got `{}`",
                        redact_url(url)
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let s = ConductorSettings::default();
        assert!(!s.enabled());
        assert_eq!(s.timeout, Duration::from_secs(30));
        let s = ConductorSettings {
            timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-timeout"));
        let s = ConductorSettings {
            url: Some("https://c:8080".into()),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-url"));
        let s = ConductorSettings {
            db: Some("mysql://c".into()),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("conductor-db"));
    }
}
