//! One tracked task: its record plus what the throttle and the predictor keep for it, and the
//! small pure helpers the table uses to decide (what an update would change, a history line).

use tokio::sync::oneshot;

use crate::ingest::{AttemptReport, TaskUpdate};
use crate::lifecycle::{Diff, Rejection};
use crate::model::{Attempt, Outcome, Status, TaskEvent, TaskRecord, ATTEMPTS_KEPT};
use crate::now_ms;
use crate::predict::ProgressWindow;
use crate::store::Commit;
use crate::throttle::{Pending, Slot};

/// A tracked task: its record plus throttle bookkeeping.
#[derive(Debug)]
pub struct TaskState {
    pub rec: TaskRecord,
    /// Whether memory holds a row write the store doesn't have yet.
    pub(crate) pending: Pending,
    /// A timer is set to write what waits (see [`crate::throttle::run_timers`]).
    pub(crate) timer: bool,
    /// The throttle's state for this task's writes.
    pub(crate) slot: Slot,
    /// Progress last handed to the writer.
    pub(crate) written_progress: WrittenProgress,
    /// Status last handed to the writer: a non-terminal status change is written like progress,
    /// and its history line goes with that write.
    pub(crate) written_status: Status,
    /// Attempts and rejections seen since the last write, for the store.
    pub(crate) unwritten: Unwritten,
    /// History lines and attempts handed to the writer since the last prune of this task.
    pub(crate) events_written: u16,
    pub(crate) attempts_written: u16,
    /// What this entry takes of `--max-tracked-memory`, as last counted ([`footprint`]).
    pub(crate) size: u32,
    /// When this entry was last created or updated in memory (epoch ms): the eviction order.
    /// Not `rec.last_seen`, which a task loaded back from the store keeps from long ago; the
    /// task just brought back for an update must not be the first one evicted again.
    pub(crate) touched: i64,
    /// Recent (time, progress) samples for timeout prediction; boxed, and only for tasks that
    /// report progress, so tasks without progress pay one pointer.
    pub(crate) window: Option<Box<ProgressWindow>>,
    /// The window's prediction, computed when a sample is added rather than at scrape time:
    /// the window is in cache then, while a scrape would fetch every task's window from the
    /// heap (at 100,000 moving tasks that was most of a scrape's time). Predictions are epoch
    /// ms after 2000, never 0.
    predicted: Option<std::num::NonZeroI64>,
}

/// A task's place in the table: what a `/metrics` scrape reads of it, inline, and the rest of
/// its state boxed.
///
/// A scrape visits every entry; with the whole state inline (440 bytes) it waited on several
/// cache lines per task, and the table's free slots (each shard is a hash table between 44
/// and 87 % full) cost a whole state each. [`Hot`] is refreshed where every change of an
/// entry is already counted ([`super::Tracker::resize`]).
#[derive(Debug)]
pub struct Entry {
    pub(crate) hot: Hot,
    st: Box<TaskState>,
}

impl std::ops::Deref for Entry {
    type Target = TaskState;
    fn deref(&self) -> &TaskState {
        &self.st
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut TaskState {
        &mut self.st
    }
}

impl Entry {
    pub(crate) fn new(rec: TaskRecord) -> Entry {
        let st = Box::new(TaskState::new(rec));
        Entry {
            hot: Hot::of(&st),
            st,
        }
    }

    /// Copies what a scrape reads from the state, after a change.
    pub(crate) fn refresh(&mut self) {
        self.hot = Hot::of(&self.st);
    }
}

/// What a scrape reads of every task (see [`Entry`]); names by the address of their interned
/// string (0 for none), which is all the walk's counting needs.
///
/// 64 bytes: a waiting task's wake-up and an in-flight task's deadline share one field
/// ([`Hot::wait_until`], [`Hot::deadline`]), as the walk reads only one of them, and "none"
/// is a value rather than an 8-byte tag; each slot of the table is 24 bytes smaller for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hot {
    pub task_type: usize,
    pub workflow_type: usize,
    pub worker: usize,
    pub first_seen: i64,
    pub progress_changed: i64,
    /// The wake-up of a waiting task, the deadline of any other; [`NO_TIME`] for none.
    when: i64,
    predicted: Option<std::num::NonZeroI64>,
    pub status: Status,
    pub waiting: bool,
    pub has_progress: bool,
}

/// [`Hot`]'s "no time": no accepted time is negative (`waitUntil` is checked, a deadline is a
/// positive start plus a positive timeout).
const NO_TIME: i64 = i64::MIN;

