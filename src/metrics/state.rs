//! Gauges generated from the current state at scrape time (`docs/metrics.md`: per task,
//! aggregates, the WAIT queue, workers).
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

use super::{text, Budget, Collector};
use crate::cardinality::OTHER;
use crate::leader::Leadership;
use crate::model::{Status, WAIT_TASK_TYPE};
use crate::now_ms;
use crate::pipeline::{addr, ByName, Entry, ReadAll, TaskState, Tracker};
use crate::wait::{WaitCounts, WaitSource};

/// Settings the state gauges depend on.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    pub stall_after: Duration,
    pub wait_grace: Duration,
    pub max_task_series: usize,
    /// `--max-label-values`: label sets from input kept per aggregate family.
    pub max_label_values: usize,
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
const FOLDED: Family = Family(
    "taskpulse_label_sets_folded",
    "Label sets from input folded into __other__ by --max-label-values in this scrape, by family (taskpulse_tasks also stands for the stalled and predicted-timeout gauges, taskpulse_wait_tasks for the other WAIT gauges, taskpulse_worker_tasks for the last-seen gauge).",
);

const TRACKED: Family = Family(
    "taskpulse_tracked_tasks",
    "Tasks this process keeps in memory, finished ones included (bounded by --max-tracked-tasks).",
);
const TRACKED_BYTES: Family = Family(
    "taskpulse_tracked_memory_bytes",
    "Estimated memory the tasks kept in memory take, as --max-tracked-memory counts it.",
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
    /// The per-task buffers of the last render, kept for their capacity: grown from empty each
    /// time (about 1 MB at the default cap) they were reallocated and copied a dozen times and
    /// their fresh pages faulted in, about a tenth of a render at 100,000 tasks. Bounded by
    /// `--max-task-series` and `--max-scrape-bytes`, not by the tasks tracked.
    buffers: std::sync::Mutex<PerTask>,
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

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// (workflow type, task type) by the strings' addresses, with the strings kept for the fold.
type ByTypeAddr = FastMap<(usize, usize), (Arc<str>, Arc<str>, TypeCounts)>;

/// Buffer lengths and the sample count of a [`PerTask`] at one point.
#[derive(Clone, Copy, Default)]
struct Mark([usize; 5]);

/// The four per-task families, each written into its own buffer (a family's lines must be
/// together) and joined at the end.
#[derive(Default)]
struct PerTask {
    progress: String,
    deadline: String,
    predicted: String,
    worker: String,
    /// Samples written.
    series: usize,
    /// `{workflow_type="..",task_type="..",workflow_id="..",task_id=".."`, without the brace
    /// that closes it, reused for every task.
    labels: String,
}

impl PerTask {
    fn clear(&mut self) {
        self.undo(Mark::default());
    }

    /// Where the buffers stand, to go back to with [`PerTask::undo`].
    fn mark(&self) -> Mark {
        Mark([
            self.progress.len(),
            self.deadline.len(),
            self.predicted.len(),
            self.worker.len(),
            self.series,
        ])
    }

    fn undo(&mut self, Mark(m): Mark) {
        self.progress.truncate(m[0]);
        self.deadline.truncate(m[1]);
        self.predicted.truncate(m[2]);
        self.worker.truncate(m[3]);
        self.series = m[4];
    }

    /// Whether what is written fits in `room` (with the four families' headers).
    fn fits(&self, room: &Budget) -> bool {
        let bytes = self.progress.len()
            + self.deadline.len()
            + self.predicted.len()
            + self.worker.len()
            + 4 * 200;
        self.series <= room.series && bytes <= room.bytes
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
        let mut series = 0;
        let mut line = |out: &mut String, name: &str, v: f64| {
            out.push_str(name);
            out.push_str(l);
            out.push('}');
            text::value_f64(out, v);
            series += 1;
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
            series += 1;
        }
        self.series += series;
    }

    fn write(&self, out: &mut String) {
        for (family, lines) in [
            (&PROGRESS, &self.progress),
            (&DEADLINE, &self.deadline),
            (&PREDICTED, &self.predicted),
            (&WORKER_INFO, &self.worker),
        ] {
            // the family even without series, so a dashboard naming it finds it
            family.header(out);
            out.push_str(lines);
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
            buffers: Default::default(),
        }
    }
}

impl Collector for StateCollector {
    /// Appends the state gauges, in the text format, to `out`, the per-task families within
    /// what `budget` leaves after the aggregates.
    fn write_text(&self, out: &mut String, budget: &mut Budget) {
        // What this process holds, on every replica: memory is per process.
        let start = out.len();
        for (family, v) in [
            (&TRACKED, self.tracker.len()),
            (&TRACKED_BYTES, self.tracker.tracked_bytes()),
        ] {
            family.header(out);
            text::sample_i64(out, family.0, &[], v as i64);
        }
        budget.series = budget.series.saturating_sub(2);
        budget.bytes = budget.bytes.saturating_sub(out.len() - start);
        if !self.leadership.is_leader() {
            return;
        }
        let now = now_ms();
        let table = self.tracker.read_all();
        let mut walk = self.walk(&table, now);
        // The aggregates first: what they take of the budget, the per-task families may not.
        let mut agg = String::with_capacity(16 * 1024);
        let max_values = self.cfg.max_label_values;
        let other: Arc<str> = Arc::from(OTHER);
        let folded = [
            write_types(
                &mut agg,
                std::mem::take(&mut walk.by_type),
                max_values,
                &other,
            ),
            self.write_wait(&mut agg, &mut walk, &other),
            self.write_workers(&mut agg, std::mem::take(&mut walk.workers), &other),
        ];
        FOLDED.header(&mut agg);
        for (family, n) in [TASKS.0, WAITING.0, WORKER_TASKS.0].iter().zip(folded) {
            text::sample_i64(&mut agg, FOLDED.0, &[("family", family)], n as i64);
        }
        let agg_series = samples_in(&agg) + 1; // and the omitted gauge
        let room = Budget {
            series: budget.series.saturating_sub(agg_series),
            bytes: budget.bytes.saturating_sub(agg.len() + 256),
        };
        let total = walk.candidates;
        let kept = self.keep_per_task(&mut walk, &room, now);
        let per_task = std::mem::take(&mut walk.per_task);
        drop(walk);
        drop(table); // writers go on while the text is put together
        let before = out.len();
        per_task.write(out);
        OMITTED.header(out);
        text::sample_i64(out, OMITTED.0, &[], (total - kept) as i64);
        out.push_str(&agg);
        budget.series = budget.series.saturating_sub(per_task.series + agg_series);
        budget.bytes = budget.bytes.saturating_sub(out.len() - before);
        *self.buffers.lock().unwrap_or_else(|e| e.into_inner()) = per_task;
    }
}

/// What one pass over the in-flight tasks gathers, keyed by string addresses:
/// (workflow type, task type) -> counts, workflow type -> WAIT counts, worker -> in-flight
/// tasks, and the per-task families.
#[derive(Default)]
struct Walk<'a> {
    by_type: ByTypeAddr,
    wait: ByName<WaitCounts>,
    workers: ByName<i64>,
    oldest_overdue_ms: i64,
    /// In-flight tasks with progress: the candidates for per-task series.
    candidates: usize,
    /// The oldest of them, as many as the cap keeps, in case it is exceeded.
    oldest: Oldest<'a>,
    /// Written as the walk goes while under the cap, which saves a second lookup per task in
    /// the common case; thrown away if the cap turns out to be exceeded.
    per_task: PerTask,
    /// Whether `per_task` was written as the walk went (the table was within the cap).
    eager: bool,
}

