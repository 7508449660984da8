//! The in-memory table of tracked tasks.
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

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use tokio::sync::{oneshot, Notify};

use crate::ingest::TaskUpdate;
use crate::lifecycle::{self, Current, Diff, Rejection, Status, Verdict};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::predict::ProgressWindow;
use crate::store::{Attempt, Commit, Op, TaskEvent, TaskRecord, WriteKind, WriterHandle};
use crate::throttle::{Flush, Flushed, Pending, ProgressWrite, Throttle};

/// Rejected updates recorded in a task's history, at most; the counter still counts them all.
const MAX_REJECTIONS_LOGGED: u8 = 20;
/// Distinct names (task types, workflow ids, workers) shared through the interner, at most.
const MAX_INTERNED: usize = 1_000_000;

/// A tracked task: its record plus throttle bookkeeping.
#[derive(Debug)]
pub struct TaskState {
    pub rec: TaskRecord,
    pending: Pending,
    /// Progress last handed to the writer.
    written_progress: Option<f32>,
    /// The message changed since the last write.
    message_dirty: bool,
    /// The (attempt, worker) pair changed since the last write.
    attempt_dirty: bool,
    rejections_logged: u8,
    /// When this entry was last created or updated in memory (epoch ms): the eviction order.
    /// Not `rec.last_seen`, which a task loaded back from the store keeps from long ago; the
    /// task just brought back for an update must not be the first one evicted again.
    touched: i64,
    /// Recent (time, progress) samples for timeout prediction; boxed, and only for tasks that
    /// report progress, so tasks without progress pay one pointer.
    window: Option<Box<ProgressWindow>>,
}

impl TaskState {
    fn new(rec: TaskRecord) -> TaskState {
        let mut st = TaskState {
            written_progress: rec.progress,
            pending: Pending::Clean,
            message_dirty: false,
            attempt_dirty: false,
            rejections_logged: 0,
            touched: now_ms(),
            window: None,
            rec,
        };
        if let Some(p) = st.rec.progress {
            let at = st.rec.update_time.unwrap_or(st.rec.progress_changed);
            st.sample(at, p);
        }
        st
    }

    /// Adds a progress sample (engine time where the update carries one).
    fn sample(&mut self, at_ms: i64, progress: f32) {
        self.window
            .get_or_insert_with(Default::default)
            .record(at_ms, progress);
    }

    /// Predicted completion (epoch ms) of an in-flight task that is moving; a stalled task's
    /// last rate is stale, so it gets none.
    pub fn predicted_completion(&self, now: i64, stall_after_ms: i64) -> Option<i64> {
        if !self.rec.is_in_flight() || now - self.rec.progress_changed >= stall_after_ms {
            return None;
        }
        self.window.as_ref()?.predict_completion()
    }

    pub fn pending(&self) -> Pending {
        self.pending
    }
}

/// The outcome of one update.
#[derive(Debug)]
pub enum Applied {
    /// Accepted; when `commit` is set the update waits for its store write.
    Accepted {
        commit: Option<oneshot::Receiver<Commit>>,
    },
    Duplicate,
    Rejected(Rejection),
}

/// Shares one allocation among equal strings (task types, workflow ids, workers).
#[derive(Default)]
struct Interner(DashSet<Arc<str>>);