// The size the docs of `Hot` and BENCHMARKS.md state, on the 64-bit targets we build.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Hot>() == 64);
// Each task's boxed state in a 400-byte malloc chunk (glibc adds 8 bytes and rounds up to 16):
// at 393 bytes it would take 416.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<TaskState>() <= 392);

/// The address of an interned string, 0 for none.
pub(crate) fn addr(s: Option<&std::sync::Arc<str>>) -> usize {
    s.map_or(0, |s| std::sync::Arc::as_ptr(s) as *const u8 as usize)
}

impl Hot {
    pub(crate) fn of(st: &TaskState) -> Hot {
        let r = &st.rec;
        Hot {
            task_type: addr(Some(&r.task_type)),
            workflow_type: addr(r.workflow_type.as_ref()),
            worker: addr(r.worker_id.as_ref()),
            first_seen: r.first_seen,
            progress_changed: r.progress_changed,
            when: match r.is_waiting() {
                true => r.wait_until,
                false => r.deadline_ms(),
            }
            .unwrap_or(NO_TIME),
            predicted: st.predicted,
            status: r.status,
            waiting: r.is_waiting(),
            has_progress: r.progress.is_some(),
        }
    }

    /// A waiting task's wake-up (`None` for any other task).
    pub fn wait_until(&self) -> Option<i64> {
        (self.waiting && self.when != NO_TIME).then_some(self.when)
    }

    /// An in-flight task's deadline (`None` for a waiting task).
    pub fn deadline(&self) -> Option<i64> {
        (!self.waiting && self.when != NO_TIME).then_some(self.when)
    }

    /// As [`TaskState::predicted_completion`].
    pub fn predicted_completion(&self, now: i64, stall_after_ms: i64) -> Option<i64> {
        let in_flight = !self.status.is_terminal() && !self.waiting;
        moving_prediction(
            in_flight,
            self.progress_changed,
            self.predicted,
            now,
            stall_after_ms,
        )
    }

    /// As [`TaskRecord::progress_stalled`].
    pub fn progress_stalled(&self, now: i64, stall_after_ms: i64) -> bool {
        crate::model::progress_stalled(
            self.has_progress,
            self.progress_changed,
            now,
            stall_after_ms,
        )
    }

    /// As [`TaskRecord::predicted_late`].
    pub fn predicted_late(&self, predicted_completion: Option<i64>) -> bool {
        crate::model::predicted_late(predicted_completion, self.deadline())
    }
}

/// The prediction of an in-flight task that is moving; a stalled task's last rate is stale,
/// so it gets none. The rule behind both [`TaskState::predicted_completion`] and [`Hot`]'s.
fn moving_prediction(
    in_flight: bool,
    progress_changed: i64,
    predicted: Option<std::num::NonZeroI64>,
    now: i64,
    stall_after_ms: i64,
) -> Option<i64> {
    if !in_flight || now - progress_changed >= stall_after_ms {
        return None;
    }
    predicted.map(std::num::NonZeroI64::get)
}

impl TaskState {
    fn new(rec: TaskRecord) -> TaskState {
        let mut st = TaskState {
            written_progress: WrittenProgress::new(rec.progress),
            written_status: rec.status,
            pending: Pending::Clean,
            timer: false,
            slot: Slot::default(),
            unwritten: Unwritten::default(),
            events_written: 0,
            attempts_written: 0,
            size: 0,
            touched: now_ms(),
            window: None,
            predicted: None,
            rec,
        };
        if let Some(p) = st.rec.progress {
            st.sample(st.rec.update_time, st.rec.progress_changed, p);
        }
        st
    }

    /// Notes the attempt the record now names (its retry number and worker), for the next write.
    pub(crate) fn note_attempt(&mut self, now: i64) {
        let Some(worker) = self.rec.worker_id.clone() else {
            return;
        };
        let attempt = self.rec.retry_count.unwrap_or(0);
        let attempts = self.unwritten.attempts_mut();
        if let Some(a) = attempts
            .iter_mut()
            .find(|a| a.attempt == attempt && a.worker_id == worker)
        {
            a.last_seen = now;
            return;
        }
        if attempts.len() >= ATTEMPTS_KEPT {
            attempts.remove(0);
        }
        attempts.push(Attempt::seen(
            self.rec.task_id.clone(),
            attempt,
            worker,
            now,
        ));
    }

