//! What the Airflow adapter reports on its own: its polls, and the rows each reads from
//! Airflow's database, so operators can see what following Airflow costs it.

use prometheus::{IntCounter, Registry};

use crate::engines::store_source::PollMetrics;

#[derive(Clone, Debug)]
pub struct AirflowMetrics {
    /// `taskpulse_airflow_db_polls_total{outcome}` and `taskpulse_airflow_db_poll_seconds`.
    pub polls: PollMetrics,
    /// `taskpulse_airflow_db_poll_rows_total`: rows the polls' queries returned.
    pub rows: IntCounter,
}

impl AirflowMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<AirflowMetrics> {
        let polls = PollMetrics::register(
            registry,
            "airflow_db",
            "Airflow's metadata database",
            "--airflow-db",
            "read, diff, submit",
        )?;
        let rows = IntCounter::new(
            "taskpulse_airflow_db_poll_rows_total",
            "Rows taskpulse's polls read from Airflow's database (runs and task instances in flight, those that ended, earlier tries, waits).",
        )?;
        registry.register(Box::new(rows.clone()))?;
        Ok(AirflowMetrics { polls, rows })
    }
}