impl Interner {
    fn get(&self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.key().clone();
        }
        let a: Arc<str> = Arc::from(s);
        if self.0.len() < MAX_INTERNED {
            self.0.insert(a.clone());
        }
        a
    }

    /// Forgets names nothing else refers to any more.
    fn prune(&self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// The table, with what it needs to decide and hand off writes.
pub struct Tracker {
    tasks: DashMap<Arc<str>, TaskState>,
    names: Interner,
    /// Worker id -> last time an update named it (epoch ms).
    workers: DashMap<Arc<str>, i64>,
    throttle: Throttle,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    /// Measure WAIT wake-up lag from the updates seen (false when it is read from the engine's
    /// own queue, so nothing is counted twice).
    wait_lag_from_updates: bool,
    /// `--max-tracked-tasks`: tasks kept in memory, at most (see [`Tracker::evict_over_cap`]).
    max_tracked: usize,
    /// Woken when a new task puts the table far over the cap, so the sweeper evicts at once
    /// instead of at its next tick; the request that noticed does no scanning itself.
    evict_now: Notify,
}

/// How far over `--max-tracked-tasks` the table may grow between sweeps before a new task wakes
/// the sweeper early: a tenth of the cap, so a full eviction scan runs at most once per
/// cap/10 new tasks (amortized O(10) per insert) and never on the request path.
fn slack(cap: usize) -> usize {
    (cap / 10).max(1)
}

impl Tracker {
    pub fn new(throttle: Throttle, writer: WriterHandle, metrics: Arc<Metrics>) -> Tracker {
        Tracker {
            tasks: DashMap::new(),
            names: Interner::default(),
            workers: DashMap::new(),
            throttle,
            writer,
            metrics,
            wait_lag_from_updates: true,
            max_tracked: usize::MAX,
            evict_now: Notify::new(),
        }
    }

    /// Caps the tasks kept in memory (`--max-tracked-tasks`).
    pub fn with_max_tracked(mut self, cap: usize) -> Tracker {
        self.max_tracked = cap.max(1);
        self
    }

    /// The cap on tasks kept in memory.
    pub fn max_tracked(&self) -> usize {
        self.max_tracked
    }

    /// Resolves when a new task has put the table far over the cap (the sweeper then evicts
    /// without waiting for its next tick).
    pub async fn eviction_wanted(&self) {
        self.evict_now.notified().await
    }

    /// Called after a new task entered memory (no entry held: `len` reads every shard).
    fn check_cap(&self) {
        if self.max_tracked != usize::MAX
            && self.tasks.len() > self.max_tracked.saturating_add(slack(self.max_tracked))
        {
            self.evict_now.notify_one();
        }
    }

    /// Evicts tasks until at most `--max-tracked-tasks` remain in memory; returns how many left.
    ///
    /// The policy: finished tasks go first (they are only kept for duplicate detection, which
    /// the store can answer as well), then unfinished ones, least recently touched in memory
    /// first (`touched`: a task loaded back from the store counts as updated when it was
    /// loaded). An evicted task leaves memory only: a coalesced progress value is handed to the
    /// writer before the entry is dropped, so the store holds everything memory held. When an
    /// update for it arrives later, ingest finds it missing from memory and loads it from the
    /// store before the lifecycle decides (see `api::ingest`), exactly as for a finished task
    /// past `--terminal-retention`.
    ///
    /// This runs from the sweeper, not on the request path: it scans the whole table, one shard
    /// at a time, and takes each victim's entry only briefly. A task updated between the scan
    /// and its removal is kept (its `touched` time moved), so an eviction never loses an update.
    pub fn evict_over_cap(&self) -> usize {
        let len = self.tasks.len();
        if len <= self.max_tracked {
            return 0;
        }
        let excess = len - self.max_tracked;
        let mut candidates: Vec<(bool, i64, Arc<str>)> = self
            .tasks
            .iter()
            .map(|e| (!e.rec.status.is_terminal(), e.touched, e.key().clone()))
            .collect();
        if excess < candidates.len() {
            candidates.select_nth_unstable(excess - 1);
            candidates.truncate(excess);
        }
        let now = now_ms();
        let mut evicted = 0;
        for (_, seen, id) in candidates {
            if let Some(mut entry) = self.tasks.get_mut(&*id) {
                let st = entry.value_mut();
                if st.touched != seen {
                    continue;
                }
                if st.pending != Pending::Clean && !st.rec.status.is_terminal() {
                    self.send_task(st, WriteKind::Progress, now, None, None);
                }
            }
            if self
                .tasks
                .remove_if(&*id, |_, st| {
                    st.touched == seen && st.pending == Pending::Clean
                })
                .is_some()
            {
                evicted += 1;
            }
        }
        if evicted > 0 {
            self.metrics.tasks_evicted_total.inc_by(evicted as u64);
            tracing::debug!(
                evicted,
                cap = self.max_tracked,
                "over --max-tracked-tasks: least recently updated tasks left memory"
            );
        }
        evicted
    }

    /// WAIT wake-up lag is measured elsewhere (from Conductor's queue).
    pub fn without_wait_lag(mut self) -> Tracker {
        self.wait_lag_from_updates = false;
        self
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Applies one validated update.
    pub fn apply(&self, u: TaskUpdate) -> Applied {
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
                let event = event(&st.rec, None, "accepted", None, now);
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
        u: TaskUpdate,
        now: i64,
    ) -> Applied {
        let diff = diff(&st.rec, &u);
        let current = Current {
            status: st.rec.status,
            update_time: st.rec.update_time,
        };
        match lifecycle::decide(Some(current), u.status, u.update_time, diff) {
            Verdict::Duplicate => Applied::Duplicate,
            Verdict::Reject(r) => {
                if let Rejection::Terminal { from, to } = r {
                    self.metrics
                        .transitions_rejected_total
                        .with_label_values(&[from.as_str(), to.as_str()])
                        .inc();
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
                        "rejected",
                        Some(r.reason()),
                        now,
                    )));
                }
                Applied::Rejected(r)
            }
            Verdict::New => unreachable!("an existing task is never new"),
            Verdict::Accept { status_changed } => {
                let from = st.rec.status;
                let message_changed = self.merge(st, &u, now);
                if status_changed {
                    if st.rec.status.is_terminal() {
                        self.on_terminal(&mut st.rec, u.update_time, now);
                    }
                    let event = event(&st.rec, Some(from), "accepted", None, now);
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
                st.message_dirty = true;
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

    fn send_task(
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
        st.message_dirty = false;
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
        if self.wait_lag_from_updates && &*rec.task_type == "WAIT" && rec.status.is_successful() {
            if let Some(wake) = rec.wait_until {
                let lag = (end - wake).max(0) as f64 / 1000.0;
                self.metrics
                    .wait_wakeup_lag_seconds
                    .with_label_values(&[rec.workflow_type.as_deref().unwrap_or("")])
                    .observe(lag);
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

    /// Writes every waiting value now, ignoring the limiter (shutdown).
    pub fn flush_all(&self) -> usize {
        let now = now_ms();
        let mut flushed = 0;
        for mut entry in self.tasks.iter_mut() {
            let st = entry.value_mut();
            if st.pending != Pending::Clean && !st.rec.status.is_terminal() {
                self.send_task(st, WriteKind::Progress, now, None, None);
                flushed += 1;
            }
        }
        flushed
    }

    /// Puts records read from the store into memory (start-up rebuild).
    pub fn load(&self, records: Vec<TaskRecord>) {
        for rec in records {
            self.load_one(rec);
        }
        self.loaded();
    }

    /// Puts one stored task into memory (the start-up rebuild, row by row); call
    /// [`Tracker::loaded`] after the last.
    pub fn load_one(&self, rec: TaskRecord) {
        let rec = self.intern(rec);
        self.tasks.insert(rec.task_id.clone(), TaskState::new(rec));
    }

    /// After loading: a store with more unfinished tasks than the cap keeps the most recently
    /// updated in memory.
    pub fn loaded(&self) {
        self.evict_over_cap();
    }

    /// Of `ids`, those not in memory (each once).
    pub fn unknown<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut seen = std::collections::HashSet::new();
        ids.into_iter()
            .filter(|id| !self.tasks.contains_key(*id) && seen.insert(*id))
            .collect()
    }

    /// Brings tasks that left memory (finished past the retention) back from the store before
    /// updates for them are decided, so the lifecycle sees what the store holds. A task that
    /// arrived in memory meanwhile is left as it is.
    pub fn load_absent(&self, records: Vec<TaskRecord>) {
        for rec in records {
            if let dashmap::Entry::Vacant(v) = self.tasks.entry(rec.task_id.clone()) {
                let rec = self.intern(rec);
                v.insert(TaskState::new(rec));
            }
        }
        self.check_cap();
    }

    /// Shares the record's names with the rest of the table.
    fn intern(&self, mut rec: TaskRecord) -> TaskRecord {
        rec.task_type = self.names.get(&rec.task_type);
        rec.workflow_id = self.names.get(&rec.workflow_id);
        rec.workflow_type = rec.workflow_type.map(|s| self.names.get(&s));
        if let Some(w) = rec.worker_id.take() {
            let w = self.names.get(&w);
            if !rec.status.is_terminal() {
                self.workers
                    .entry(w.clone())
                    .and_modify(|t| *t = (*t).max(rec.last_seen))
                    .or_insert(rec.last_seen);
            }
            rec.worker_id = Some(w);
        }
        rec
    }

    /// A write that waited for its commit lost to what the store holds (another replica or a
    /// repair got there first). Memory follows the store, and the update counts as rejected
    /// like any other attempt to leave a final state.
    pub fn lost_to_store(&self, stored: TaskRecord, attempted: Status) {
        let now = now_ms();
        if stored.status.is_terminal() && attempted != stored.status {
            self.metrics
                .transitions_rejected_total
                .with_label_values(&[stored.status.as_str(), attempted.as_str()])
                .inc();
            let mut tried = stored.clone();
            tried.status = attempted;
            let reason = Rejection::Terminal {
                from: stored.status,
                to: attempted,
            }
            .reason();
            self.writer.send(Op::Event(event(
                &tried,
                Some(stored.status),
                "rejected",
                Some(reason),
                now,
            )));
        }
        self.reload(stored);
    }

    /// The store holds something newer or terminal: memory follows it, unless memory has moved
    /// on since (a newer non-terminal update arrived meanwhile; its own write follows).
    pub fn reload(&self, rec: TaskRecord) {
        if let Some(mut st) = self.tasks.get_mut(&*rec.task_id) {
            let newer = rec.status.is_terminal()
                || (rec.update_time, rec.last_seen) >= (st.rec.update_time, st.rec.last_seen);
            if !newer {
                return;
            }
            tracing::debug!(task_id = %rec.task_id, stored = %rec.status, memory = %st.rec.status, "memory follows the store");
            if let Some(p) = rec.progress.filter(|p| Some(*p) != st.rec.progress) {
                st.sample(rec.update_time.unwrap_or(rec.progress_changed), p);
            }
            st.rec = self.intern(rec);
            st.pending = Pending::Clean;
            st.written_progress = st.rec.progress;
        }
    }

    /// Folds in rows read from the store (the leader's view of what other replicas accepted):
    /// unknown tasks are added, known ones follow the store where it is newer.
    pub fn merge_from_store(&self, records: Vec<TaskRecord>) {
        // At the cap, what other replicas hold stays in the store: adding it would only evict
        // it again. (`len` reads every shard, so it is read once, not per row.)
        let mut room = self.max_tracked.saturating_sub(self.tasks.len());
        let mut absent = Vec::new();
        for rec in records {
            if self.tasks.contains_key(&*rec.task_id) {
                self.reload(rec);
            } else if room > 0 {
                room -= 1;
                absent.push(rec);
            }
        }
        self.load_absent(absent);
    }

    /// Records of tasks whose state the store should hold exactly: nothing waiting to be
    /// written, and no update accepted after `before` (epoch ms).
    pub fn settled(&self, before: i64) -> Vec<TaskRecord> {
        self.tasks
            .iter()
            .filter(|e| e.pending == Pending::Clean && e.rec.last_seen <= before)
            .map(|e| e.rec.clone())
            .collect()
    }

    /// Housekeeping: forget finished tasks after `retention_ms`, idle limiter state, idle
    /// workers (no task, not seen for `worker_idle_ms`) and unused names.
    pub fn sweep(&self, retention_ms: i64, worker_idle_ms: i64) {
        let now = now_ms();
        self.tasks.retain(|_, st| match st.rec.terminal_at {
            Some(t) => now - t < retention_ms,
            None => true,
        });
        self.throttle.forget_idle();
        let busy: std::collections::HashSet<Arc<str>> = self
            .tasks
            .iter()
            .filter(|e| !e.rec.status.is_terminal())
            .filter_map(|e| e.rec.worker_id.clone())
            .collect();
        self.workers
            .retain(|w, seen| busy.contains(w) || now - *seen < worker_idle_ms);
        self.names.prune();
    }

    /// A copy of one task's record.
    pub fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.tasks.get(task_id).map(|e| e.rec.clone())
    }

    /// Copies of the records that pass `filter`.
    pub fn select(&self, mut filter: impl FnMut(&TaskRecord) -> bool) -> Vec<TaskRecord> {
        self.tasks
            .iter()
            .filter(|e| filter(&e.rec))
            .map(|e| e.rec.clone())
            .collect()
    }

    /// Calls `f` on every tracked task (metrics scrape). Holds one shard at a time.
    pub fn for_each(&self, mut f: impl FnMut(&TaskState)) {
        for e in self.tasks.iter() {
            f(e.value());
        }
    }

    /// Runs `f` on one task's state, holding its shard only for the call.
    pub fn inspect<R>(&self, task_id: &str, f: impl FnOnce(&TaskState) -> R) -> Option<R> {
        self.tasks.get(task_id).map(|e| f(e.value()))
    }

    /// A task's predicted completion (epoch ms), where its progress rate allows one.
    pub fn predicted_completion(
        &self,
        task_id: &str,
        now: i64,
        stall_after_ms: i64,
    ) -> Option<i64> {
        self.tasks
            .get(task_id)
            .and_then(|e| e.predicted_completion(now, stall_after_ms))
    }

    /// Worker id -> last seen, epoch ms.
    pub fn workers(&self) -> HashMap<Arc<str>, i64> {
        self.workers
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Tasks with a coalesced value waiting.
    pub fn pending_count(&self) -> usize {
        self.tasks
            .iter()
            .filter(|e| e.pending != Pending::Clean)
            .count()
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

/// A history line for `rec` as it is now.
fn event(
    rec: &TaskRecord,
    from: Option<Status>,
    outcome: &'static str,
    reason: Option<String>,
    now: i64,
) -> TaskEvent {
    TaskEvent {
        task_id: rec.task_id.clone(),
        at: now,
        outcome,
        from,
        to: rec.status,
        reason,
        worker_id: rec.worker_id.clone(),
        progress_percent: rec.progress,
        update_time: rec.update_time,
    }
}

/// What an update would change, for the lifecycle's duplicate test.
fn diff(r: &TaskRecord, u: &TaskUpdate) -> Diff {
    let differs = |new: Option<&str>, old: Option<&str>| new.is_some() && new != old;
    let content_changed = (u.progress.is_some() && u.progress != r.progress)
        || differs(u.progress_message.as_deref(), r.progress_message.as_deref())
        || differs(u.worker_id.as_deref(), r.worker_id.as_deref())
        || (u.retry_count.is_some() && u.retry_count != r.retry_count)
        || (u.seq.is_some() && u.seq != r.seq)
        || (u.iteration.is_some() && u.iteration != r.iteration)
        || (u.timeout_seconds.is_some() && u.timeout_seconds != r.timeout_seconds)
        || (u.response_timeout_seconds.is_some()
            && u.response_timeout_seconds != r.response_timeout_seconds)
        || (u.wait_until.is_some() && u.wait_until != r.wait_until)
        || (u.start_time.is_some() && u.start_time != r.start_time);
    let time_advanced = match (u.update_time, r.update_time) {
        (Some(new), Some(old)) => new > old,
        (Some(_), None) => true,
        _ => false,
    };
    Diff {
        content_changed,
        time_advanced,
    }
}
