//! How tasks, history, attempts and audit lines are laid out in the store's tables: the column
//! lists both backends bind in the same order, the conditional-upsert guard they share, and the
//! row types both decode into the domain model.

use crate::error::{Error, Result};
use crate::model::{Attempt, Outcome, RepairRecord, Status, StoredTask, TaskEvent, TaskRecord};

/// The SQL condition under which a stored row may be overwritten: it is not terminal, and the
/// incoming `update_time` is not older. Shared by both backends so they cannot disagree.
///
/// A terminal row is overwritten only by the engine reopening it: the incoming row's
/// `reopened_at` comes after the stored task's end (`end_time`, else `terminal_at`), the
/// lifecycle's own rule ([`crate::lifecycle::reopens`]), so every replica decides alike.
pub(crate) const OVERWRITE_GUARD: &str = "(tasks.status NOT IN ('COMPLETED','COMPLETED_WITH_ERRORS','FAILED','FAILED_WITH_TERMINAL_ERROR','TIMED_OUT','CANCELED','SKIPPED') \
       OR excluded.reopened_at > COALESCE(tasks.end_time, tasks.terminal_at)) \
     AND (excluded.update_time IS NULL OR tasks.update_time IS NULL OR excluded.update_time >= tasks.update_time)";

/// Column list shared by both backends, in bind order.
pub const TASK_COLUMNS: &str = "task_id, workflow_id, task_type, workflow_type, reference_task_name, seq, iteration, retry_count, status, progress, progress_message, worker_id, start_time, update_time, timeout_seconds, response_timeout_seconds, wait_until, parent_task_id, iteration_value, end_time, reopened_at, first_seen, last_seen, progress_changed, terminal_at";

/// `SET` clause of the upsert: every column but the key and `first_seen`, plus the version.
pub(crate) fn upsert_set_clause() -> String {
    let mut set: Vec<String> = TASK_COLUMNS
        .split(", ")
        .filter(|c| *c != "task_id" && *c != "first_seen")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    set.push("version = tasks.version + 1".into());
    set.join(", ")
}

/// A stored status, or an error naming it (a row written by something else).
pub(crate) fn decode_status(s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| {
        Error::Database(sqlx::Error::Decode(
            format!("unknown task status `{s}` in the store").into(),
        ))
    })
}

