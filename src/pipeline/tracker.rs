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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{oneshot, Notify};

use super::interner::{IdHasher, Interner};
use super::metrics::PipelineMetrics;
use super::task::{diff, event, footprint, Applied, Entry, TaskState, WrittenProgress};
use crate::ingest::TaskUpdate;
use crate::lifecycle::{self, Current, Incoming, Rejection, Verdict};
use crate::model::{
    Outcome, ReopenKind, TaskEvent, TaskRecord, ATTEMPTS_KEPT, HISTORY_KEPT, WAIT_TASK_TYPE,
};
use crate::now_ms;
use crate::store::{Commit, Op, WriteKind, WriterHandle};
use crate::throttle::{Flush, Flushed, Pending, ProgressWrite, Throttle};
use crate::wait::WaitMetrics;

/// The table, with what it needs to decide and hand off writes.
pub struct Tracker {
    pub(crate) tasks: DashMap<Arc<str>, Entry, IdHasher>,
    pub(crate) names: Interner,
    /// Worker id -> last time an update named it (epoch ms).
    pub(crate) workers: DashMap<Arc<str>, i64, IdHasher>,
    pub(crate) throttle: Throttle,
    pub(crate) writer: WriterHandle,
    pub(crate) metrics: PipelineMetrics,
    wait_metrics: WaitMetrics,
    /// Measure WAIT wake-up lag from the updates seen (off when an engine source reads it from
    /// the engine's own queue, so nothing is counted twice).
    wait_lag_from_updates: AtomicBool,
    /// `--max-tracked-tasks`: tasks kept in memory, at most (see [`Tracker::evict_over_cap`]).
    pub(crate) max_tracked: usize,
    /// `--max-clock-skew`, in ms.
    max_clock_skew_ms: i64,
    /// About how many bytes the tracked tasks take ([`footprint`]), and the bound on it
    /// (`--max-tracked-memory`).
    pub(crate) bytes: AtomicUsize,
    pub(crate) max_bytes: usize,
    /// Woken when a new task puts the table far over the cap, so the sweeper evicts at once
    /// instead of at its next tick; the request that noticed does no scanning itself.
    pub(crate) evict_now: Notify,
    /// Updates accepted since start ([`Tracker::accepted`]).
    accepted: AtomicU64,
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
            tasks: DashMap::with_hasher(IdHasher::default()),
            names: Interner::default(),
            workers: DashMap::with_hasher(IdHasher::default()),
            throttle,
            writer,
            metrics,
            wait_metrics,
            wait_lag_from_updates: AtomicBool::new(true),
            max_tracked: usize::MAX,
            max_clock_skew_ms: i64::MAX,
            bytes: AtomicUsize::new(0),
            max_bytes: usize::MAX,
            evict_now: Notify::new(),
            accepted: AtomicU64::new(0),
        }
    }

    /// Bounds the memory the tracked tasks take (`--max-tracked-memory`), as [`footprint`]
    /// counts it; past it tasks leave memory as past `--max-tracked-tasks`.
    pub fn with_max_tracked_memory(mut self, bytes: usize) -> Tracker {
        self.max_bytes = bytes.max(1);
        self
    }

    /// About how many bytes the tracked tasks take.
    pub fn tracked_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts a task's entry again after it changed (or was just made), and refreshes what a
    /// scrape reads of it: every change of an entry ends here.
    pub(crate) fn resize(&self, e: &mut Entry) {
        e.refresh();
        let st: &mut TaskState = e;
        let new = footprint(st) as u32;
        if new > st.size {
            self.bytes
                .fetch_add((new - st.size) as usize, Ordering::Relaxed);
        } else if new < st.size {
            self.bytes
                .fetch_sub((st.size - new) as usize, Ordering::Relaxed);
        }
        st.size = new;
    }

    /// A task's entry left the table.
    pub(crate) fn forget_size(&self, st: &TaskState) {
        self.bytes.fetch_sub(st.size as usize, Ordering::Relaxed);
    }

    /// Bounds how far ahead of taskpulse's clock an update's times may be
    /// (`--max-clock-skew`; see [`Tracker::apply`]).
    pub fn with_max_clock_skew(mut self, skew: std::time::Duration) -> Tracker {
        self.max_clock_skew_ms = i64::try_from(skew.as_millis()).unwrap_or(i64::MAX);
        self
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
        let over_count = self.max_tracked != usize::MAX
            && self.tasks.len() > self.max_tracked.saturating_add(slack(self.max_tracked));
        let over_bytes = self.max_bytes != usize::MAX
            && self.tracked_bytes() > self.max_bytes.saturating_add(slack(self.max_bytes));
        if over_count || over_bytes {
            self.evict_now.notify_one();
        }
    }

    /// Applies one validated update.
    ///
    /// `updateTime` is taken as the sender's clock says, but never ahead of taskpulse's: a
    /// time from the future would make every later update look stale. A non-terminal update
    /// more than `--max-clock-skew` ahead is rejected (`clock_skew`); a terminal one, and any
    /// update less far ahead, has its `updateTime` set to taskpulse's clock, so a fast clock
    /// never blocks a later update, and a terminal update is never lost to one.
    pub fn apply(&self, u: &TaskUpdate) -> Applied {
        let applied = self.apply_known(u).unwrap_or_else(|| self.apply_new(u));
        self.count(applied)
    }

    /// [`Tracker::apply`] for a task memory holds; `None`, changing nothing, for one it doesn't
    /// (the pipeline brings such tasks back from the store first). One lookup of the id where
    /// asking first and applying after took two.
    pub fn apply_if_known(&self, u: &TaskUpdate) -> Option<Applied> {
        self.apply_known(u).map(|applied| self.count(applied))
    }

    fn count(&self, applied: Applied) -> Applied {
        if matches!(applied, Applied::Accepted { .. }) {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// How many updates memory has accepted since start: the live views' cheap "anything new?"
    /// check (one relaxed increment per update, nothing kept per update).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn apply_known(&self, u: &TaskUpdate) -> Option<Applied> {
        let mut entry = self.tasks.get_mut(u.task_id.as_str())?;
        let now = now_ms();
        let times = match self.times(u, now) {
            Ok(t) => t,
            Err(r) => return Some(Applied::Rejected(r)),
        };
        let (id, e) = entry.pair_mut();
        Some(self.apply_existing(id, e, u, times, now))
    }

    /// A task memory doesn't hold: made from the update, unless another request made it first.
    fn apply_new(&self, u: &TaskUpdate) -> Applied {
        let now = now_ms();
        let times = match self.times(u, now) {
            Ok(t) => t,
            Err(r) => return Applied::Rejected(r),
        };
        let Some(task_type) = u.task_type.as_deref() else {
            return Applied::Rejected(Rejection::Invalid(
                "missing `taskType` (or `taskDefName`), required when a task is first seen".into(),
            ));
        };
        let id: Arc<str> = Arc::from(u.task_id.as_str());
        let task_type = self.names.get(task_type);
        match self.tasks.entry(id.clone()) {
            // Another request created it between our lookup and now.
            dashmap::Entry::Occupied(mut e) => self.apply_existing(&id, e.get_mut(), u, times, now),
            dashmap::Entry::Vacant(v) => {
                if let Some(w) = &u.worker_id {
                    self.touch_worker(w, now);
                }
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
                    update_time: times.update,
                    timeout_seconds: u.timeout_seconds,
                    response_timeout_seconds: u.response_timeout_seconds,
                    wait_until: u.wait_until,
                    parent_task_id: u.parent_task_id.as_deref().map(Arc::from),
                    iteration_value: u.iteration_value.as_deref().map(Arc::from),
                    end_time: None,
                    reopened_at: None,
                    first_seen: now,
                    last_seen: now,
                    progress_changed: now,
                    terminal_at: None,
                };
                let mut st = Entry::new(rec);
                st.note_attempt(now);
                st.note_reported(&u.attempts, now, |w| self.names.get(w));
                let mut entry = v.insert(st);
                let st = entry.value_mut();
                if st.rec.status.is_terminal() {
                    self.on_terminal(&mut st.rec, u.update_time, now);
                }
                let event = event(&st.rec, None, Outcome::Accepted, None, now);
                let commit = self.write_now(st, now, Some(event));
                self.resize(st);
                drop(entry);
                self.check_cap();
                Applied::Accepted { commit }
            }
        }
    }

    /// The update's engine times as taken (see [`Tracker::apply`]).
    fn times(&self, u: &TaskUpdate, now: i64) -> Result<Times, Rejection> {
        if let Some(t) = u.update_time {
            let ahead = t.saturating_sub(now);
            if ahead > self.max_clock_skew_ms && !u.status.is_terminal() {
                return Err(Rejection::ClockSkew {
                    ahead_ms: ahead,
                    limit_ms: self.max_clock_skew_ms,
                });
            }
        }
        Ok(Times {
            update: u.update_time.map(|t| t.min(now)),
        })
    }

    fn apply_existing(
        &self,
        id: &Arc<str>,
        e: &mut Entry,
        u: &TaskUpdate,
        times: Times,
        now: i64,
    ) -> Applied {
        let st: &mut TaskState = e;
        // A time stored from before clocks were bounded counts as now at the latest.
        let update_time = st.rec.update_time.map(|t| t.min(now));
        let current = Current {
            status: st.rec.status,
            update_time,
            ended_at: st.rec.ended_at(),
        };
        let mut d = diff(&st.rec, u);
        d.time_advanced = match (times.update, current.update_time) {
            (Some(new), Some(old)) => new > old,
            (Some(_), None) => true,
            _ => false,
        };
        let incoming = Incoming {
            status: u.status,
            update_time: times.update,
            reopen: u.reopen.map(|r| r.at),
        };
        let applied = match lifecycle::decide(current, incoming, d) {
            Verdict::Duplicate => return Applied::Duplicate,
            Verdict::Reopen => return self.reopen(e, u, times, now),
            Verdict::Reject(r) => {
                if let Rejection::Terminal { from, to } = r {
                    self.metrics.transition_rejected(from, to);
                }
                self.rejected(id, st, u, times, &r, now);
                Applied::Rejected(r)
            }
            Verdict::Accept { status_changed } => {
                if let Some(w) = &u.worker_id {
                    self.touch_worker(w, now);
                }
                let from = st.rec.status;
                let message_changed = self.merge(st, u, times, now);
                if status_changed && st.rec.status.is_terminal() {
                    self.on_terminal(&mut st.rec, u.update_time, now);
                    let event = event(&st.rec, Some(from), Outcome::Accepted, None, now);
                    let commit = self.write_now(st, now, Some(event));
                    self.resize(e);
                    return Applied::Accepted { commit };
                }
                // Progress, a non-terminal status change (Conductor flaps SCHEDULED and
                // IN_PROGRESS on every worker update), a new worker or attempt: all written
                // through the throttle, the newest kept. A status change or a new attempt is
                // always worth a write, whatever `--progress-min-delta` says.
                let forced =
                    message_changed || status_changed || !st.unwritten.attempts().is_empty();
                let written = self.progress_write(id, st, forced);
                if !status_changed {
                    self.metrics.progress_updates(written);
                }
                Applied::Accepted { commit: None }
            }
        };
        self.resize(e);
        applied
    }

    /// The engine put a finished task back to work: a new run begins. What belonged to the run
    /// that ended (its progress, samples, start, end) is dropped, the update is folded in as
    /// for a new run, and the reopen is written at once with a history line of its own. When
    /// the update is terminal again (the engine reran it and it finished between two reads),
    /// the new run's end is counted like any other.
    fn reopen(&self, e: &mut Entry, u: &TaskUpdate, times: Times, now: i64) -> Applied {
        let st: &mut TaskState = e;
        let Some(reopen) = u.reopen else {
            return Applied::Duplicate; // the lifecycle reopens only with evidence
        };
        let from = st.rec.status;
        self.metrics.task_reopened(reopen.kind);
        let r = &mut st.rec;
        r.terminal_at = None;
        r.end_time = None;
        r.reopened_at = Some(reopen.at);
        r.start_time = None;
        r.progress = None;
        r.progress_message = None;
        r.progress_changed = now;
        st.clear_window();
        if let Some(w) = &u.worker_id {
            self.touch_worker(w, now);
        }
        self.merge(st, u, times, now);
        if st.rec.status.is_terminal() {
            self.on_terminal(&mut st.rec, u.update_time, now);
        }
        let line = event(
            &st.rec,
            Some(from),
            Outcome::Reopened,
            Some(reopen_reason(reopen.kind)),
            now,
        );
        let commit = self.write_now(st, now, Some(line));
        self.resize(e);
        Applied::Accepted { commit }
    }

    /// A rejected update goes into the task's history: at once when the task's write slot is
    /// free, else folded with the other rejections of the interval into one line, written when
    /// the slot is (a flood of rejected updates costs one write per task per interval).
    fn rejected(
        &self,
        id: &Arc<str>,
        st: &mut TaskState,
        u: &TaskUpdate,
        times: Times,
        r: &Rejection,
        now: i64,
    ) {
        if let Some(line) = st.unwritten.rejections_mut() {
            line.count = line.count.saturating_add(1);
            line.last_at = Some(now);
            return;
        }
        let mut attempted = st.rec.clone();
        attempted.status = u.status;
        attempted.progress = u.progress;
        attempted.update_time = times.update;
        attempted.worker_id = u.worker_id.as_deref().map(Arc::from);
        let line = event(
            &attempted,
            Some(st.rec.status),
            Outcome::Rejected,
            Some(r.reason()),
            now,
        );
        match self.throttle.acquire(&st.slot) {
            ProgressWrite::Now => self.send_event(st, line),
            ProgressWrite::After(delay) => {
                st.unwritten.set_rejections(line);
                self.arm(id, st, delay);
            }
            ProgressWrite::WithNextWrite => st.unwritten.set_rejections(line),
        }
    }

    /// Folds an accepted update into the record. Fields the update doesn't carry keep their
    /// stored value. Returns whether the progress message changed.
    fn merge(&self, st: &mut TaskState, u: &TaskUpdate, times: Times, now: i64) -> bool {
        if let Some(p) = u.progress {
            st.sample(times.update, now, p);
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
        let mut new_attempt = false;
        if let Some(w) = &u.worker_id {
            if r.worker_id.as_deref() != Some(w.as_str()) {
                r.worker_id = Some(self.names.get(w));
                new_attempt = true;
            }
        }
        if u.retry_count.is_some() && u.retry_count != r.retry_count {
            r.retry_count = u.retry_count;
            new_attempt = true;
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
        // After a reopen, a start from before it is the first run's: the current run began at
        // the reopen.
        if !super::task::before_reopen(r, u.start_time) {
            r.start_time = u.start_time.or(r.start_time);
        }
        r.update_time = times.update.max(r.update_time);
        r.timeout_seconds = u.timeout_seconds.or(r.timeout_seconds);
        r.response_timeout_seconds = u.response_timeout_seconds.or(r.response_timeout_seconds);
        r.wait_until = u.wait_until.or(r.wait_until);
        if let Some(p) = u.parent_task_id.as_deref() {
            if r.parent_task_id.as_deref() != Some(p) {
                r.parent_task_id = Some(Arc::from(p));
            }
        }
        if let Some(v) = u.iteration_value.as_deref() {
            if r.iteration_value.as_deref() != Some(v) {
                r.iteration_value = Some(Arc::from(v));
            }
        }
        if new_attempt {
            st.note_attempt(now);
        }
        st.note_reported(&u.attempts, now, |w| self.names.get(w));
        message_changed
    }

    /// Sends the task's current state to the writer now, carrying any waiting progress and the
    /// history event (written only if the row is), and returns the commit to wait for.
    fn write_now(
        &self,
        st: &mut TaskState,
        now: i64,
        event: Option<TaskEvent>,
    ) -> Option<oneshot::Receiver<Commit>> {
        self.throttle.note_write(&st.slot);
        let (ack, rx) = oneshot::channel();
        self.send_task(st, WriteKind::Status, now, Some(ack), event);
        Some(rx)
    }

    /// Hands the task's current state to the writer, with its new attempt, the history line
    /// of a status change it carries, and any rejections waiting.
    pub(crate) fn send_task(
        &self,
        st: &mut TaskState,
        kind: WriteKind,
        now: i64,
        ack: Option<oneshot::Sender<Commit>>,
        mut event: Option<TaskEvent>,
    ) {
        let attempts = st.unwritten.take_attempts();
        if event.is_none() && st.rec.status != st.written_status {
            event = Some(crate::pipeline::task::event(
                &st.rec,
                Some(st.written_status),
                Outcome::Accepted,
                None,
                now,
            ));
        }
        st.pending = Pending::Clean;
        st.written_progress = WrittenProgress::new(st.rec.progress);
        st.written_status = st.rec.status;
        let task_id = st.rec.task_id.clone();
        st.events_written = st.events_written.saturating_add(event.is_some() as u16);
        st.attempts_written = st.attempts_written.saturating_add(attempts.len() as u16);
        self.writer.send(Op::Task {
            rec: st.rec.clone(),
            kind,
            attempts,
            event,
            ack,
        });
        if let Some(line) = st.unwritten.take_rejections() {
            self.send_event(st, line);
        }
        self.prune_if_due(task_id, st);
    }

    /// A history line of its own (rejected updates).
    pub(crate) fn send_event(&self, st: &mut TaskState, line: TaskEvent) {
        let task_id = line.task_id.clone();
        st.events_written = st.events_written.saturating_add(1);
        self.writer.send(Op::Event(line));
        self.prune_if_due(task_id, st);
    }

    /// Past half again as many lines (or attempts) as a task keeps, the store drops the oldest.
    fn prune_if_due(&self, task_id: Arc<str>, st: &mut TaskState) {
        let events = st.events_written as usize >= HISTORY_KEPT + HISTORY_KEPT / 2;
        let attempts = st.attempts_written as usize >= ATTEMPTS_KEPT + ATTEMPTS_KEPT / 2;
        if events || attempts {
            if events {
                st.events_written = HISTORY_KEPT as u16;
            }
            if attempts {
                st.attempts_written = ATTEMPTS_KEPT as u16;
            }
            self.writer.send(Op::Prune {
                task_id,
                events,
                attempts,
            });
        }
    }

    /// A write through the throttle: now, or coalesced. Returns whether it was written.
    /// `forced` makes the change worth a write whatever `--progress-min-delta` says.
    fn progress_write(&self, id: &Arc<str>, st: &mut TaskState, forced: bool) -> bool {
        let now = st.rec.last_seen;
        match self
            .throttle
            .progress(&st.slot, st.written_progress.get(), st.rec.progress, forced)
        {
            ProgressWrite::Now => {
                self.send_task(st, WriteKind::Progress, now, None, None);
                true
            }
            ProgressWrite::After(delay) => {
                st.pending = Pending::Timed;
                self.arm(id, st, delay);
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

    /// Sets the task's timer unless one is set.
    fn arm(&self, id: &Arc<str>, st: &mut TaskState, delay: std::time::Duration) {
        if !st.timer {
            st.timer = true;
            self.throttle.schedule(id.clone(), delay);
        }
    }

    /// Bookkeeping when a task finishes: its duration and, for WAIT tasks, the wake-up lag. The
    /// end is the terminal update's own `updateTime` as sent, or its arrival when it has none
    /// (the stored `updateTime` may be an earlier update's).
    fn on_terminal(&self, rec: &mut TaskRecord, update_time: Option<i64>, now: i64) {
        rec.terminal_at = Some(now);
        rec.end_time = update_time.map(|t| t.min(now));
        let end = update_time.unwrap_or(now);
        let start = rec.run_start();
        if end >= start {
            self.metrics
                .task_finished(&rec.task_type, rec.status, (end - start) as f64 / 1000.0);
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
        st.timer = false;
        let row_waits = st.pending == Pending::Timed && !st.rec.status.is_terminal();
        if !row_waits && st.unwritten.rejections().is_none() {
            return Flushed::Done;
        }
        match self.throttle.acquire(&st.slot) {
            ProgressWrite::Now => {
                if row_waits {
                    self.send_task(st, WriteKind::Progress, now_ms(), None, None);
                } else if let Some(line) = st.unwritten.take_rejections() {
                    self.send_event(st, line);
                }
                Flushed::Done
            }
            ProgressWrite::After(d) => {
                st.timer = true;
                Flushed::Retry(d)
            }
            ProgressWrite::WithNextWrite => Flushed::Done,
        }
    }
}

/// The reason on a reopen's history line, which the status page shows.
pub(crate) fn reopen_reason(kind: ReopenKind) -> String {
    format!("reopened by the engine ({kind})")
}

/// An update's engine times as taken for ordering and storing: never ahead of taskpulse's
/// clock. (Durations and wake-up lag are measured on the sender's own times: both ends come
/// from its clock.)
#[derive(Clone, Copy, Debug)]
struct Times {
    update: Option<i64>,
}