    /// Notes the attempts an engine reported with their own state (Kestra's `attempts[]`), for
    /// the next write; `worker` interns the worker ids.
    pub(crate) fn note_reported(
        &mut self,
        reports: &[AttemptReport],
        now: i64,
        worker: impl Fn(&str) -> std::sync::Arc<str>,
    ) {
        for r in reports {
            let attempts = self.unwritten.attempts_mut();
            let found = attempts
                .iter()
                .position(|a| a.attempt == r.attempt && *a.worker_id == *r.worker_id);
            let a = match found {
                Some(i) => &mut attempts[i],
                None => {
                    if attempts.len() >= ATTEMPTS_KEPT {
                        attempts.remove(0);
                    }
                    attempts.push(Attempt::seen(
                        self.rec.task_id.clone(),
                        r.attempt,
                        worker(&r.worker_id),
                        now,
                    ));
                    attempts.last_mut().expect("just pushed")
                }
            };
            a.status = r.status.or(a.status);
            a.start_time = r.start_time.or(a.start_time);
            a.end_time = r.end_time.or(a.end_time);
            a.last_seen = now;
        }
    }

    /// Adds a progress sample at the update's engine time where it carries one that can be its
    /// time, else at `arrival_ms` ([`crate::predict::sample_time`]).
    pub(crate) fn sample(&mut self, engine_ms: Option<i64>, arrival_ms: i64, progress: f32) {
        let at = crate::predict::sample_time(engine_ms, self.rec.first_seen, arrival_ms);
        let window = self.window.get_or_insert_with(Default::default);
        window.record(at, progress);
        self.predicted = window
            .predict_completion()
            .and_then(std::num::NonZeroI64::new);
    }

    /// Predicted completion (epoch ms) of an in-flight task that is moving; a stalled task's
    /// last rate is stale, so it gets none.
    pub fn predicted_completion(&self, now: i64, stall_after_ms: i64) -> Option<i64> {
        let r = &self.rec;
        moving_prediction(
            r.is_in_flight(),
            r.progress_changed,
            self.predicted,
            now,
            stall_after_ms,
        )
    }

    /// A new run: the samples of the one that ended say nothing about it.
    pub(crate) fn clear_window(&mut self) {
        self.window = None;
        self.predicted = None;
    }
}

/// What one tracked task takes besides its strings (the table entry, the state, the record,
/// its limiter key, its allocations' headers and the allocator's share), calibrated against the
/// process's RSS with 100,000 tasks of 256-byte ids and 1 KiB messages (BENCHMARKS.md,
/// "Hostile input and overload": `scripts/overload.py compare`).
pub(crate) const TASK_OVERHEAD: usize = 900;
/// A task's progress window, once it reports progress.
const WINDOW_BYTES: usize = 96;
/// What an optional string of the record costs besides its bytes: the `Arc`'s counts and the
/// allocator's header and rounding.
const STRING_OVERHEAD: usize = 32;

/// About how many bytes a tracked task takes. Names shared by many tasks (types, workers) are
/// not counted; the workflow id is, in full, as most are one workflow's alone. Every string a
/// task holds alone is (its parent task and loop value included), and attempts and a waiting
/// rejection at their real size.
pub(crate) fn footprint(st: &TaskState) -> usize {
    let r = &st.rec;
    let own =
        |s: &Option<std::sync::Arc<str>>| s.as_deref().map_or(0, |s| s.len() + STRING_OVERHEAD);
    TASK_OVERHEAD
        + r.task_id.len() // one allocation shared by the table key, the record and the limiter
        + r.workflow_id.len()
        + own(&r.reference_task_name)
        + own(&r.progress_message)
        + own(&r.parent_task_id)
        + own(&r.iteration_value)
        + if st.window.is_some() { WINDOW_BYTES } else { 0 }
        + st.unwritten.bytes()
}

/// Progress last handed to the writer, in four bytes where `Option<f32>` takes eight: NaN
/// stands for none (progress is a finite number, or no progress). Keeps [`TaskState`] at 392
/// bytes, a 400-byte malloc chunk (asserted below [`Hot`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrittenProgress(f32);

impl WrittenProgress {
    pub(crate) fn new(progress: Option<f32>) -> WrittenProgress {
        WrittenProgress(progress.unwrap_or(f32::NAN))
    }

    pub(crate) fn get(self) -> Option<f32> {
        Some(self.0).filter(|p| !p.is_nan())
    }
}

