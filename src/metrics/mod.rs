//! Prometheus metrics (contract section 4).
//!
//! Two kinds live here. Counters and histograms of things that happened (ingest outcomes,
//! rejected transitions, store writes, durations) are ordinary registered metrics. Gauges of the
//! *current* state (per-task progress, tasks by status, the WAIT queue, workers) are generated
//! at scrape time from the in-memory table by [`scrape::StateCollector`], as Prometheus'
//! exporter guidance recommends: a finished task's series then disappears instead of going
//! stale, and nothing has to remember to delete it.

pub mod scrape;
pub mod text;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Where an update came from (`source` label of `taskpulse_updates_total`).
pub const SOURCE_API: &str = "api";

/// The registered metrics. One instance per process, shared by `Arc`.
pub struct Metrics {
    registry: Registry,
    /// The scrape-time state gauges, which write their own text (see [`scrape`]).
    state: std::sync::OnceLock<scrape::StateCollector>,
    pub updates_total: IntCounterVec,
    pub transitions_rejected_total: IntCounterVec,
    pub progress_updates_total: IntCounterVec,
    pub store_writes_total: IntCounterVec,
    pub store_write_errors_total: IntCounter,
    pub store_pending_writes: IntGauge,
    pub task_duration_seconds: HistogramVec,
    pub wait_wakeup_lag_seconds: HistogramVec,
    pub build_info: IntGaugeVec,
    pub checker_runs_total: IntCounterVec,
    pub checker_last_run_timestamp_seconds: Gauge,
    pub checker_violations: IntGaugeVec,
    pub checker_repairs_total: IntCounterVec,
    pub checker_leader: IntGauge,
    pub heartbeats_total: IntCounterVec,
    /// Tasks that left memory because of `--max-tracked-tasks` (they stay in the store).
    pub tasks_evicted_total: IntCounter,
    /// `progress_updates_total{outcome="written"}` and `{outcome="coalesced"}`, looked up once:
    /// they are bumped on every progress update.
    progress_written: IntCounter,
    progress_coalesced: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let progress_updates_total = counter_vec(
            "taskpulse_progress_updates_total",
            "Progress-only updates, by whether they were written at once or coalesced by the throttle.",
            &["outcome"],
        );
        let m = Metrics {
            registry: Registry::new(),
            state: std::sync::OnceLock::new(),
            progress_written: progress_updates_total.with_label_values(&["written"]),
            progress_coalesced: progress_updates_total.with_label_values(&["coalesced"]),
            progress_updates_total,
            updates_total: counter_vec(
                "taskpulse_updates_total",
                "Task updates taken in, by source and outcome (accepted, duplicate, rejected).",
                &["source", "outcome"],
            ),
            transitions_rejected_total: counter_vec(
                "taskpulse_transitions_rejected_total",
                "Updates rejected because they would leave a terminal status, by from and to status.",
                &["from", "to"],
            ),
            store_writes_total: counter_vec(
                "taskpulse_store_writes_total",
                "Task rows written to the store, by kind (progress, status, repair).",
                &["kind"],
            ),
            store_write_errors_total: IntCounter::new(
                "taskpulse_store_write_errors_total",
                "Failed store write attempts (each is retried).",
            )
            .expect("valid metric"),
            store_pending_writes: IntGauge::new(
                "taskpulse_store_pending_writes",
                "Store writes queued or in flight.",
            )
            .expect("valid metric"),
            task_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "taskpulse_task_duration_seconds",
                    "Task duration from start to its terminal status.",
                )
                .buckets(vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    21600.0, 86400.0,
                ]),
                &["task_type", "status"],
            )
            .expect("valid metric"),
            wait_wakeup_lag_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "taskpulse_wait_wakeup_lag_seconds",
                    "How late WAIT tasks finished after their wake-up time.",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                ]),
                &["workflow_type"],
            )
            .expect("valid metric"),
            build_info: IntGaugeVec::new(
                Opts::new("taskpulse_build_info", "Always 1; the version in a label."),
                &["version"],
            )
            .expect("valid metric"),
            checker_runs_total: counter_vec(
                "taskpulse_checker_runs_total",
                "Consistency checker passes, by outcome (ok, error).",
                &["outcome"],
            ),
            checker_last_run_timestamp_seconds: Gauge::new(
                "taskpulse_checker_last_run_timestamp_seconds",
                "When the last checker pass ended, Unix seconds (0: never on this replica).",
            )
            .expect("valid metric"),
            checker_violations: IntGaugeVec::new(
                Opts::new(
                    "taskpulse_checker_violations",
                    "Violations found by the last checker pass, by rule.",
                ),
                &["rule"],
            )
            .expect("valid metric"),
            checker_repairs_total: counter_vec(
                "taskpulse_checker_repairs_total",
                "Checker repairs by rule and outcome (repaired, conflict, failed, skipped).",
                &["rule", "outcome"],
            ),
            heartbeats_total: counter_vec(
                "taskpulse_conductor_heartbeats_total",
                "Lease heartbeats through the Conductor worker proxy, by outcome (forwarded, coalesced).",
                &["outcome"],
            ),
            tasks_evicted_total: IntCounter::new(
                "taskpulse_tasks_evicted_total",
                "Tasks that left memory (not the store) because --max-tracked-tasks was reached, least recently updated first.",
            )
            .expect("valid metric"),
            checker_leader: IntGauge::new(
                "taskpulse_checker_leader",
                "1 on the replica that leads (runs the checker, exports the state gauges), else 0.",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.updates_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.transitions_rejected_total.clone()),
            Box::new(m.progress_updates_total.clone()),
            Box::new(m.store_writes_total.clone()),
            Box::new(m.store_write_errors_total.clone()),
            Box::new(m.store_pending_writes.clone()),
            Box::new(m.task_duration_seconds.clone()),
            Box::new(m.wait_wakeup_lag_seconds.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.checker_runs_total.clone()),
            Box::new(m.checker_last_run_timestamp_seconds.clone()),
            Box::new(m.checker_violations.clone()),
            Box::new(m.checker_repairs_total.clone()),
            Box::new(m.checker_leader.clone()),
            Box::new(m.heartbeats_total.clone()),
            Box::new(m.tasks_evicted_total.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that alerts and dashboards rate() over exist from the first scrape.
        for outcome in ["accepted", "duplicate", "rejected"] {
            m.updates_total.with_label_values(&[SOURCE_API, outcome]);
        }
        for kind in ["progress", "status", "repair"] {
            m.store_writes_total.with_label_values(&[kind]);
        }
        for outcome in ["ok", "error"] {
            m.checker_runs_total.with_label_values(&[outcome]);
        }
        for outcome in ["forwarded", "coalesced"] {
            m.heartbeats_total.with_label_values(&[outcome]);
        }
        m
    }

    /// Adds the scrape-time state gauges, written after the registered metrics. Set once.
    pub fn set_state(&self, state: scrape::StateCollector) {
        if self.state.set(state).is_err() {
            tracing::warn!("the state gauges were already set; keeping the first");
        }
    }

    pub fn progress_updates(&self, written: bool) {
        if written {
            self.progress_written.inc()
        } else {
            self.progress_coalesced.inc()
        }
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        if let Some(state) = self.state.get() {
            state.write_text(&mut text);
        }
        text
    }
}
