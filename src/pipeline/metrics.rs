//! What the update pipeline reports: updates by source and outcome, rejected transitions, the
//! throttle's decisions, task durations and evictions.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::cardinality::{Folding, LabelCap, HISTOGRAM_LABEL_VALUES};
use crate::ingest::{Adjustment, TaskUpdate};
use crate::model::{ReopenKind, Status};

/// (task type, field) pairs whose first adjustment is logged, at most: past it they are only
/// counted.
const ADJUSTMENTS_LOGGED: usize = 1024;

/// The `outcome` label values of `taskpulse_updates_total`.
pub const OUTCOMES: [&str; 3] = ["accepted", "duplicate", "rejected"];

#[derive(Clone, Debug)]
pub struct PipelineMetrics {
    pub updates_total: IntCounterVec,
    pub transitions_rejected_total: IntCounterVec,
    /// Finished tasks the engine put back to work under the same id, by how.
    pub task_reopens_total: IntCounterVec,
    /// Fields of engines' rows dropped or cut so the row could be taken.
    pub engine_fields_adjusted_total: IntCounterVec,
    /// (task type, field) pairs already logged.
    adjustments_logged: Arc<Mutex<HashSet<(String, &'static str)>>>,
    pub progress_updates_total: IntCounterVec,
    pub task_duration_seconds: HistogramVec,
    /// Tasks that left memory because of `--max-tracked-tasks` (they stay in the store).
    pub tasks_evicted_total: IntCounter,
    /// The task types the duration histogram keeps series for.
    duration_types: Arc<LabelCap>,
    /// `progress_updates_total{outcome="written"}` and `{outcome="coalesced"}`, looked up once:
    /// they are bumped on every progress update.
    progress_written: IntCounter,
    progress_coalesced: IntCounter,
}

impl PipelineMetrics {
    pub fn register(registry: &Registry, folding: &Folding) -> prometheus::Result<PipelineMetrics> {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let progress_updates_total = counter_vec(
            "taskpulse_progress_updates_total",
            "Progress-only updates, by whether they were written at once or coalesced by the throttle.",
            &["outcome"],
        )?;
        let m = PipelineMetrics {
            duration_types: Arc::new(
                folding.cap("taskpulse_task_duration_seconds", HISTOGRAM_LABEL_VALUES),
            ),
            progress_written: progress_updates_total.with_label_values(&["written"]),
            progress_coalesced: progress_updates_total.with_label_values(&["coalesced"]),
            progress_updates_total,
            updates_total: counter_vec(
                "taskpulse_updates_total",
                "Task updates taken in, by source and outcome (accepted, duplicate, rejected).",
                &["source", "outcome"],
            )?,
            transitions_rejected_total: counter_vec(
                "taskpulse_transitions_rejected_total",
                "Updates rejected because they would leave a terminal status, by from and to status.",
                &["from", "to"],
            )?,
            task_reopens_total: counter_vec(
                "taskpulse_task_reopens_total",
                "Finished tasks the engine itself put back to work under the same id (seen in its own store), by kind: rerun, retry, restart or clear.",
                &["kind"],
            )?,
            engine_fields_adjusted_total: counter_vec(
                "taskpulse_engine_fields_adjusted_total",
                "Fields of rows read from an engine's own store that were dropped or cut so the row (and its transition) could be taken, by source and action (the log names the field and task type, once each).",
                &["source", "action"],
            )?,
            adjustments_logged: Arc::default(),
            task_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "taskpulse_task_duration_seconds",
                    "Task duration from start to its terminal status; a task the engine reopened counts once per run.",
                )
                .buckets(vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    21600.0, 86400.0,
                ]),
                &["task_type", "status"],
            )?,
            tasks_evicted_total: IntCounter::new(
                "taskpulse_tasks_evicted_total",
                "Tasks that left memory (not the store) because --max-tracked-tasks was reached, least recently updated first.",
            )?,
        };
        registry.register(Box::new(m.updates_total.clone()))?;
        registry.register(Box::new(m.transitions_rejected_total.clone()))?;
        registry.register(Box::new(m.task_reopens_total.clone()))?;
        registry.register(Box::new(m.engine_fields_adjusted_total.clone()))?;
        registry.register(Box::new(m.progress_updates_total.clone()))?;
        registry.register(Box::new(m.task_duration_seconds.clone()))?;
        registry.register(Box::new(m.tasks_evicted_total.clone()))?;
        // Every way to leave a terminal status exists from the first scrape, at 0.
        for from in Status::ALL.iter().filter(|s| s.is_terminal()) {
            for to in Status::ALL {
                m.transitions_rejected_total
                    .with_label_values(&[from.as_str(), to.as_str()]);
            }
        }
        for kind in ReopenKind::ALL {
            m.task_reopens_total.with_label_values(&[kind.as_str()]);
        }
        Ok(m)
    }

    pub fn unregistered() -> PipelineMetrics {
        PipelineMetrics::register(&Registry::new(), &Folding::unregistered())
            .expect("fresh registry")
    }

    /// One task finished after `seconds`.
    pub(crate) fn task_finished(&self, task_type: &str, status: Status, seconds: f64) {
        self.task_duration_seconds
            .with_label_values(&[self.duration_types.label(task_type), status.as_str()])
            .observe(seconds);
    }

    /// Makes a source's counters exist from the first scrape (dashboards rate() over them).
    pub fn declare_source(&self, source: &str) {
        for outcome in OUTCOMES {
            self.updates_total.with_label_values(&[source, outcome]);
        }
    }

    /// An engine's source: its update counters and what its rows lost, from the first scrape.
    pub fn declare_engine_source(&self, source: &str) {
        self.declare_source(source);
        for action in Adjustment::ALL {
            self.engine_fields_adjusted_total
                .with_label_values(&[source, action.as_str()]);
        }
    }

    pub(crate) fn progress_updates(&self, written: bool) {
        if written {
            self.progress_written.inc()
        } else {
            self.progress_coalesced.inc()
        }
    }

    pub(crate) fn transition_rejected(&self, from: Status, to: Status) {
        self.transitions_rejected_total
            .with_label_values(&[from.as_str(), to.as_str()])
            .inc();
    }

    pub(crate) fn task_reopened(&self, kind: ReopenKind) {
        self.task_reopens_total
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// Counts what was dropped or cut from an engine's row, and logs the first time each field
    /// of each task type was (the engine's data is shaped by its users: worth an operator's
    /// look, not an error).
    pub(crate) fn engine_fields_adjusted(&self, source: &str, u: &TaskUpdate) {
        for a in &u.adjusted {
            self.engine_fields_adjusted_total
                .with_label_values(&[source, a.action.as_str()])
                .inc();
            let task_type = u.task_type.as_deref().unwrap_or("");
            let first = self.adjustments_logged.lock().is_ok_and(|mut seen| {
                seen.len() < ADJUSTMENTS_LOGGED && seen.insert((task_type.to_string(), a.field))
            });
            if first {
                tracing::warn!(
                    source,
                    task_type,
                    task_id = %u.task_id,
                    field = a.field,
                    action = a.action.as_str(),
                    "a field of the engine's row was {} so its transition could be taken (logged once per task type and field; counted in taskpulse_engine_fields_adjusted_total)",
                    a.action.as_str()
                );
            }
        }
    }

    pub(crate) fn counted(&self, source: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.updates_total
                .with_label_values(&[source, outcome])
                .inc_by(n);
        }
    }
}