/// What a task saw since its last write and the store does not have yet: the attempts (retry
/// number, worker) to store, every one, not only the last, so a worker that ran a task between
/// two writes is still recorded; and rejected updates folded into one history line. Both are
/// empty after each write, so they share one box that is absent then: a task pays one pointer
/// for them, not 32 bytes.
#[derive(Debug, Default)]
pub(crate) struct Unwritten(Option<Box<UnwrittenParts>>);

#[derive(Debug, Default)]
struct UnwrittenParts {
    attempts: Vec<Attempt>,
    /// Boxed apart: most tasks have attempts to write and no rejections, and their box stays
    /// 32 bytes rather than carrying a history line's room.
    rejections: Option<Box<TaskEvent>>,
}

impl Unwritten {
    pub(crate) fn attempts(&self) -> &[Attempt] {
        self.0.as_ref().map_or(&[], |p| &p.attempts)
    }

    /// The attempts, to add to (the box is made if absent).
    fn attempts_mut(&mut self) -> &mut Vec<Attempt> {
        &mut self.0.get_or_insert_with(Default::default).attempts
    }

    /// The attempts, for the write that stores them.
    pub(crate) fn take_attempts(&mut self) -> Vec<Attempt> {
        let taken = self.0.as_mut().map(|p| std::mem::take(&mut p.attempts));
        self.drop_if_empty();
        taken.unwrap_or_default()
    }

    pub(crate) fn rejections(&self) -> Option<&TaskEvent> {
        self.0.as_ref().and_then(|p| p.rejections.as_deref())
    }

    pub(crate) fn rejections_mut(&mut self) -> Option<&mut TaskEvent> {
        self.0.as_mut().and_then(|p| p.rejections.as_deref_mut())
    }

    pub(crate) fn set_rejections(&mut self, line: TaskEvent) {
        self.0.get_or_insert_with(Default::default).rejections = Some(Box::new(line));
    }

    /// The folded rejections, for the write that stores them.
    pub(crate) fn take_rejections(&mut self) -> Option<TaskEvent> {
        let taken = self.0.as_mut().and_then(|p| p.rejections.take());
        self.drop_if_empty();
        taken.map(|line| *line)
    }

    fn drop_if_empty(&mut self) {
        if self
            .0
            .as_ref()
            .is_some_and(|p| p.attempts.is_empty() && p.rejections.is_none())
        {
            self.0 = None;
        }
    }

    /// What the box and its contents take (`--max-tracked-memory`'s count).
    fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| {
            std::mem::size_of::<UnwrittenParts>()
                + p.attempts.capacity() * std::mem::size_of::<Attempt>()
                + p.rejections.as_ref().map_or(0, |e| {
                    std::mem::size_of::<TaskEvent>()
                        + STRING_OVERHEAD
                        + e.reason.as_ref().map_or(0, String::len)
                })
        })
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

/// A history line for `rec` as it is now.
pub(crate) fn event(
    rec: &TaskRecord,
    from: Option<Status>,
    outcome: Outcome,
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
        count: 1,
        last_at: None,
    }
}

/// What an update would change on a task, for the lifecycle's duplicate test.
pub(crate) fn diff(r: &TaskRecord, u: &TaskUpdate) -> Diff {
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
        || (u.start_time.is_some()
            && u.start_time != r.start_time
            && !before_reopen(r, u.start_time));
    Diff {
        content_changed,
        time_advanced: advanced(u.update_time, r.update_time),
    }
}

/// A start from before the task's last reopen belongs to a run that ended (Kestra keeps a task
/// run's first `startDate`): not news about the current run.
pub(crate) fn before_reopen(r: &TaskRecord, start: Option<i64>) -> bool {
    matches!((start, r.reopened_at), (Some(s), Some(at)) if s < at)
}

/// What a record that was written (and lost to the store) would have changed on the stored one.
pub(crate) fn diff_records(stored: &TaskRecord, tried: &TaskRecord) -> Diff {
    let content_changed = tried.progress != stored.progress
        || tried.progress_message != stored.progress_message
        || tried.worker_id != stored.worker_id
        || tried.retry_count != stored.retry_count;
    Diff {
        content_changed,
        time_advanced: advanced(tried.update_time, stored.update_time),
    }
}

fn advanced(new: Option<i64>, old: Option<i64>) -> bool {
    match (new, old) {
        (Some(new), Some(old)) => new > old,
        (Some(_), None) => true,
        _ => false,
    }
}