/// The oldest in-flight tasks (by first sight, then where their id lives), as many as
/// `--max-task-series` keeps: a max-heap whose top is the youngest kept. In the walk's (hash)
/// order a task enters it about cap × ln(tasks / cap) times in all.
///
/// The heap holds references into the read-locked table ([`ReadAll`]), not copies of the ids:
/// cloning an id touched its reference count, a cache miss per entering task, and the kept
/// tasks had to be looked up again after the walk.
///
/// Ties (tasks first seen in the same millisecond, common when they arrive in batches) are
/// broken by the address of the task's id, not by the id itself: comparing ids read each one
/// from the heap, which was half of a scrape at 100,000 tasks. The address is as stable as the
/// id while the task stays in memory, so the same tasks are kept scrape after scrape.
#[derive(Default)]
struct Oldest<'a>(std::collections::BinaryHeap<Kept<'a>>);

/// A task in [`Oldest`], ordered by (first sight, id address) alone.
struct Kept<'a> {
    key: (i64, usize),
    entry: &'a Entry,
}

impl PartialEq for Kept<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Kept<'_> {}

impl PartialOrd for Kept<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl<'a> Oldest<'a> {
    fn offer(&mut self, cap: usize, first_seen: i64, id: &Arc<str>, entry: &'a Entry) {
        let key = (first_seen, addr(Some(id)));
        if self.0.len() < cap {
            self.0.push(Kept { key, entry });
            return;
        }
        let Some(mut top) = self.0.peek_mut() else {
            return; // a cap of 0 keeps none
        };
        if key < top.key {
            *top = Kept { key, entry };
        }
    }

