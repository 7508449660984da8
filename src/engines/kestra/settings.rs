//! The Kestra adapter's settings (`docs/contract.md` §1, and the README's "Connecting to Kestra").

use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};
use crate::settings::redact_url;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kestra")]
pub struct KestraSettings {
    /// Kestra's own PostgreSQL (the JDBC backend), read-only: every task run of its executions, with the worker of each attempt (source kestra_db)
    #[arg(
        id = "kestra-db",
        long = "kestra-db",
        env = "TASKPULSE_KESTRA_DB",
        value_name = "URL"
    )]
    pub db: Option<String>,

    /// The tenant whose executions are read: `main` on open-source Kestra 0.23 and later; empty for 0.22 and earlier, which have no tenant
    #[arg(
        id = "kestra-tenant",
        long = "kestra-tenant",
        env = "TASKPULSE_KESTRA_TENANT",
        value_name = "TENANT",
        default_value = "main"
    )]
    pub tenant: String,

    /// How often Kestra's executions table is read for changes
    #[arg(id = "kestra-poll-interval", long = "kestra-poll-interval", env = "TASKPULSE_KESTRA_POLL_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
}

impl Default for KestraSettings {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl KestraSettings {
    pub fn enabled(&self) -> bool {
        self.db.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.db {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(Error::Config(format!(
                    "`kestra-db` must be a postgres:// URL of Kestra's database, got `{}`",
                    redact_url(url)
                )));
            }
        }
        if self.poll_interval < Duration::from_millis(100) {
            return Err(Error::Config(
                "`kestra-poll-interval` must be at least 100ms (e.g. 2s)".into(),
            ));
        }
        Ok(())
    }
}
