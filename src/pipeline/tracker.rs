//! The in-memory table of tracked tasks, and the hot path through it.
//!
//! Every accepted update is applied here first and is visible at once to `/metrics` and the read
//! API. Applying an update takes only that task's shard of a `DashMap` (no global lock) and
//! decides which store write it needs:
//!
//! - a new task, a status change or a terminal update: written at once, and the update is
//!   answered only after the commit (so an acknowledged completion survives a crash);
//! - a progress-only update: through the [`Throttle`], written now or coalesced.
//!
//! Ops are sent to the writer while the task's entry is held, so the writer sees each task's
//! writes in the order they were decided: a coalesced progress value can never be written after
//! the task's terminal write.
//!
//! What the table does besides (loading from the store, following it, eviction, sweeping and
//! reads) is in [`super::memory`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{oneshot, Notify};

use super::interner::Interner;
use super::metrics::PipelineMetrics;
use super::task::{diff, event, Applied, TaskState};
use crate::ingest::TaskUpdate;
use crate::lifecycle::{self, Current, Rejection, Verdict};
use crate::model::{Attempt, Outcome, TaskEvent, TaskRecord, WAIT_TASK_TYPE};
use crate::now_ms;
use crate::store::{Commit, Op, WriteKind, WriterHandle};
use crate::throttle::{Flush, Flushed, Pending, ProgressWrite, Throttle};
use crate::wait::WaitMetrics;

/// Rejected updates recorded in a task's history, at most; the counter still counts them all.
const MAX_REJECTIONS_LOGGED: u8 = 20;

/// The table, with what it needs to decide and hand off writes.
pub struct Tracker {
    pub(crate) tasks: DashMap<Arc<str>, TaskState>,
    pub(crate) names: Interner,
    /// Worker id -> last time an update named it (epoch ms).
    pub(crate) workers: DashMap<Arc<str>, i64>,
    pub(crate) throttle: Throttle,
    pub(crate) writer: WriterHandle,
    pub(crate) metrics: PipelineMetrics,
    wait_metrics: WaitMetrics,
    /// Measure WAIT wake-up lag from the updates seen (off when an engine source reads it from
    /// the engine's own queue, so nothing is counted twice).
    wait_lag_from_updates: AtomicBool,
    /// `--max-tracked-tasks`: tasks kept in memory, at most (see [`Tracker::evict_over_cap`]).
    pub(crate) max_tracked: usize,
    /// Woken when a new task puts the table far over the cap, so the sweeper evicts at once
    /// instead of at its next tick; the request that noticed does no scanning itself.
    pub(crate) evict_now: Notify,
}

/// How far over `--max-tracked-tasks` the table may grow between sweeps before a new task wakes
/// the sweeper early: a tenth of the cap, so a full eviction scan runs at most once per
/// cap/10 new tasks (amortized O(10) per insert) and never on the request path.
fn slack(cap: usize) -> usize {
    (cap / 10).max(1)
}

impl Tracker {
    pub fn new(
        throttle: Throttle,
        writer: WriterHandle,
        metrics: PipelineMetrics,
        wait_metrics: WaitMetrics,
    ) -> Tracker {
        Tracker {
            tasks: DashMap::new(),
            names: Interner::default(),
            workers: DashMap::new(),
            throttle,
            writer,
            metrics,
            wait_metrics,
            wait_lag_from_updates: AtomicBool::new(true),
            max_tracked: usize::MAX,
            evict_now: Notify::new(),
        }
    }

    /// Caps the tasks kept in memory (`--max-tracked-tasks`).
    pub fn with_max_tracked(mut self, cap: usize) -> Tracker {
        self.max_tracked = cap.max(1);
        self
    }