/// A `tasks` row as both backends return it.
#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    task_id: String,
    workflow_id: String,
    task_type: String,
    workflow_type: Option<String>,
    reference_task_name: Option<String>,
    seq: Option<i32>,
    iteration: Option<i32>,
    retry_count: Option<i32>,
    status: String,
    progress: Option<f32>,
    progress_message: Option<String>,
    worker_id: Option<String>,
    start_time: Option<i64>,
    update_time: Option<i64>,
    timeout_seconds: Option<i64>,
    response_timeout_seconds: Option<i64>,
    wait_until: Option<i64>,
    parent_task_id: Option<String>,
    iteration_value: Option<String>,
    end_time: Option<i64>,
    reopened_at: Option<i64>,
    first_seen: i64,
    last_seen: i64,
    progress_changed: i64,
    terminal_at: Option<i64>,
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = Error;
    fn try_from(r: TaskRow) -> Result<TaskRecord> {
        Ok(TaskRecord {
            task_id: r.task_id.into(),
            workflow_id: r.workflow_id.into(),
            task_type: r.task_type.into(),
            workflow_type: r.workflow_type.map(Into::into),
            reference_task_name: r.reference_task_name.map(Into::into),
            seq: r.seq,
            iteration: r.iteration,
            retry_count: r.retry_count,
            status: decode_status(&r.status)?,
            progress: r.progress,
            progress_message: r.progress_message.map(Into::into),
            worker_id: r.worker_id.map(Into::into),
            start_time: r.start_time,
            update_time: r.update_time,
            timeout_seconds: r.timeout_seconds,
            response_timeout_seconds: r.response_timeout_seconds,
            wait_until: r.wait_until,
            parent_task_id: r.parent_task_id.map(Into::into),
            iteration_value: r.iteration_value.map(Into::into),
            end_time: r.end_time,
            reopened_at: r.reopened_at,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            progress_changed: r.progress_changed,
            terminal_at: r.terminal_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    task_id: String,
    at: i64,
    outcome: String,
    from_status: Option<String>,
    to_status: String,
    reason: Option<String>,
    worker_id: Option<String>,
    progress: Option<f32>,
    update_time: Option<i64>,
    count: i32,
    last_at: Option<i64>,
}

impl TryFrom<EventRow> for TaskEvent {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<TaskEvent> {
        Ok(TaskEvent {
            task_id: r.task_id.into(),
            at: r.at,
            outcome: Outcome::parse(&r.outcome),
            from: r.from_status.as_deref().map(decode_status).transpose()?,
            to: decode_status(&r.to_status)?,
            reason: r.reason,
            worker_id: r.worker_id.map(Into::into),
            progress_percent: r.progress,
            update_time: r.update_time,
            count: r.count.max(1) as u32,
            last_at: r.last_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    task_id: String,
    attempt: i32,
    worker_id: String,
    status: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    first_seen: i64,
    last_seen: i64,
}

impl From<AttemptRow> for Attempt {
    fn from(r: AttemptRow) -> Attempt {
        Attempt {
            task_id: r.task_id.into(),
            attempt: r.attempt,
            worker_id: r.worker_id.into(),
            // a status this version doesn't know (a newer one wrote it) shows as none
            status: r.status.as_deref().and_then(Status::parse),
            start_time: r.start_time,
            end_time: r.end_time,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
        }
    }
}

pub(crate) const EVENT_COLUMNS: &str =
    "task_id, at, outcome, from_status, to_status, reason, worker_id, progress, update_time, count, last_at";

/// Deletes a task's history lines beyond the newest [`crate::model::HISTORY_KEPT`] (`$1`: the
/// task id; nothing when it has fewer).
pub(crate) fn prune_events_sql() -> String {
    format!(
        "DELETE FROM task_events WHERE task_id = $1 AND id < \
         (SELECT id FROM task_events WHERE task_id = $1 ORDER BY id DESC LIMIT 1 OFFSET {})",
        crate::model::HISTORY_KEPT - 1
    )
}

/// Deletes a task's attempts beyond the newest [`crate::model::ATTEMPTS_KEPT`].
pub(crate) fn prune_attempts_sql() -> String {
    format!(
        "DELETE FROM task_attempts WHERE task_id = $1 AND (attempt, worker_id) NOT IN \
         (SELECT attempt, worker_id FROM task_attempts WHERE task_id = $1 \
          ORDER BY attempt DESC, last_seen DESC LIMIT {})",
        crate::model::ATTEMPTS_KEPT
    )
}
pub(crate) const ATTEMPT_COLUMNS: &str =
    "task_id, attempt, worker_id, status, start_time, end_time, first_seen, last_seen";

/// On a repeat of an attempt: the newest state and times it reported, the latest sight.
pub(crate) const ATTEMPT_UPSERT: &str = "ON CONFLICT (task_id, attempt, worker_id) DO UPDATE SET \
     status = COALESCE(excluded.status, task_attempts.status), \
     start_time = COALESCE(excluded.start_time, task_attempts.start_time), \
     end_time = COALESCE(excluded.end_time, task_attempts.end_time), \
     last_seen = GREATEST(task_attempts.last_seen, excluded.last_seen)";

/// SQL is written once with `$N` placeholders; SQLite reads them as `?N`.
pub(crate) fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// A `tasks` row with its version (optimistic locking).
#[derive(sqlx::FromRow)]
pub(crate) struct VersionedRow {
    #[sqlx(flatten)]
    row: TaskRow,
    version: i64,
}

impl TryFrom<VersionedRow> for StoredTask {
    type Error = Error;
    fn try_from(v: VersionedRow) -> Result<StoredTask> {
        Ok(StoredTask {
            rec: TaskRecord::try_from(v.row)?,
            version: v.version,
        })
    }
}

/// A `repairs` row.
#[derive(sqlx::FromRow)]
pub(crate) struct RepairRow {
    id: i64,
    at: i64,
    rule: String,
    task_id: String,
    workflow_id: String,
    outcome: String,
    before: Option<String>,
    after: Option<String>,
    evidence: String,
    detail: String,
}

impl From<RepairRow> for RepairRecord {
    fn from(r: RepairRow) -> RepairRecord {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        RepairRecord {
            id: Some(r.id),
            at: r.at,
            rule: r.rule,
            task_id: r.task_id,
            workflow_id: r.workflow_id,
            outcome: r.outcome,
            before: r.before.as_deref().map(json),
            after: r.after.as_deref().map(json),
            evidence: json(&r.evidence),
            detail: r.detail,
        }
    }
}

pub(crate) const REPAIR_COLUMNS: &str =
    "id, at, rule, task_id, workflow_id, outcome, before, after, evidence, detail";

/// Binds a record's columns in `TASK_COLUMNS` order (works for both backends' queries).
macro_rules! bind_record {
    ($q:expr, $t:expr) => {
        $q.bind(&*$t.task_id)
            .bind(&*$t.workflow_id)
            .bind(&*$t.task_type)
            .bind($t.workflow_type.as_deref())
            .bind($t.reference_task_name.as_deref())
            .bind($t.seq)
            .bind($t.iteration)
            .bind($t.retry_count)
            .bind($t.status.as_str())
            .bind($t.progress)
            .bind($t.progress_message.as_deref())
            .bind($t.worker_id.as_deref())
            .bind($t.start_time)
            .bind($t.update_time)
            .bind($t.timeout_seconds)
            .bind($t.response_timeout_seconds)
            .bind($t.wait_until)
            .bind($t.parent_task_id.as_deref())
            .bind($t.iteration_value.as_deref())
            .bind($t.end_time)
            .bind($t.reopened_at)
            .bind($t.first_seen)
            .bind($t.last_seen)
            .bind($t.progress_changed)
            .bind($t.terminal_at)
    };
}
pub(crate) use bind_record;
