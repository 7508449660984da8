//! What the Airflow adapter reports on its own: its polls, and the rows each reads from
//! Airflow's database, so operators can see what following Airflow costs it.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct AirflowMetrics {
    /// `taskpulse_airflow_db_polls_total{outcome}`.
    pub polls_ok: IntCounter,
    pub polls_failed: IntCounter,
    /// `taskpulse_airflow_db_poll_seconds`: one poll, start to end.
    pub poll_seconds: Histogram,
    /// `taskpulse_airflow_db_poll_rows_total`: rows the polls' queries returned.
    pub rows: IntCounter,
}

impl AirflowMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<AirflowMetrics> {
        let polls = IntCounterVec::new(
            Opts::new(
                "taskpulse_airflow_db_polls_total",
                "Reads of Airflow's metadata database (--airflow-db), by outcome (ok, error).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(polls.clone()))?;
        let poll_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "taskpulse_airflow_db_poll_seconds",
                "Time one read of Airflow's task instances took (read, diff, submit).",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(poll_seconds.clone()))?;
        let rows = IntCounter::new(
            "taskpulse_airflow_db_poll_rows_total",
            "Rows taskpulse's polls read from Airflow's database (runs and task instances in flight, those that ended, earlier tries, waits).",
        )?;
        registry.register(Box::new(rows.clone()))?;
        Ok(AirflowMetrics {
            polls_ok: polls.with_label_values(&["ok"]),
            polls_failed: polls.with_label_values(&["error"]),
            poll_seconds,
            rows,
        })
    }
}