    /// WAIT wake-up lag is measured by an engine source from the engine's own queue.
    pub fn wait_lag_measured_elsewhere(&self) {
        self.wait_lag_from_updates.store(false, Ordering::Relaxed);
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// Called after a new task entered memory (no entry held: `len` reads every shard).
    pub(crate) fn check_cap(&self) {
        if self.max_tracked != usize::MAX
            && self.tasks.len() > self.max_tracked.saturating_add(slack(self.max_tracked))
        {
            self.evict_now.notify_one();
        }
    }

    /// Applies one validated update.
    pub fn apply(&self, u: &TaskUpdate) -> Applied {
        let now = now_ms();
        if let Some(w) = &u.worker_id {
            self.touch_worker(w, now);
        }
        if let Some(mut entry) = self.tasks.get_mut(u.task_id.as_str()) {
            let id = entry.key().clone();
            return self.apply_existing(&id, entry.value_mut(), u, now);
        }
        let Some(task_type) = u.task_type.as_deref() else {
            return Applied::Rejected(Rejection::Invalid(
                "missing `taskType` (or `taskDefName`), required when a task is first seen".into(),
            ));
        };
        let id: Arc<str> = Arc::from(u.task_id.as_str());
        let task_type = self.names.get(task_type);
        match self.tasks.entry(id.clone()) {
            // Another request created it between our lookup and now.
            dashmap::Entry::Occupied(mut e) => self.apply_existing(&id, e.get_mut(), u, now),
            dashmap::Entry::Vacant(v) => {
                let rec = TaskRecord {
                    task_id: id.clone(),
                    workflow_id: self.names.get(&u.workflow_id),
                    task_type,
                    workflow_type: u.workflow_type.as_deref().map(|s| self.names.get(s)),
                    reference_task_name: u.reference_task_name.as_deref().map(Arc::from),
                    seq: u.seq,
                    iteration: u.iteration,
                    retry_count: u.retry_count,
                    status: u.status,
                    progress: u.progress,
                    progress_message: u.progress_message.as_deref().map(Arc::from),
                    worker_id: u.worker_id.as_deref().map(|s| self.names.get(s)),
                    start_time: u.start_time,
                    update_time: u.update_time,
                    timeout_seconds: u.timeout_seconds,
                    response_timeout_seconds: u.response_timeout_seconds,
                    wait_until: u.wait_until,
                    first_seen: now,
                    last_seen: now,
                    progress_changed: now,
                    terminal_at: None,
                };
                let mut st = TaskState::new(rec);
                st.attempt_dirty = st.rec.worker_id.is_some();
                let mut entry = v.insert(st);
                let st = entry.value_mut();
                if st.rec.status.is_terminal() {
                    self.on_terminal(&mut st.rec, u.update_time, now);
                }
                let event = event(&st.rec, None, Outcome::Accepted, None, now);
                let commit = self.write_now(&id, st, now, Some(event));
                drop(entry);
                self.check_cap();
                Applied::Accepted { commit }
            }
        }
    }

    fn apply_existing(
        &self,
        id: &Arc<str>,
        st: &mut TaskState,
        u: &TaskUpdate,
        now: i64,
    ) -> Applied {
        let current = Current {
            status: st.rec.status,
            update_time: st.rec.update_time,
        };
        match lifecycle::decide(current, u.status, u.update_time, diff(&st.rec, u)) {
            Verdict::Duplicate => Applied::Duplicate,
            Verdict::Reject(r) => {
                if let Rejection::Terminal { from, to } = r {
                    self.metrics.transition_rejected(from, to);
                }
                if st.rejections_logged < MAX_REJECTIONS_LOGGED {
                    st.rejections_logged += 1;
                    let mut attempted = st.rec.clone();
                    attempted.status = u.status;
                    attempted.progress = u.progress;
                    attempted.update_time = u.update_time;
                    attempted.worker_id = u.worker_id.as_deref().map(Arc::from);
                    self.writer.send(Op::Event(event(
                        &attempted,
                        Some(st.rec.status),
                        Outcome::Rejected,
                        Some(r.reason()),
                        now,
                    )));
                }
                Applied::Rejected(r)
            }
            Verdict::Accept { status_changed } => {
                let from = st.rec.status;
                let message_changed = self.merge(st, u, now);
                if status_changed {
                    if st.rec.status.is_terminal() {
                        self.on_terminal(&mut st.rec, u.update_time, now);
                    }
                    let event = event(&st.rec, Some(from), Outcome::Accepted, None, now);
                    let commit = self.write_now(id, st, now, Some(event));
                    return Applied::Accepted { commit };
                }
                if st.attempt_dirty {
                    // A new worker or attempt: recorded at once (rare, and what an operator
                    // looks for after a worker is gone), without waiting for the commit.
                    self.throttle.note_write(id);
                    self.send_task(st, WriteKind::Status, now, None, None);
                    self.metrics.progress_updates(true);
                    return Applied::Accepted { commit: None };
                }
                self.metrics
                    .progress_updates(self.progress_write(id, st, message_changed));
                Applied::Accepted { commit: None }
            }
        }
    }

    /// Folds an accepted update into the record. Fields the update doesn't carry keep their
    /// stored value. Returns whether the progress message changed.
    fn merge(&self, st: &mut TaskState, u: &TaskUpdate, now: i64) -> bool {
        if let Some(p) = u.progress {
            st.sample(u.update_time.unwrap_or(now), p);
        }
        st.touched = now;
        let r = &mut st.rec;
        r.status = u.status;
        r.last_seen = now;
        if u.progress.is_some() && u.progress != r.progress {
            r.progress = u.progress;
            r.progress_changed = now;
        }
        let mut message_changed = false;
        if let Some(m) = &u.progress_message {
            if r.progress_message.as_deref() != Some(m.as_str()) {
                r.progress_message = Some(Arc::from(m.as_str()));
                r.progress_changed = now;
                message_changed = true;
            }
        }
        if let Some(w) = &u.worker_id {
            if r.worker_id.as_deref() != Some(w.as_str()) {
                r.worker_id = Some(self.names.get(w));
                st.attempt_dirty = true;
            }
        }
        if u.retry_count.is_some() && u.retry_count != r.retry_count {
            r.retry_count = u.retry_count;
            st.attempt_dirty |= r.worker_id.is_some();
        }
        if let Some(t) = u.task_type.as_deref() {
            if &*r.task_type != t {
                r.task_type = self.names.get(t);
            }
        }
        if let Some(t) = u.workflow_type.as_deref() {
            if r.workflow_type.as_deref() != Some(t) {
                r.workflow_type = Some(self.names.get(t));
            }
        }
        if let Some(n) = u.reference_task_name.as_deref() {
            if r.reference_task_name.as_deref() != Some(n) {
                r.reference_task_name = Some(Arc::from(n));
            }
        }
        r.seq = u.seq.or(r.seq);
        r.iteration = u.iteration.or(r.iteration);
        r.start_time = u.start_time.or(r.start_time);
        r.update_time = u.update_time.max(r.update_time);
        r.timeout_seconds = u.timeout_seconds.or(r.timeout_seconds);
        r.response_timeout_seconds = u.response_timeout_seconds.or(r.response_timeout_seconds);
        r.wait_until = u.wait_until.or(r.wait_until);
        message_changed
    }

    /// Sends the task's current state to the writer now, carrying any waiting progress and the
    /// history event (written only if the row is), and returns the commit to wait for.
    fn write_now(
        &self,
        id: &Arc<str>,
        st: &mut TaskState,
        now: i64,
        event: Option<TaskEvent>,
    ) -> Option<oneshot::Receiver<Commit>> {
        self.throttle.note_write(id);
        let (ack, rx) = oneshot::channel();
        self.send_task(st, WriteKind::Status, now, Some(ack), event);
        Some(rx)
    }

    pub(crate) fn send_task(
        &self,
        st: &mut TaskState,
        kind: WriteKind,
        now: i64,
        ack: Option<oneshot::Sender<Commit>>,
        event: Option<TaskEvent>,
    ) {
        let attempt = if std::mem::take(&mut st.attempt_dirty) {
            st.rec.worker_id.clone().map(|w| Attempt {
                task_id: st.rec.task_id.clone(),
                attempt: st.rec.retry_count.unwrap_or(0),
                worker_id: w,
                first_seen: now,
                last_seen: now,
            })
        } else {
            None
        };
        st.pending = Pending::Clean;
        st.written_progress = st.rec.progress;
        self.writer.send(Op::Task {
            rec: st.rec.clone(),
            kind,
            attempt,
            event,
            ack,
        });
    }

    /// A progress-only update: write now, or coalesce. Returns whether it was written.
    fn progress_write(&self, id: &Arc<str>, st: &mut TaskState, message_changed: bool) -> bool {
        let now = st.rec.last_seen;
        match self.throttle.progress(
            id,
            st.written_progress,
            st.rec.progress,
            message_changed || st.attempt_dirty,
        ) {
            ProgressWrite::Now => {
                self.send_task(st, WriteKind::Progress, now, None, None);
                true
            }
            ProgressWrite::After(delay) => {
                if st.pending != Pending::Timed {
                    st.pending = Pending::Timed;
                    self.throttle.schedule(id.clone(), delay);
                }
                false
            }
            ProgressWrite::WithNextWrite => {
                if st.pending == Pending::Clean {
                    st.pending = Pending::Untimed;
                }
                false
            }
        }
    }

    /// Bookkeeping when a task finishes: its duration and, for WAIT tasks, the wake-up lag. The
    /// end is the terminal update's own `updateTime`, or its arrival when it has none (the
    /// stored `updateTime` may be an earlier update's).
    fn on_terminal(&self, rec: &mut TaskRecord, update_time: Option<i64>, now: i64) {
        rec.terminal_at = Some(now);
        let end = update_time.unwrap_or(now);
        let start = rec.start_time.filter(|t| *t > 0).unwrap_or(rec.first_seen);
        if end >= start {
            self.metrics
                .task_duration_seconds
                .with_label_values(&[&rec.task_type, rec.status.as_str()])
                .observe((end - start) as f64 / 1000.0);
        }
        if self.wait_lag_from_updates.load(Ordering::Relaxed)
            && &*rec.task_type == WAIT_TASK_TYPE
            && rec.status.is_successful()
        {
            if let Some(wake) = rec.wait_until {
                self.wait_metrics.woke(
                    rec.workflow_type.as_deref().unwrap_or(""),
                    (end - wake) as f64 / 1000.0,
                );
            }
        }
    }

    fn touch_worker(&self, worker: &str, now: i64) {
        if let Some(mut seen) = self.workers.get_mut(worker) {
            *seen = (*seen).max(now);
            return;
        }
        self.workers.insert(self.names.get(worker), now);
    }
}

impl Flush for Tracker {
    fn flush(&self, task_id: &Arc<str>) -> Flushed {
        let Some(mut entry) = self.tasks.get_mut(&**task_id) else {
            return Flushed::Done;
        };
        let st = entry.value_mut();
        if st.pending != Pending::Timed || st.rec.status.is_terminal() {
            return Flushed::Done;
        }
        match self.throttle.acquire(task_id) {
            ProgressWrite::Now => {
                self.send_task(st, WriteKind::Progress, now_ms(), None, None);
                Flushed::Done
            }
            ProgressWrite::After(d) => Flushed::Retry(d),
            ProgressWrite::WithNextWrite => Flushed::Done,
        }
    }
}