    /// Oldest first.
    fn into_sorted(self) -> Vec<Kept<'a>> {
        self.0.into_sorted_vec()
    }
}

impl StateCollector {
    /// One pass over the table, one shard at a time.
    fn walk<'a>(&self, table: &'a ReadAll<'_>, now: i64) -> Walk<'a> {
        let stall_ms = self.cfg.stall_after.as_millis() as i64;
        let grace_ms = self.cfg.wait_grace.as_millis() as i64;
        let cap = self.cfg.max_task_series;
        // Lines are written as the walk goes only when every task could be kept: past the cap
        // they would be thrown away (at 100,000 tasks, the first 2,000 tasks' lines each scrape).
        let eager = self.tracker.len() <= cap;
        let empty: Arc<str> = Arc::from("");
        let mut per_task =
            std::mem::take(&mut *self.buffers.lock().unwrap_or_else(|e| e.into_inner()));
        per_task.clear();
        let mut w = Walk {
            eager,
            per_task,
            ..Walk::default()
        };
        for (id, e) in table.iter() {
            let hot = &e.hot;
            if hot.status.is_terminal() {
                continue;
            }
            if hot.worker != 0 {
                *w.workers.entry(hot.worker, || e.rec.worker_id.clone()) += 1;
            }
            let counts = &mut w
                .by_type
                .entry((hot.workflow_type, hot.task_type))
                .or_insert_with(|| {
                    (
                        e.rec.workflow_type.clone().unwrap_or_else(|| empty.clone()),
                        e.rec.task_type.clone(),
                        TypeCounts::default(),
                    )
                })
                .2;
            counts.by_status[hot.status as usize] += 1;
            if hot.waiting {
                let c = w
                    .wait
                    .entry(hot.workflow_type, || e.rec.workflow_type.clone());
                if let Some(late) = c.add(hot.wait_until(), now, grace_ms) {
                    w.oldest_overdue_ms = w.oldest_overdue_ms.max(late);
                }
                continue;
            }
            if hot.has_progress {
                if hot.progress_stalled(now, stall_ms) {
                    counts.stalled += 1;
                }
                let predicted = hot.predicted_completion(now, stall_ms);
                if hot.predicted_late(predicted) {
                    counts.predicted_timeout += 1;
                }
                w.candidates += 1;
                if eager && w.candidates <= cap {
                    w.per_task.add(e, predicted);
                } else if w.candidates == cap + 1 {
                    w.per_task.clear();
                }
                w.oldest.offer(cap, hot.first_seen, id, e);
            }
        }
        w
    }

    /// The WAIT queue, by workflow type (the engine's own queue when it reads one); how many
    /// workflow types were folded.
    fn write_wait(&self, agg: &mut String, walk: &mut Walk, other: &Arc<str>) -> usize {
        let mut wait_by_wf: BTreeMap<Arc<str>, WaitCounts> = BTreeMap::new();
        let mut oldest_overdue_ms = walk.oldest_overdue_ms;
        match &self.wait_source {
            Some(source) => {
                let snap = source.borrow();
                for (wf, c) in &snap.by_workflow_type {
                    wait_by_wf.insert(Arc::from(wf.as_str()), *c);
                }
                oldest_overdue_ms = (snap.oldest_overdue_seconds * 1000.0) as i64;
            }
            None => {
                wait_by_wf = std::mem::take(&mut walk.wait).by_content(|a, b| a.merge(b));
            }
        }
        let (wait_by_wf, folded) = keep_largest(
            wait_by_wf,
            self.cfg.max_label_values,
            |c| c.waiting,
            || other.clone(),
            |a, b| a.merge(b),
        );
        for (family, pick) in [
            (
                &WAITING,
                (|c: &WaitCounts| c.waiting) as fn(&WaitCounts) -> i64,
            ),
            (&OVERDUE, |c: &WaitCounts| c.overdue),
            (&DUE_NEXT_MINUTE, |c: &WaitCounts| c.due_next_minute),
        ] {
            family.header(agg);
            for (wf, c) in &wait_by_wf {
                text::sample_i64(agg, family.0, &[("workflow_type", wf)], pick(c));
            }
        }
        OLDEST_OVERDUE.header(agg);
        text::sample_f64(
            agg,
            OLDEST_OVERDUE.0,
            &[],
            oldest_overdue_ms as f64 / 1000.0,
        );
        folded
    }

