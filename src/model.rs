//! The domain model every layer shares: a task's status, its record, the lines of its history,
//! the worker of each attempt, and the checker's audit lines.
//!
//! The store persists these, the pipeline keeps them in memory, the metrics and the read API
//! show them; none of those import each other for the types. Serialized (camelCase, times in
//! epoch ms) they are the bodies of the read API (`docs/contract.md` §2 and §5).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Conductor's task statuses, which taskpulse uses for every engine (other engines' states are
/// mapped onto them by their adapter; see `docs/contract.md` §3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Scheduled,
    InProgress,
    Completed,
    CompletedWithErrors,
    Failed,
    FailedWithTerminalError,
    TimedOut,
    Canceled,
    Skipped,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Scheduled,
        Status::InProgress,
        Status::Completed,
        Status::CompletedWithErrors,
        Status::Failed,
        Status::FailedWithTerminalError,
        Status::TimedOut,
        Status::Canceled,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "SCHEDULED",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            Status::Failed => "FAILED",
            Status::FailedWithTerminalError => "FAILED_WITH_TERMINAL_ERROR",
            Status::TimedOut => "TIMED_OUT",
            Status::Canceled => "CANCELED",
            Status::Skipped => "SKIPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal statuses are final (`docs/contract.md` §3).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Scheduled | Status::InProgress)
    }

    /// Terminal and successful, as Conductor defines it.
    pub fn is_successful(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::CompletedWithErrors | Status::Skipped
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an engine put a finished task back to work under the same id. Only an engine's own
/// store can say so (`docs/contract.md` §3, "Reopened by the engine"); the names are the
/// `kind` label of `taskpulse_task_reopens_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReopenKind {
    /// Conductor's rerun, and its other in-place resets (a JOIN reset by a retry, the parent
    /// task of a sub-workflow that was retried, rerun or restarted).
    Rerun,
    /// Kestra's retry of a failed task run on the same task run id.
    Retry,
    /// Kestra's restart of an execution, which keeps its task run ids.
    Restart,
    /// Airflow's clear, which runs the same task instance again with a new try.
    Clear,
}

impl ReopenKind {
    pub const ALL: [ReopenKind; 4] = [
        ReopenKind::Rerun,
        ReopenKind::Retry,
        ReopenKind::Restart,
        ReopenKind::Clear,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReopenKind::Rerun => "rerun",
            ReopenKind::Retry => "retry",
            ReopenKind::Restart => "restart",
            ReopenKind::Clear => "clear",
        }
    }
}

impl std::fmt::Display for ReopenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The task type whose unfinished tasks sit in the WAIT queue rather than run on a worker.
pub const WAIT_TASK_TYPE: &str = "WAIT";

/// A task as persisted, and as held in memory (the pipeline's table wraps it with throttle
/// bookkeeping). Strings are `Arc<str>` so a snapshot for the writer costs reference counts,
/// not copies, and repeated names (task types, workflow ids, workers) are shared.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub task_id: Arc<str>,
    pub workflow_id: Arc<str>,
    pub task_type: Arc<str>,
    pub workflow_type: Option<Arc<str>>,
    pub reference_task_name: Option<Arc<str>>,
    pub seq: Option<i32>,
    pub iteration: Option<i32>,
    pub retry_count: Option<i32>,
    pub status: Status,
    #[serde(rename = "progressPercent", serialize_with = "widened")]
    pub progress: Option<f32>,
    pub progress_message: Option<Arc<str>>,
    pub worker_id: Option<Arc<str>>,
    /// Engine times, epoch ms.
    pub start_time: Option<i64>,
    pub update_time: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub response_timeout_seconds: Option<i64>,
    pub wait_until: Option<i64>,
    /// The task this one runs under, where the engine has one (Kestra's `parentTaskRunId`).
    pub parent_task_id: Option<Arc<str>>,
    /// The value this run of a loop works on (Kestra's task run `value`).
    pub iteration_value: Option<Arc<str>>,
    /// When the current run ended, engine time (the terminal update's `updateTime`, which for
    /// Conductor is its `endTime`); `None` while the task runs or when the terminal update
    /// carried no time.
    pub end_time: Option<i64>,
    /// When the engine last put this finished task back to work (engine time, epoch ms): the
    /// start of its current run when the engine has not sent a new `startTime` yet.
    pub reopened_at: Option<i64>,
    /// taskpulse's own times, epoch ms: first and last accepted update, last progress change.
    pub first_seen: i64,
    pub last_seen: i64,
    pub progress_changed: i64,
    pub terminal_at: Option<i64>,
}

