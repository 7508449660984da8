//! Gauges generated from the current state at scrape time (`docs/contract.md` §4.1-4.3
//! and 4.6: per task, aggregates, the WAIT queue, workers).
//!
//! One pass over the in-memory table per scrape, holding one shard at a time, builds every
//! gauge. Per-task series are capped by `--max-task-series`: past the cap the oldest in-flight
//! tasks are kept (so a task's series doesn't flicker in and out as others come and go) and the
//! rest are counted in `taskpulse_task_series_omitted`.
//!
//! The text is written directly ([`super::text`]), not through the prometheus crate's vectors:
//! at 100,000 tracked tasks the crate's per-series hashing and protobuf round trip cost several
//! times the walk itself (the `scrape` bench target measures both sides).
//!
//! Counting by (workflow type, task type) keys on the addresses of the interned strings first,
//! which hashes three words instead of two strings per task, then folds the few groups by
//! content, so two equal strings that were not shared still count as one series.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{text, Collector};
use crate::leader::Leadership;
use crate::model::{Status, WAIT_TASK_TYPE};
use crate::now_ms;
use crate::pipeline::{TaskState, Tracker};
use crate::wait::{WaitCounts, WaitSource};

/// Settings the state gauges depend on.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    pub stall_after: Duration,
    pub wait_grace: Duration,
    pub max_task_series: usize,
}

/// A family this exporter writes: name and help (all are gauges).
struct Family(&'static str, &'static str);

const PROGRESS: Family = Family(
    "taskpulse_task_progress_ratio",
    "Progress of an in-flight task, 0 to 1.",
);
const DEADLINE: Family = Family(
    "taskpulse_task_deadline_timestamp_seconds",
    "When the task times out (start + timeoutSeconds), Unix seconds.",
);
const PREDICTED: Family = Family(
    "taskpulse_task_predicted_completion_timestamp_seconds",
    "Estimated finish of an in-flight task from its progress rate, Unix seconds.",
);
const WORKER_INFO: Family = Family(
    "taskpulse_task_worker_info",
    "The worker of an in-flight task's current attempt; always 1 (join on the task labels).",
);
const OMITTED: Family = Family(
    "taskpulse_task_series_omitted",
    "In-flight tasks with progress left out of the per-task series by --max-task-series.",
);
const TASKS: Family = Family("taskpulse_tasks", "Tracked non-terminal tasks.");
const STALLED: Family = Family(
    "taskpulse_tasks_stalled",
    "In-flight tasks whose progress hasn't moved for --stall-after.",
);
const PREDICTED_TIMEOUT: Family = Family(
    "taskpulse_tasks_predicted_timeout",
    "In-flight tasks predicted to finish after their deadline.",
);
const WAITING: Family = Family("taskpulse_wait_tasks", "WAIT tasks waiting.");
const OVERDUE: Family = Family(
    "taskpulse_wait_overdue_tasks",
    "WAIT tasks past their wake-up time plus --wait-grace.",
);
const DUE_NEXT_MINUTE: Family = Family(
    "taskpulse_wait_due_next_minute_tasks",
    "WAIT tasks due to wake within 60 seconds.",
);
const OLDEST_OVERDUE: Family = Family(
    "taskpulse_wait_oldest_overdue_seconds",
    "Lateness of the most overdue WAIT task, 0 if none.",
);
const WORKER_TASKS: Family = Family(
    "taskpulse_worker_tasks",
    "In-flight tasks last reported by each worker.",
);
const WORKER_SEEN: Family = Family(
    "taskpulse_worker_last_seen_timestamp_seconds",
    "When each worker last sent an update, Unix seconds.",
);

impl Family {
    fn header(&self, out: &mut String) {
        text::header(out, self.0, self.1, "gauge");
    }
}

/// Builds the state gauges on every scrape.
pub struct StateCollector {
    tracker: Arc<Tracker>,
    cfg: ScrapeConfig,
    leadership: Leadership,
    /// The WAIT queue as an engine source reads it from the engine's own queue; without one the
    /// WAIT gauges come from the updates taskpulse sees.
    wait_source: Option<WaitSource>,
}

/// Counts of one (workflow type, task type).
#[derive(Default)]
struct TypeCounts {
    by_status: [i64; Status::ALL.len()],
    stalled: i64,
    predicted_timeout: i64,
}

impl TypeCounts {
    fn add(&mut self, o: &TypeCounts) {
        for (a, b) in self.by_status.iter_mut().zip(o.by_status) {
            *a += b;
        }
        self.stalled += o.stalled;
        self.predicted_timeout += o.predicted_timeout;
    }
}

