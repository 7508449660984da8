//! The Kestra adapter's settings (`docs/contract.md` §1, and the README's "Connecting to Kestra").

use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;

use crate::engines::store_source;
use crate::error::{Error, Result};

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
    #[arg(id = "kestra-poll-interval", long = "kestra-poll-interval", env = "TASKPULSE_KESTRA_POLL_INTERVAL", value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// The IANA time zone of Kestra's JVM (its `user.timezone`/`TZ`): Kestra's `end_date` column holds wall time in that zone; checked at start against the rows, which must agree
    #[arg(
        id = "kestra-db-time-zone",
        long = "kestra-db-time-zone",
        env = "TASKPULSE_KESTRA_DB_TIME_ZONE",
        value_name = "ZONE",
        default_value = "UTC"
    )]
    pub time_zone: String,

    /// An execution whose JSON is larger than this is not read (counted in taskpulse_kestra_db_documents_skipped_total, logged once per execution)
    #[arg(
        id = "kestra-db-max-document-bytes",
        long = "kestra-db-max-document-bytes",
        env = "TASKPULSE_KESTRA_DB_MAX_DOCUMENT_BYTES",
        value_name = "BYTES",
        default_value = "16MiB"
    )]
    pub max_document_bytes: ByteSize,

    /// Bytes of executions' JSON (as stored) fetched in one poll at most; changed executions beyond it wait for the next poll
    #[arg(
        id = "kestra-db-max-poll-bytes",
        long = "kestra-db-max-poll-bytes",
        env = "TASKPULSE_KESTRA_DB_MAX_POLL_BYTES",
        value_name = "BYTES",
        default_value = "64MiB"
    )]
    pub max_poll_bytes: ByteSize,
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
            store_source::check_postgres_url("kestra-db", "Kestra's database", url)?;
        }
        store_source::check_poll_interval("kestra-poll-interval", self.poll_interval)?;
        let zone = &self.time_zone;
        let ok = !zone.is_empty()
            && zone.len() <= 64
            && zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !ok {
            return Err(Error::Config(format!(
                "`kestra-db-time-zone` must be an IANA zone name such as UTC or Europe/Paris, got `{zone}`"
            )));
        }
        if self.max_document_bytes.as_u64() < 1024 {
            return Err(Error::Config(
                "`kestra-db-max-document-bytes` must be at least 1KiB".into(),
            ));
        }
        if self.max_poll_bytes < self.max_document_bytes {
            return Err(Error::Config(
                "`kestra-db-max-poll-bytes` must be at least `kestra-db-max-document-bytes`".into(),
            ));
        }
        Ok(())
    }
}