impl TaskRecord {
    /// When the task times out: `startTime + timeoutSeconds` (taskpulse's first sight when the
    /// engine didn't send `startTime`). `timeoutSeconds = 0` means no timeout, as in Conductor.
    pub fn deadline_ms(&self) -> Option<i64> {
        let timeout = self.timeout_seconds.filter(|t| *t > 0)?;
        Some(
            self.run_start()
                .saturating_add(timeout.saturating_mul(1000)),
        )
    }

    /// When the current run began: the engine's `startTime`, else the moment the engine
    /// reopened the task, else taskpulse's first sight of it.
    pub fn run_start(&self) -> i64 {
        self.start_time
            .filter(|t| *t > 0)
            .or(self.reopened_at)
            .unwrap_or(self.first_seen)
    }

    /// The end of a finished task, as the lifecycle compares it with a reopen: the engine's
    /// time of its terminal update, else when taskpulse saw it finish.
    pub fn ended_at(&self) -> Option<i64> {
        self.end_time.or(self.terminal_at)
    }

    /// A WAIT task that hasn't finished sits in the WAIT queue.
    pub fn is_waiting(&self) -> bool {
        !self.status.is_terminal() && &*self.task_type == WAIT_TASK_TYPE
    }

    /// In flight: not finished and not a WAIT task.
    pub fn is_in_flight(&self) -> bool {
        !self.status.is_terminal() && &*self.task_type != WAIT_TASK_TYPE
    }

    /// Reports progress that hasn't changed for `stall_after_ms` (the caller decides whether
    /// the task is still running). One definition for the metrics, the read API and the page
    /// ([`progress_stalled`]).
    pub fn progress_stalled(&self, now: i64, stall_after_ms: i64) -> bool {
        progress_stalled(
            self.progress.is_some(),
            self.progress_changed,
            now,
            stall_after_ms,
        )
    }

    /// Whether a predicted completion falls after the deadline ([`predicted_late`]).
    pub fn predicted_late(&self, predicted_completion: Option<i64>) -> bool {
        predicted_late(predicted_completion, self.deadline_ms())
    }
}

/// Progress reported and unchanged since `progress_changed` for `stall_after_ms`: the rule
/// behind [`TaskRecord::progress_stalled`] and the scrape's copy of a task's fields.
pub fn progress_stalled(
    has_progress: bool,
    progress_changed: i64,
    now: i64,
    stall_after_ms: i64,
) -> bool {
    has_progress && now - progress_changed >= stall_after_ms
}

/// A predicted completion after the deadline: the rule behind [`TaskRecord::predicted_late`]
/// and the scrape's copy of a task's fields.
pub fn predicted_late(predicted_completion: Option<i64>, deadline: Option<i64>) -> bool {
    matches!((predicted_completion, deadline), (Some(p), Some(d)) if p > d)
}

#[cfg(test)]
impl TaskRecord {
    /// An `encode` task in progress, first seen at `at` with nothing else known: the unit
    /// tests' starting point.
    pub(crate) fn in_progress(task_id: &str, at: i64) -> TaskRecord {
        TaskRecord {
            task_id: task_id.into(),
            workflow_id: "w".into(),
            task_type: "encode".into(),
            workflow_type: None,
            reference_task_name: None,
            seq: None,
            iteration: None,
            retry_count: None,
            status: Status::InProgress,
            progress: None,
            progress_message: None,
            worker_id: None,
            start_time: None,
            update_time: None,
            timeout_seconds: None,
            response_timeout_seconds: None,
            wait_until: None,
            parent_task_id: None,
            iteration_value: None,
            end_time: None,
            reopened_at: None,
            first_seen: at,
            last_seen: at,
            progress_changed: at,
            terminal_at: None,
        }
    }
}

