//! What the Kestra adapter reports on its own: its polls, and what each costs Kestra's
//! database (rows listed, documents fetched, bytes), so operators can watch it.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::engines::store_source::PollMetrics;

#[derive(Clone, Debug)]
pub struct KestraMetrics {
    /// `taskpulse_kestra_db_polls_total{outcome}` and `taskpulse_kestra_db_poll_seconds`:
    /// reads of Kestra's executions table.
    pub polls: PollMetrics,
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
        let polls = PollMetrics::register(
            registry,
            "kestra_db",
            "Kestra's executions table",
            "--kestra-db",
            "read, diff, submit",
        )?;
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
            polls,
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
