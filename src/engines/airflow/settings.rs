//! The Airflow adapter's settings (`docs/configuration.md`, and the README's "Connecting to
//! Airflow").

use std::time::Duration;

use clap::Args;

use crate::engines::store_source;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Airflow")]
pub struct AirflowSettings {
    /// Apache Airflow 3's metadata database (PostgreSQL), read-only: every task instance's transitions, with the host of each try (source airflow_db)
    #[arg(
        id = "airflow-db",
        long = "airflow-db",
        env = "TASKPULSE_AIRFLOW_DB",
        value_name = "URL"
    )]
    pub db: Option<String>,

    /// How often Airflow's task instances in flight are read
    #[arg(id = "airflow-poll-interval", long = "airflow-poll-interval", env = "TASKPULSE_AIRFLOW_POLL_INTERVAL", value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// A task instance queued longer than this is reported by the checker (rule airflow_queued_too_long; report only): its executor never started it
    #[arg(id = "airflow-queued-limit", long = "airflow-queued-limit", env = "TASKPULSE_AIRFLOW_QUEUED_LIMIT", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub queued_limit: Duration,

    /// A running task instance whose heartbeat is older than this is reported by the checker (rule airflow_heartbeat_stopped; report only): its worker went silent
    #[arg(id = "airflow-heartbeat-limit", long = "airflow-heartbeat-limit", env = "TASKPULSE_AIRFLOW_HEARTBEAT_LIMIT", value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub heartbeat_limit: Duration,
}

impl Default for AirflowSettings {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl AirflowSettings {
    pub fn enabled(&self) -> bool {
        self.db.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.db {
            let whose = "Airflow's metadata database (the `sql_alchemy_conn` without `+psycopg2`)";
            store_source::check_postgres_url("airflow-db", whose, url)?;
        }
        store_source::check_poll_interval("airflow-poll-interval", self.poll_interval)?;
        if self.heartbeat_limit < Duration::from_secs(1) {
            return Err(Error::Config(
                "`airflow-heartbeat-limit` must be at least 1s (e.g. 5m)".into(),
            ));
        }
        if self.queued_limit < Duration::from_secs(1) {
            return Err(Error::Config(
                "`airflow-queued-limit` must be at least 1s (e.g. 10m)".into(),
            ));
        }
        Ok(())
    }
}
