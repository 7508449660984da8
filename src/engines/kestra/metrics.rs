//! What the Kestra adapter reports on its own: its polls, and what each costs Kestra's
//! database (rows listed, documents fetched, bytes), so operators can watch it.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone, Debug)]
pub struct KestraMetrics {
    /// `taskpulse_kestra_db_polls_total{outcome}`: reads of Kestra's executions table.
    pub polls_ok: IntCounter,
    pub polls_failed: IntCounter,
    /// `taskpulse_kestra_db_poll_seconds`: one read, start to end.
    pub poll_seconds: Histogram,
    /// `taskpulse_kestra_db_rows_listed_total`: (key, version) rows listed.
    pub rows_listed: IntCounter,
    /// `taskpulse_kestra_db_documents_fetched_total`: executions' JSON fetched.
    pub documents_fetched: IntCounter,
    /// `taskpulse_kestra_db_fetched_bytes_total`: bytes of JSON text fetched.
    pub fetched_bytes: IntCounter,
    /// `taskpulse_kestra_db_documents_skipped_total{reason}`.
    pub skipped: IntCounterVec,
    /// `taskpulse_kestra_db_documents_deferred`: changed executions left for a later poll by
    /// the per-poll byte budget, after the last poll.
    pub deferred: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
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
        let skipped = IntCounterVec::new(
            Opts::new(
                "taskpulse_kestra_db_documents_skipped_total",
                "Executions' JSON not read, by reason (too_large: over --kestra-db-max-document-bytes; unreadable: not an execution taskpulse can parse).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        for reason in ["too_large", "unreadable"] {
            skipped.with_label_values(&[reason]); // at 0 from the first scrape
        }
        let deferred = IntGauge::new(
            "taskpulse_kestra_db_documents_deferred",
            "Changed executions the last poll left for the next one (--kestra-db-max-poll-bytes).",
        )?;
        registry.register(Box::new(deferred.clone()))?;
        Ok(KestraMetrics {
            polls_ok: polls.with_label_values(&["ok"]),
            polls_failed: polls.with_label_values(&["error"]),
            poll_seconds,
            rows_listed: counter(
                registry,
                "taskpulse_kestra_db_rows_listed_total",
                "Rows of Kestra's executions table listed (key and version only, no JSON).",
            )?,
            documents_fetched: counter(
                registry,
                "taskpulse_kestra_db_documents_fetched_total",
                "Executions' JSON fetched from Kestra's database (only those whose version changed).",
            )?,
            fetched_bytes: counter(
                registry,
                "taskpulse_kestra_db_fetched_bytes_total",
                "Bytes of executions' JSON text fetched from Kestra's database.",
            )?,
            skipped,
            deferred,
        })
    }
}
