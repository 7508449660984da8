//! Gauges generated from the current state at scrape time (contract 4.1, 4.2, 4.3, 4.6).
//!
//! One pass over the in-memory table per scrape, holding one shard at a time, builds every
//! gauge. Per-task series are capped by `--max-task-series`: past the cap the oldest in-flight
//! tasks are kept (so a task's series doesn't flicker in and out as others come and go) and the
//! rest are counted in `taskpulse_task_series_omitted`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, IntGauge, IntGaugeVec, Opts};

use crate::engines::conductor::wait_queue::WaitSnapshot;
use crate::leader::Leadership;
use crate::lifecycle::Status;
use crate::now_ms;
use crate::state::Tracker;
use crate::store::TaskRecord;

const PER_TASK: &[&str] = &["workflow_type", "task_type", "workflow_id", "task_id"];
const BY_TYPE: &[&str] = &["workflow_type", "task_type"];

/// Settings the state gauges depend on.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    pub stall_after: Duration,
    pub wait_grace: Duration,
    pub max_task_series: usize,
}

/// The families this collector emits: name, help, labels.
const FAMILIES: &[(&str, &str, &[&str])] = &[
    (
        "taskpulse_task_progress_ratio",
        "Progress of an in-flight task, 0 to 1.",
        PER_TASK,
    ),
    (
        "taskpulse_task_deadline_timestamp_seconds",
        "When the task times out (start + timeoutSeconds), Unix seconds.",
        PER_TASK,
    ),
    (
        "taskpulse_task_series_omitted",
        "In-flight tasks with progress left out of the per-task series by --max-task-series.",
        &[],
    ),
    (
        "taskpulse_tasks",
        "Tracked non-terminal tasks.",
        &["workflow_type", "task_type", "status"],
    ),
    (
        "taskpulse_tasks_stalled",
        "In-flight tasks whose progress hasn't moved for --stall-after.",
        BY_TYPE,
    ),
    (
        "taskpulse_wait_tasks",
        "WAIT tasks waiting.",
        &["workflow_type"],
    ),
    (
        "taskpulse_wait_overdue_tasks",
        "WAIT tasks past their wake-up time plus --wait-grace.",
        &["workflow_type"],
    ),
    (
        "taskpulse_wait_due_next_minute_tasks",
        "WAIT tasks due to wake within 60 seconds.",
        &["workflow_type"],
    ),
    (
        "taskpulse_wait_oldest_overdue_seconds",
        "Lateness of the most overdue WAIT task, 0 if none.",
        &[],
    ),
    (
        "taskpulse_worker_tasks",
        "In-flight tasks last reported by each worker.",
        &["worker_id"],
    ),
    (
        "taskpulse_worker_last_seen_timestamp_seconds",
        "When each worker last sent an update, Unix seconds.",
        &["worker_id"],
    ),
    (
        "taskpulse_task_predicted_completion_timestamp_seconds",
        "Estimated finish of an in-flight task from its progress rate, Unix seconds.",
        PER_TASK,
    ),
    (
        "taskpulse_task_worker_info",
        "The worker of an in-flight task's current attempt; always 1 (join on the task labels).",
        &[
            "workflow_type",
            "task_type",
            "workflow_id",
            "task_id",
            "worker_id",
        ],
    ),
    (
        "taskpulse_tasks_predicted_timeout",
        "In-flight tasks predicted to finish after their deadline.",
        BY_TYPE,
    ),
];

/// Builds the state gauges on every scrape.
pub struct StateCollector {
    tracker: Arc<Tracker>,
    cfg: ScrapeConfig,
    leadership: Leadership,
    /// With `--conductor-db`, the WAIT queue as read from Conductor's own tables; otherwise
    /// the WAIT gauges come from the updates taskpulse sees.
    wait_source: Option<tokio::sync::watch::Receiver<WaitSnapshot>>,
    descs: Vec<Desc>,
}

impl StateCollector {
    /// Only the leading replica exports the state gauges, so Prometheus never counts a task
    /// twice when several replicas share one store.
    pub fn new(
        tracker: Arc<Tracker>,
        cfg: ScrapeConfig,
        leadership: Leadership,
        wait_source: Option<tokio::sync::watch::Receiver<WaitSnapshot>>,
    ) -> StateCollector {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .expect("valid metric description")
            })
            .collect();
        StateCollector {
            tracker,
            cfg,
            leadership,
            wait_source,
            descs,
        }
    }
}