/// Whether a history line records an accepted status change, a rejected update, or the
/// engine putting a finished task back to work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Accepted,
    Rejected,
    /// The engine's own store shows the finished task scheduled or started again under the
    /// same id (the line's `reason` says how: `reopened by the engine (rerun)`).
    Reopened,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Reopened => "reopened",
        }
    }

    /// What the store holds; anything unknown reads as accepted.
    pub fn parse(s: &str) -> Outcome {
        match s {
            "rejected" => Outcome::Rejected,
            "reopened" => Outcome::Reopened,
            _ => Outcome::Accepted,
        }
    }
}

/// One line of a task's history: an accepted status change or a rejected update.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    #[serde(skip)]
    pub task_id: Arc<str>,
    /// taskpulse's time, epoch ms.
    pub at: i64,
    pub outcome: Outcome,
    pub from: Option<Status>,
    pub to: Status,
    pub reason: Option<String>,
    pub worker_id: Option<Arc<str>>,
    pub progress_percent: Option<f32>,
    pub update_time: Option<i64>,
    /// How many updates this line stands for: rejected updates of a task are folded into one
    /// line per `--progress-min-interval` (the first one's details, and this count).
    pub count: u32,
    /// When the last of them came (epoch ms), when there were several.
    pub last_at: Option<i64>,
}

/// History lines kept per task (the newest); older ones are pruned from the store.
pub const HISTORY_KEPT: usize = 50;
/// Attempts kept per task (the newest); older ones are pruned from the store.
pub const ATTEMPTS_KEPT: usize = 20;

/// An `f32` written as the `f64` it widens to (`33.29999923706055` for 33.3): the read API
/// has always written progress so (its answers were once built as `serde_json` values, which
/// hold `f64`), and clients compare what they read.
fn widened<S: serde::Serializer>(v: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(p) => s.serialize_some(&f64::from(*p)),
        None => s.serialize_none(),
    }
}

/// Which worker ran an attempt of a task. Kept after the worker is gone.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    #[serde(skip)]
    pub task_id: Arc<str>,
    /// Conductor's `retryCount` (0 for the first attempt).
    pub attempt: i32,
    pub worker_id: Arc<str>,
    /// The attempt's own state and engine times, where the engine reports them per attempt
    /// (Kestra); absent when attempts are only known from the task's updates (Conductor,
    /// where each retry is a task of its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    /// taskpulse's first and last sight of the attempt.
    pub first_seen: i64,
    pub last_seen: i64,
}

impl Attempt {
    /// An attempt first seen `now`, with no state of its own reported (yet).
    pub fn seen(task_id: Arc<str>, attempt: i32, worker_id: Arc<str>, now: i64) -> Attempt {
        Attempt {
            task_id,
            attempt,
            worker_id,
            status: None,
            start_time: None,
            end_time: None,
            first_seen: now,
            last_seen: now,
        }
    }
}

/// A stored task and the version its row had when it was read (optimistic locking).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTask {
    pub rec: TaskRecord,
    pub version: i64,
}

/// One line of the checker's audit trail: a repair it attempted.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairRecord {
    pub id: Option<i64>,
    /// When, epoch ms.
    pub at: i64,
    pub rule: String,
    pub task_id: String,
    pub workflow_id: String,
    /// `repaired`, `conflict` or `failed`.
    pub outcome: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub evidence: serde_json::Value,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_classify() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert_eq!(Status::parse("in_progress"), None);
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal.len(), 7);
        assert!(!Status::Scheduled.is_terminal() && !Status::InProgress.is_terminal());
        assert!(Status::Skipped.is_successful() && !Status::TimedOut.is_successful());
    }

    #[test]
    fn deadline_starts_at_start_time_or_first_sight() {
        let mut r = TaskRecord::in_progress("t", 1_000);
        r.timeout_seconds = Some(60);
        assert_eq!(r.deadline_ms(), Some(61_000));
        r.start_time = Some(500);
        assert_eq!(r.deadline_ms(), Some(60_500));
        r.timeout_seconds = Some(0);
        assert_eq!(r.deadline_ms(), None, "0 means no timeout");
        assert!(r.is_in_flight() && !r.is_waiting());
        r.task_type = WAIT_TASK_TYPE.into();
        assert!(r.is_waiting() && !r.is_in_flight());
        r.status = Status::Completed;
        assert!(!r.is_waiting() && !r.is_in_flight());
    }
}
