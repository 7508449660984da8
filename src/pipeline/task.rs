//! One tracked task: its record plus what the throttle and the predictor keep for it, and the
//! small pure helpers the table uses to decide (what an update would change, a history line).

use tokio::sync::oneshot;

use crate::ingest::TaskUpdate;
use crate::lifecycle::{Diff, Rejection};
use crate::model::{Outcome, Status, TaskEvent, TaskRecord};
use crate::now_ms;
use crate::predict::ProgressWindow;
use crate::store::Commit;
use crate::throttle::Pending;

/// A tracked task: its record plus throttle bookkeeping.
#[derive(Debug)]
pub struct TaskState {
    pub rec: TaskRecord,
    pub(crate) pending: Pending,
    /// Progress last handed to the writer.
    pub(crate) written_progress: Option<f32>,
    /// The (attempt, worker) pair changed since the last write.
    pub(crate) attempt_dirty: bool,
    pub(crate) rejections_logged: u8,
    /// When this entry was last created or updated in memory (epoch ms): the eviction order.
    /// Not `rec.last_seen`, which a task loaded back from the store keeps from long ago; the
    /// task just brought back for an update must not be the first one evicted again.
    pub(crate) touched: i64,
    /// Recent (time, progress) samples for timeout prediction; boxed, and only for tasks that
    /// report progress, so tasks without progress pay one pointer.
    window: Option<Box<ProgressWindow>>,
}

impl TaskState {
    pub(crate) fn new(rec: TaskRecord) -> TaskState {
        let mut st = TaskState {
            written_progress: rec.progress,
            pending: Pending::Clean,
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
    pub(crate) fn sample(&mut self, at_ms: i64, progress: f32) {
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
        || (u.start_time.is_some() && u.start_time != r.start_time);
    Diff {
        content_changed,
        time_advanced: advanced(u.update_time, r.update_time),
    }
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
