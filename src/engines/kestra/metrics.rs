//! What the Kestra adapter reports on its own.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct KestraMetrics {
    /// `taskpulse_kestra_db_polls_total{outcome}`: reads of Kestra's executions table.
    pub polls_ok: IntCounter,
    pub polls_failed: IntCounter,
    /// `taskpulse_kestra_db_poll_seconds`: one read, start to end.
    pub poll_seconds: Histogram,
}

impl KestraMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<KestraMetrics> {
        let polls = IntCounterVec::new(
            Opts::new(
                "taskpulse_kestra_db_polls_total",
                "Reads of Kestra's executions table (--kestra-db), by outcome (ok, error).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(polls.clone()))?;
        let poll_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "taskpulse_kestra_db_poll_seconds",
                "Time one read of Kestra's executions table took (read, diff, submit).",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(poll_seconds.clone()))?;
        Ok(KestraMetrics {
            polls_ok: polls.with_label_values(&["ok"]),
            polls_failed: polls.with_label_values(&["error"]),
            poll_seconds,
        })
    }
}
