//! What the store's writer reports.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::WriteKind;

/// `taskpulse_store_*`: rows written by kind, the transactions they took, failed attempts, and
/// what waits.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub writes_total: IntCounterVec,
    pub write_errors_total: IntCounter,
    pub commits_total: IntCounter,
    pub pending_writes: IntGauge,
}

impl StoreMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<StoreMetrics> {
        let m = StoreMetrics {
            writes_total: IntCounterVec::new(
                Opts::new(
                    "taskpulse_store_writes_total",
                    "Task rows written to the store, by kind (progress, status, repair).",
                ),
                &["kind"],
            )?,
            write_errors_total: IntCounter::new(
                "taskpulse_store_write_errors_total",
                "Failed store write attempts (each is retried).",
            )?,
            commits_total: IntCounter::new(
                "taskpulse_store_commits_total",
                "Transactions the store writer committed (each takes every write waiting).",
            )?,
            pending_writes: IntGauge::new(
                "taskpulse_store_pending_writes",
                "Store writes queued or in flight.",
            )?,
        };
        registry.register(Box::new(m.writes_total.clone()))?;
        registry.register(Box::new(m.write_errors_total.clone()))?;
        registry.register(Box::new(m.commits_total.clone()))?;
        registry.register(Box::new(m.pending_writes.clone()))?;
        // Known label values exist from the first scrape, so rate() and increase() see the
        // first write.
        for kind in [WriteKind::Progress, WriteKind::Status, WriteKind::Repair] {
            m.writes_total.with_label_values(&[kind.label()]);
        }
        Ok(m)
    }

    /// Metrics registered nowhere, for tools and tests that only need the handles.
    pub fn unregistered() -> StoreMetrics {
        StoreMetrics::register(&Registry::new()).expect("fresh registry")
    }

    pub fn written(&self, kind: WriteKind) {
        self.writes_total.with_label_values(&[kind.label()]).inc();
    }
}