fn gauge_vec(i: usize) -> GaugeVec {
    let (name, help, labels) = FAMILIES[i];
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn int_vec(i: usize) -> IntGaugeVec {
    let (name, help, labels) = FAMILIES[i];
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

#[derive(Default)]
struct WaitCounts {
    waiting: i64,
    overdue: i64,
    due_next_minute: i64,
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.leadership.is_leader() {
            return Vec::new();
        }
        let now = now_ms();
        let stall_ms = self.cfg.stall_after.as_millis() as i64;
        let grace_ms = self.cfg.wait_grace.as_millis() as i64;

        let mut by_status: HashMap<(Arc<str>, Arc<str>, Status), i64> = HashMap::new();
        // per (workflow_type, task_type) of in-flight tasks: (stalled, predicted to time out)
        let mut by_type: HashMap<(Arc<str>, Arc<str>), (i64, i64)> = HashMap::new();
        let mut wait: HashMap<Arc<str>, WaitCounts> = HashMap::new();
        let mut oldest_overdue_ms = 0i64;
        let mut worker_tasks: HashMap<Arc<str>, i64> = HashMap::new();
        let mut candidates: Vec<(TaskRecord, Option<i64>)> = Vec::new();
        let empty: Arc<str> = Arc::from("");

        self.tracker.for_each(|st| {
            let rec = &st.rec;
            if rec.status.is_terminal() {
                return;
            }
            let wf = rec.workflow_type.clone().unwrap_or_else(|| empty.clone());
            *by_status
                .entry((wf.clone(), rec.task_type.clone(), rec.status))
                .or_default() += 1;
            if let Some(w) = &rec.worker_id {
                *worker_tasks.entry(w.clone()).or_default() += 1;
            }
            if rec.is_waiting() {
                let c = wait.entry(wf).or_default();
                c.waiting += 1;
                if let Some(wake) = rec.wait_until {
                    let late = now - wake;
                    if late > grace_ms {
                        c.overdue += 1;
                        oldest_overdue_ms = oldest_overdue_ms.max(late);
                    } else if late <= 0 && -late <= 60_000 {
                        c.due_next_minute += 1;
                    }
                }
                return;
            }
            let counts = by_type.entry((wf, rec.task_type.clone())).or_default();
            if rec.progress.is_some() {
                if now - rec.progress_changed >= stall_ms {
                    counts.0 += 1;
                }
                let predicted = st.predicted_completion(now, stall_ms);
                if let (Some(p), Some(d)) = (predicted, rec.deadline_ms()) {
                    if p > d {
                        counts.1 += 1;
                    }
                }
                candidates.push((rec.clone(), predicted));
            }
        });

        let mut out = Vec::with_capacity(FAMILIES.len());

        // 4.1 per task, capped
        let omitted = candidates.len().saturating_sub(self.cfg.max_task_series);
        if omitted > 0 {
            let cap = self.cfg.max_task_series;
            if cap == 0 {
                candidates.clear();
            } else {
                candidates.select_nth_unstable_by(cap - 1, |(a, _), (b, _)| {
                    (a.first_seen, &a.task_id).cmp(&(b.first_seen, &b.task_id))
                });
                candidates.truncate(cap);
            }
        }
        let progress = gauge_vec(0);
        let deadline = gauge_vec(1);
        let predicted = gauge_vec(11);
        let worker_info = int_vec(12);
        for (rec, completion) in &candidates {
            let labels = [
                rec.workflow_type.as_deref().unwrap_or(""),
                &rec.task_type,
                &rec.workflow_id,
                &rec.task_id,
            ];
            if let Some(p) = rec.progress {
                progress
                    .with_label_values(&labels)
                    .set(f64::from(p) / 100.0);
            }
            if let Some(d) = rec.deadline_ms() {
                deadline.with_label_values(&labels).set(d as f64 / 1000.0);
            }
            if let Some(c) = completion {
                predicted.with_label_values(&labels).set(*c as f64 / 1000.0);
            }
            if let Some(w) = &rec.worker_id {
                let [wf, tt, wid, tid] = labels;
                worker_info.with_label_values(&[wf, tt, wid, tid, w]).set(1);
            }
        }
        out.extend(progress.collect());
        out.extend(deadline.collect());
        out.extend(predicted.collect());
        out.extend(worker_info.collect());
        let omitted_gauge = IntGauge::new(FAMILIES[2].0, FAMILIES[2].1).expect("valid metric");
        omitted_gauge.set(omitted as i64);
        out.extend(omitted_gauge.collect());

        // 4.2 aggregates
        let tasks = int_vec(3);
        for ((wf, tt, st), n) in &by_status {
            tasks.with_label_values(&[wf, tt, st.as_str()]).set(*n);
        }
        out.extend(tasks.collect());
        let (stalled, timing_out) = (int_vec(4), int_vec(13));
        for ((wf, tt), (n_stalled, n_timing_out)) in &by_type {
            stalled.with_label_values(&[wf, tt]).set(*n_stalled);
            timing_out.with_label_values(&[wf, tt]).set(*n_timing_out);
        }
        out.extend(stalled.collect());
        out.extend(timing_out.collect());

        // 4.3 WAIT queue
        if let Some(source) = &self.wait_source {
            let snap = source.borrow();
            wait = snap
                .by_workflow_type
                .iter()
                .map(|(wf, c)| {
                    (
                        Arc::from(wf.as_str()),
                        WaitCounts {
                            waiting: c.waiting,
                            overdue: c.overdue,
                            due_next_minute: c.due_next_minute,
                        },
                    )
                })
                .collect();
            oldest_overdue_ms = (snap.oldest_overdue_seconds * 1000.0) as i64;
        }
        let (waiting, overdue, due) = (int_vec(5), int_vec(6), int_vec(7));
        for (wf, c) in &wait {
            waiting.with_label_values(&[wf]).set(c.waiting);
            overdue.with_label_values(&[wf]).set(c.overdue);
            due.with_label_values(&[wf]).set(c.due_next_minute);
        }
        out.extend(waiting.collect());
        out.extend(overdue.collect());
        out.extend(due.collect());
        let oldest = Gauge::new(FAMILIES[8].0, FAMILIES[8].1).expect("valid metric");
        oldest.set(oldest_overdue_ms as f64 / 1000.0);
        out.extend(oldest.collect());

        // 4.6 workers
        let (w_tasks, w_seen) = (int_vec(9), gauge_vec(10));
        for (worker, seen) in self.tracker.workers() {
            w_tasks
                .with_label_values(&[&worker])
                .set(worker_tasks.get(&worker).copied().unwrap_or(0));
            w_seen
                .with_label_values(&[&worker])
                .set(seen as f64 / 1000.0);
        }
        out.extend(w_tasks.collect());
        out.extend(w_seen.collect());
        out
    }
}