/// The address of an interned string, the cheap first-pass key (0 for none).
fn addr(s: Option<&Arc<str>>) -> usize {
    s.map_or(0, |s| Arc::as_ptr(s) as *const u8 as usize)
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// (workflow type, task type) by the strings' addresses, with the strings kept for the fold.
type ByTypeAddr = FastMap<(usize, usize), (Arc<str>, Arc<str>, TypeCounts)>;

/// The four per-task families, each written into its own buffer (a family's lines must be
/// together) and joined at the end.
#[derive(Default)]
struct PerTask {
    progress: String,
    deadline: String,
    predicted: String,
    worker: String,
    /// `{workflow_type="..",task_type="..",workflow_id="..",task_id=".."`, without the brace
    /// that closes it, reused for every task.
    labels: String,
}

impl PerTask {
    fn clear(&mut self) {
        self.progress.clear();
        self.deadline.clear();
        self.predicted.clear();
        self.worker.clear();
    }

    fn add(&mut self, st: &TaskState, predicted: Option<i64>) {
        let rec = &st.rec;
        let l = &mut self.labels;
        l.clear();
        l.push_str("{workflow_type=\"");
        text::label_value(l, rec.workflow_type.as_deref().unwrap_or(""));
        l.push_str("\",task_type=\"");
        text::label_value(l, &rec.task_type);
        l.push_str("\",workflow_id=\"");
        text::label_value(l, &rec.workflow_id);
        l.push_str("\",task_id=\"");
        text::label_value(l, &rec.task_id);
        l.push('"');
        let line = |out: &mut String, name: &str, v: f64| {
            out.push_str(name);
            out.push_str(l);
            out.push('}');
            text::value_f64(out, v);
        };
        if let Some(p) = rec.progress {
            line(&mut self.progress, PROGRESS.0, f64::from(p) / 100.0);
        }
        if let Some(d) = rec.deadline_ms() {
            line(&mut self.deadline, DEADLINE.0, d as f64 / 1000.0);
        }
        if let Some(c) = predicted {
            line(&mut self.predicted, PREDICTED.0, c as f64 / 1000.0);
        }
        if let Some(w) = &rec.worker_id {
            let out = &mut self.worker;
            out.push_str(WORKER_INFO.0);
            out.push_str(l);
            out.push_str(",worker_id=\"");
            text::label_value(out, w);
            out.push_str("\"} 1\n");
        }
    }

    fn write(&self, out: &mut String) {
        for (family, lines) in [
            (&PROGRESS, &self.progress),
            (&DEADLINE, &self.deadline),
            (&PREDICTED, &self.predicted),
            (&WORKER_INFO, &self.worker),
        ] {
            if !lines.is_empty() {
                family.header(out);
                out.push_str(lines);
            }
        }
    }
}

impl StateCollector {
    /// Only the leading replica exports the state gauges, so Prometheus never counts a task
    /// twice when several replicas share one store.
    pub fn new(
        tracker: Arc<Tracker>,
        cfg: ScrapeConfig,
        leadership: Leadership,
        wait_source: Option<WaitSource>,
    ) -> StateCollector {
        StateCollector {
            tracker,
            cfg,
            leadership,
            wait_source,
        }
    }
}

impl Collector for StateCollector {
    /// Appends the state gauges, in the text format, to `out`.
    fn write_text(&self, out: &mut String) {
        if !self.leadership.is_leader() {
            return;
        }
        let now = now_ms();
        let stall_ms = self.cfg.stall_after.as_millis() as i64;
        let grace_ms = self.cfg.wait_grace.as_millis() as i64;
        let cap = self.cfg.max_task_series;

        // First pass, keyed by string addresses: (workflow type, task type) -> counts, and
        // workflow type -> WAIT counts, worker -> in-flight tasks.
        let mut by_type = ByTypeAddr::default();
        let mut wait: FastMap<usize, (Arc<str>, WaitCounts)> = FastMap::default();
        let mut workers: FastMap<usize, (Arc<str>, i64)> = FastMap::default();
        let mut oldest_overdue_ms = 0i64;
        let empty: Arc<str> = Arc::from("");
        // Every in-flight task with progress, by age, in case the cap is exceeded.
        let mut candidates: Vec<(i64, Arc<str>)> = Vec::new();
        // Written as the walk goes while under the cap, which saves a second lookup per task
        // in the common case; thrown away if the cap turns out to be exceeded.
        let mut per_task = PerTask::default();

        self.tracker.for_each(|st| {
            let rec = &st.rec;
            if rec.status.is_terminal() {
                return;
            }
            let wf_addr = addr(rec.workflow_type.as_ref());
            if let Some(w) = &rec.worker_id {
                workers
                    .entry(addr(Some(w)))
                    .or_insert_with(|| (w.clone(), 0))
                    .1 += 1;
            }
            let key = (wf_addr, addr(Some(&rec.task_type)));
            let counts = &mut by_type
                .entry(key)
                .or_insert_with(|| {
                    (
                        rec.workflow_type.clone().unwrap_or_else(|| empty.clone()),
                        rec.task_type.clone(),
                        TypeCounts::default(),
                    )
                })
                .2;
            counts.by_status[rec.status as usize] += 1;
            if rec.is_waiting() {
                let c = &mut wait
                    .entry(wf_addr)
                    .or_insert_with(|| {
                        let wf = rec.workflow_type.clone().unwrap_or_else(|| empty.clone());
                        (wf, WaitCounts::default())
                    })
                    .1;
                if let Some(late) = c.add(rec.wait_until, now, grace_ms) {
                    oldest_overdue_ms = oldest_overdue_ms.max(late);
                }
                return;
            }
            if rec.progress.is_some() {
                if now - rec.progress_changed >= stall_ms {
                    counts.stalled += 1;
                }
                let predicted = st.predicted_completion(now, stall_ms);
                if let (Some(p), Some(d)) = (predicted, rec.deadline_ms()) {
                    if p > d {
                        counts.predicted_timeout += 1;
                    }
                }
                candidates.push((rec.first_seen, rec.task_id.clone()));
                if candidates.len() <= cap {
                    per_task.add(st, predicted);
                } else if candidates.len() == cap + 1 {
                    per_task.clear();
                }
            }
        });

        // 4.1 per task, capped: past the cap, the oldest tasks, looked up again.
        let omitted = candidates.len().saturating_sub(cap);
        if omitted > 0 && cap > 0 {
            candidates.select_nth_unstable_by(cap - 1, |a, b| a.cmp(b));
            candidates.truncate(cap);
            for (_, id) in &candidates {
                self.tracker.inspect(id, |st| {
                    if st.rec.is_in_flight() && st.rec.progress.is_some() {
                        per_task.add(st, st.predicted_completion(now, stall_ms));
                    }
                });
            }
        }
        per_task.write(out);
        OMITTED.header(out);
        text::sample_i64(out, OMITTED.0, &[], omitted as i64);

        // 4.2 aggregates, folded by content (and sorted, for a stable output).
        let mut types: BTreeMap<(Arc<str>, Arc<str>), TypeCounts> = BTreeMap::new();
        for (_, (wf, tt, c)) in by_type {
            types.entry((wf, tt)).or_default().add(&c);
        }
        if !types.is_empty() {
            TASKS.header(out);
            for ((wf, tt), c) in &types {
                for (status, n) in Status::ALL.iter().zip(c.by_status) {
                    if n > 0 {
                        let labels = [
                            ("workflow_type", &**wf),
                            ("task_type", &**tt),
                            ("status", status.as_str()),
                        ];
                        text::sample_i64(out, TASKS.0, &labels, n);
                    }
                }
            }
        }
        // Only types with in-flight (not WAIT) tasks have the in-flight gauges.
        let in_flight: Vec<_> = types
            .iter()
            .filter(|((_, tt), _)| &**tt != WAIT_TASK_TYPE)
            .collect();
        for (family, pick) in [
            (
                &STALLED,
                (|c: &TypeCounts| c.stalled) as fn(&TypeCounts) -> i64,
            ),
            (&PREDICTED_TIMEOUT, |c: &TypeCounts| c.predicted_timeout),
        ] {
            if in_flight.is_empty() {
                break;
            }
            family.header(out);
            for ((wf, tt), c) in &in_flight {
                let labels = [("workflow_type", &**wf), ("task_type", &**tt)];
                text::sample_i64(out, family.0, &labels, pick(c));
            }
        }

        // 4.3 WAIT queue
        let mut wait_by_wf: BTreeMap<Arc<str>, WaitCounts> = BTreeMap::new();
        match &self.wait_source {
            Some(source) => {
                let snap = source.borrow();
                for (wf, c) in &snap.by_workflow_type {
                    wait_by_wf.insert(Arc::from(wf.as_str()), *c);
                }
                oldest_overdue_ms = (snap.oldest_overdue_seconds * 1000.0) as i64;
            }
            None => {
                for (_, (wf, c)) in wait {
                    wait_by_wf.entry(wf).or_default().merge(&c);
                }
            }
        }
        for (family, pick) in [
            (
                &WAITING,
                (|c: &WaitCounts| c.waiting) as fn(&WaitCounts) -> i64,
            ),
            (&OVERDUE, |c: &WaitCounts| c.overdue),
            (&DUE_NEXT_MINUTE, |c: &WaitCounts| c.due_next_minute),
        ] {
            if wait_by_wf.is_empty() {
                break;
            }
            family.header(out);
            for (wf, c) in &wait_by_wf {
                text::sample_i64(out, family.0, &[("workflow_type", wf)], pick(c));
            }
        }
        OLDEST_OVERDUE.header(out);
        text::sample_f64(
            out,
            OLDEST_OVERDUE.0,
            &[],
            oldest_overdue_ms as f64 / 1000.0,
        );

        // 4.6 workers: every worker seen recently, with its in-flight task count.
        let mut tasks_of: HashMap<Arc<str>, i64> = HashMap::new();
        for (_, (w, n)) in workers {
            *tasks_of.entry(w).or_default() += n;
        }
        let seen: BTreeMap<Arc<str>, i64> = self.tracker.workers().into_iter().collect();
        if !seen.is_empty() {
            WORKER_TASKS.header(out);
            for w in seen.keys() {
                let n = tasks_of.get(w).copied().unwrap_or(0);
                text::sample_i64(out, WORKER_TASKS.0, &[("worker_id", w)], n);
            }
            WORKER_SEEN.header(out);
            for (w, at) in &seen {
                text::sample_f64(out, WORKER_SEEN.0, &[("worker_id", w)], *at as f64 / 1000.0);
            }
        }
    }
}