    /// Workers seen recently (`--worker-expiry`), with their in-flight tasks: the busiest kept;
    /// how many were folded.
    fn write_workers(&self, agg: &mut String, workers: ByName<i64>, other: &Arc<str>) -> usize {
        let tasks_of = workers.by_content(|a, b| *a += b);
        let seen: BTreeMap<Arc<str>, (i64, i64)> = self
            .tracker
            .workers()
            .into_iter()
            .map(|(w, at)| {
                let n = tasks_of.get(&w).copied().unwrap_or(0);
                (w, (n, at))
            })
            .collect();
        let (seen, folded) = keep_largest(
            seen,
            self.cfg.max_label_values,
            |(n, at)| n.saturating_mul(1 << 42).saturating_add(*at / 1000),
            || other.clone(),
            |a, b| *a = (a.0 + b.0, a.1.max(b.1)),
        );
        WORKER_TASKS.header(agg);
        for (w, (n, _)) in &seen {
            text::sample_i64(agg, WORKER_TASKS.0, &[("worker_id", w)], *n);
        }
        WORKER_SEEN.header(agg);
        for (w, (_, at)) in &seen {
            text::sample_f64(agg, WORKER_SEEN.0, &[("worker_id", w)], *at as f64 / 1000.0);
        }
        folded
    }

    /// The per-task families, capped by `--max-task-series` and by what the budget leaves:
    /// past either, the oldest whole tasks, from the walk's heap. How many tasks are kept.
    fn keep_per_task(&self, walk: &mut Walk, room: &Budget, now: i64) -> usize {
        let cap = self.cfg.max_task_series;
        let stall_ms = self.cfg.stall_after.as_millis() as i64;
        // taken, so the shards the heap holds are let go however this returns
        let oldest = std::mem::take(&mut walk.oldest);
        let per_task = &mut walk.per_task;
        if walk.eager && walk.candidates <= cap && per_task.fits(room) {
            return walk.candidates;
        }
        per_task.clear();
        let mut kept = 0;
        for task in oldest.into_sorted() {
            let mark = per_task.mark();
            let st = task.entry;
            per_task.add(st, st.predicted_completion(now, stall_ms));
            if !per_task.fits(room) {
                per_task.undo(mark);
                break;
            }
            kept += 1;
        }
        kept
    }
}

/// Tasks by (workflow type, task type), folded by content, then the largest groups kept, and
/// the in-flight gauges of the types with in-flight (not WAIT) tasks; how many were folded.
fn write_types(
    agg: &mut String,
    by_type: ByTypeAddr,
    max_values: usize,
    other: &Arc<str>,
) -> usize {
    let mut types: BTreeMap<(Arc<str>, Arc<str>), TypeCounts> = BTreeMap::new();
    for (_, (wf, tt, c)) in by_type {
        types.entry((wf, tt)).or_default().add(&c);
    }
    let (types, folded) = keep_largest(
        types,
        max_values,
        |c| c.by_status.iter().sum(),
        || (other.clone(), other.clone()),
        |a, b| a.add(b),
    );
    TASKS.header(agg);
    for ((wf, tt), c) in &types {
        for (status, n) in Status::ALL.iter().zip(c.by_status) {
            if n > 0 {
                let labels = [
                    ("workflow_type", &**wf),
                    ("task_type", &**tt),
                    ("status", status.as_str()),
                ];
                text::sample_i64(agg, TASKS.0, &labels, n);
            }
        }
    }
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
        family.header(agg);
        for ((wf, tt), c) in &in_flight {
            let labels = [("workflow_type", &**wf), ("task_type", &**tt)];
            text::sample_i64(agg, family.0, &labels, pick(c));
        }
    }
    folded
}

/// The number of samples in some exposition text (lines that are not comments).
fn samples_in(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

/// Keeps the `max` entries of largest `weight` (the rest merged into one under `other_key`),
/// in key order; returns them and how many were folded.
fn keep_largest<K: Ord + Clone, V: Default>(
    entries: BTreeMap<K, V>,
    max: usize,
    weight: impl Fn(&V) -> i64,
    other_key: impl FnOnce() -> K,
    merge: impl Fn(&mut V, &V),
) -> (BTreeMap<K, V>, usize) {
    if entries.len() <= max {
        return (entries, 0);
    }
    let mut all: Vec<(K, V)> = entries.into_iter().collect();
    // largest first, ties by key, so the kept set is the same scrape after scrape
    all.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then_with(|| a.0.cmp(&b.0)));
    let rest = all.split_off(max.saturating_sub(1));
    let folded = rest.len();
    let mut merged = V::default();
    for (_, v) in &rest {
        merge(&mut merged, v);
    }
    let mut kept: BTreeMap<K, V> = all.into_iter().collect();
    merge(kept.entry(other_key()).or_default(), &merged);
    (kept, folded)
}
