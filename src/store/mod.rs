//! The store: SQLite (the embedded default) or PostgreSQL, behind one type.
//!
//! Migrations for both are embedded in the binary. All writes go through one batching
//! [`writer`], so many tasks share one transaction (group commit). Every task write is
//! conditional: it never overwrites a terminal row or a row with a newer `updateTime`, so a
//! stale write from anywhere (a late batch, another replica) cannot undo a completion.

pub mod audit;
mod postgres;
mod sqlite;
pub mod writer;

use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::lifecycle::Status;

pub use audit::{RepairRecord, StoredTask};
pub use writer::{Commit, Op, WriteKind, WriterHandle};

/// A task as persisted, and as held in memory (the in-memory table wraps it with throttle
/// bookkeeping). Strings are `Arc<str>` so a snapshot for the writer costs reference counts,
/// not copies, and repeated names (task types, workflow ids, workers) are shared.
///
/// Serialized (camelCase, times in epoch ms) it is the body of the read API's task views.
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
    #[serde(rename = "progressPercent")]
    pub progress: Option<f32>,
    pub progress_message: Option<Arc<str>>,
    pub worker_id: Option<Arc<str>>,
    /// Engine times, epoch ms.
    pub start_time: Option<i64>,
    pub update_time: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub response_timeout_seconds: Option<i64>,
    pub wait_until: Option<i64>,
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
        let start = self
            .start_time
            .filter(|t| *t > 0)
            .unwrap_or(self.first_seen);
        Some(start.saturating_add(timeout.saturating_mul(1000)))
    }

    /// A WAIT task that hasn't finished sits in the WAIT queue.
    pub fn is_waiting(&self) -> bool {
        !self.status.is_terminal() && &*self.task_type == "WAIT"
    }

    /// In flight: not finished and not a WAIT task.
    pub fn is_in_flight(&self) -> bool {
        !self.status.is_terminal() && &*self.task_type != "WAIT"
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
    /// `accepted` or `rejected`.
    pub outcome: &'static str,
    pub from: Option<Status>,
    pub to: Status,
    pub reason: Option<String>,
    pub worker_id: Option<Arc<str>>,
    pub progress_percent: Option<f32>,
    pub update_time: Option<i64>,
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
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A batch for one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub tasks: Vec<TaskRecord>,
    /// History written whatever happens to the rows (rejected updates).
    pub events: Vec<TaskEvent>,
    /// History of the task rows in this batch (accepted status changes), and the workers of
    /// their attempts: written only for rows the conditional upsert actually wrote.
    pub task_events: Vec<TaskEvent>,
    pub attempts: Vec<Attempt>,
}

impl Batch {
    /// The events and attempts to store once `conflicts` (indexes into `tasks`) are known.
    pub(crate) fn history_after(&self, conflicts: &[usize]) -> (Vec<&TaskEvent>, Vec<&Attempt>) {
        let lost: std::collections::HashSet<&str> =
            conflicts.iter().map(|i| &*self.tasks[*i].task_id).collect();
        let events = self
            .events
            .iter()
            .chain(
                self.task_events
                    .iter()
                    .filter(|e| !lost.contains(&*e.task_id)),
            )
            .collect();
        let attempts = self
            .attempts
            .iter()
            .filter(|a| !lost.contains(&*a.task_id))
            .collect();
        (events, attempts)
    }
}

/// How long taking a PostgreSQL connection from the pool may wait, once running. sqlx retries a
/// refused connection until this runs out, so it is also how long a store outage takes to
/// surface as an error: the writer flags the store failing (and ingest answers 503 at once)
/// after this, not after the 10 s a starting service waits for its database.
const PG_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to PostgreSQL, waiting up to `timeout` for the server, with a pool whose acquire
/// timeout is the shorter [`PG_ACQUIRE_TIMEOUT`].
async fn connect_postgres(url: &str, timeout: std::time::Duration) -> Result<sqlx::PgPool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let this_try = left
            .min(PG_ACQUIRE_TIMEOUT)
            .max(std::time::Duration::from_millis(100));
        match postgres::connect(url, this_try).await {
            Err(Error::Database(sqlx::Error::PoolTimedOut))
                if tokio::time::Instant::now() < deadline => {}
            other => return other,
        }
    }
}

/// SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Connects to `sqlite://PATH` (created if absent) or `postgres://...`, waiting up to 10 s
    /// for the server.
    pub async fn connect(url: &str) -> Result<Store> {
        Self::connect_within(url, std::time::Duration::from_secs(10)).await
    }

    /// Connects, giving up after `timeout` (a one-shot command shouldn't wait as long as a
    /// service starting next to its database).
    pub async fn connect_within(url: &str, timeout: std::time::Duration) -> Result<Store> {
        if url.starts_with("sqlite:") {
            sqlite::connect(url, timeout).await.map(Store::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            connect_postgres(url, timeout).await.map(Store::Postgres)
        } else {
            Err(Error::UnsupportedDatabase(crate::config::redact_url(url)))
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
            Store::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Reachable, and every embedded migration applied.
    pub async fn ready(&self) -> Result<()> {
        let expected = match self {
            Store::Sqlite(_) => sqlx::migrate!("migrations/sqlite").iter().count(),
            Store::Postgres(_) => sqlx::migrate!("migrations/postgres").iter().count(),
        } as i64;
        let has_table: bool = match self {
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')")
                    .fetch_one(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await?
            }
        };
        if !has_table {
            return Err(Error::NotMigrated(
                "the database has no taskpulse tables; run `taskpulse migrate` (or start `taskpulse serve`, which migrates)".into(),
            ));
        }
        let applied: i64 = match self {
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?
            }
        };
        if applied < expected {
            return Err(Error::NotMigrated(format!(
                "the database has {applied} of {expected} migrations applied; run `taskpulse migrate`"
            )));
        }
        Ok(())
    }

    /// Writes one batch in one transaction. Returns the indexes of task rows that were not
    /// written because the stored row is terminal or newer (a conflict).
    pub async fn write_batch(&self, batch: &Batch) -> Result<Vec<usize>> {
        match self {
            Store::Sqlite(pool) => sqlite::write_batch(pool, batch).await,
            Store::Postgres(pool) => postgres::write_batch(pool, batch).await,
        }
    }

    /// Tasks to rebuild memory from: every unfinished task, and finished ones newer than
    /// `terminal_since` (epoch ms).
    pub async fn load_tasks(&self, terminal_since: i64) -> Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        self.each_task(terminal_since, &mut |rec| out.push(rec))
            .await?;
        Ok(out)
    }

    /// Hands every unfinished task, and every task finished since `terminal_since`, to `each`
    /// as its row arrives; returns how many. The start-up rebuild uses this, so a million rows
    /// never sit in a vector (twice: rows, then records) next to the table they are going into:
    /// that cost ~100 B per task of memory the allocator kept afterwards.
    pub async fn each_task(
        &self,
        terminal_since: i64,
        each: &mut (dyn FnMut(TaskRecord) + Send),
    ) -> Result<usize> {
        use futures_util::TryStreamExt;
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE terminal_at IS NULL OR terminal_at >= $1"
        );
        // One loop over either backend's row stream (the pools' types differ).
        macro_rules! stream_into {
            ($pool:expr, $sql:expr) => {{
                let mut rows = sqlx::query_as::<_, TaskRow>($sql)
                    .bind(terminal_since)
                    .fetch($pool);
                let mut n = 0;
                while let Some(row) = rows.try_next().await? {
                    each(TaskRecord::try_from(row)?);
                    n += 1;
                }
                n
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => {
                let sql = audit::for_sqlite(&sql);
                stream_into!(pool, &sql)
            }
            Store::Postgres(pool) => stream_into!(pool, &sql),
        })
    }

    pub async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        match self {
            Store::Sqlite(pool) => sqlite::get_task(pool, task_id).await,
            Store::Postgres(pool) => postgres::get_task(pool, task_id).await,
        }
    }

    /// The stored tasks among `ids` (one query per few thousand ids).
    pub async fn get_tasks(&self, ids: &[&str]) -> Result<Vec<TaskRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Sqlite(pool) => sqlite::get_tasks(pool, ids).await,
            Store::Postgres(pool) => postgres::get_tasks(pool, ids).await,
        }
    }

    /// The newest `limit` events of a task, newest first.
    pub async fn task_history(&self, task_id: &str, limit: i64) -> Result<Vec<TaskEvent>> {
        match self {
            Store::Sqlite(pool) => sqlite::task_history(pool, task_id, limit).await,
            Store::Postgres(pool) => postgres::task_history(pool, task_id, limit).await,
        }
    }

    pub async fn task_attempts(&self, task_id: &str) -> Result<Vec<Attempt>> {
        match self {
            Store::Sqlite(pool) => sqlite::task_attempts(pool, task_id).await,
            Store::Postgres(pool) => postgres::task_attempts(pool, task_id).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// Whether a failed store call is about the store being unreachable, restarting, overloaded or
/// locked (so the same write will succeed later), rather than the store refusing the data.
///
/// The writer uses this to decide between retrying a batch forever and splitting it row by row
/// to find a row the store refuses: splitting on an outage would answer waiting clients with
/// "refused" and drop rows that only needed the store to come back. PostgreSQL reports a
/// shutdown (`57P01`) and a server still starting (`57P03`) as database errors, and SQLite
/// reports a lock held by another process as `SQLITE_BUSY`, so the error kind alone is not
/// enough: the SQLSTATE class or SQLite result code decides.
pub fn is_transient(e: &Error) -> bool {
    let Error::Database(e) = e else {
        return matches!(e, Error::Io(_) | Error::StoreUnavailable);
    };
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Decided by the backend, not by the code's look: many SQLSTATEs are all digits
            // ("08006", "40001", "53100") and would read as SQLite result codes.
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            if sqlite {
                let n = code.parse::<i64>().unwrap_or_default();
                // SQLite: the primary result code is the low byte of the extended one.
                // BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL.
                matches!(n & 0xff, 5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15)
            } else {
                // PostgreSQL SQLSTATE classes: connection exception, insufficient resources,
                // operator intervention (shutdown, cancel), system error, transaction rollback
                // (serialization, deadlock), lock not available, and a read-only transaction:
                // a primary that failed over and came back as a standby, or a database set
                // read-only for maintenance, takes writes again later.
                ["08", "53", "57", "58", "40"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || code == "55P03"
                    || code == "25006"
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The SQL condition under which a stored row may be overwritten: it is not terminal, and the
/// incoming `update_time` is not older. Shared by both backends so they cannot disagree.
pub(crate) const OVERWRITE_GUARD: &str = "tasks.status NOT IN ('COMPLETED','COMPLETED_WITH_ERRORS','FAILED','FAILED_WITH_TERMINAL_ERROR','TIMED_OUT','CANCELED','SKIPPED') \
     AND (excluded.update_time IS NULL OR tasks.update_time IS NULL OR excluded.update_time >= tasks.update_time)";

/// Column list shared by both backends, in bind order.
pub(crate) const TASK_COLUMNS: &str = "task_id, workflow_id, task_type, workflow_type, reference_task_name, seq, iteration, retry_count, status, progress, progress_message, worker_id, start_time, update_time, timeout_seconds, response_timeout_seconds, wait_until, first_seen, last_seen, progress_changed, terminal_at";

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

/// Reads a row into a record; shared row decoding for both backends.
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
}

impl TryFrom<EventRow> for TaskEvent {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<TaskEvent> {
        Ok(TaskEvent {
            task_id: r.task_id.into(),
            at: r.at,
            outcome: if r.outcome == "rejected" {
                "rejected"
            } else {
                "accepted"
            },
            from: r.from_status.as_deref().map(decode_status).transpose()?,
            to: decode_status(&r.to_status)?,
            reason: r.reason,
            worker_id: r.worker_id.map(Into::into),
            progress_percent: r.progress,
            update_time: r.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    task_id: String,
    attempt: i32,
    worker_id: String,
    first_seen: i64,
    last_seen: i64,
}

impl From<AttemptRow> for Attempt {
    fn from(r: AttemptRow) -> Attempt {
        Attempt {
            task_id: r.task_id.into(),
            attempt: r.attempt,
            worker_id: r.worker_id.into(),
            first_seen: r.first_seen,
            last_seen: r.last_seen,
        }
    }
}

pub(crate) const EVENT_COLUMNS: &str =
    "task_id, at, outcome, from_status, to_status, reason, worker_id, progress, update_time";
pub(crate) const ATTEMPT_COLUMNS: &str = "task_id, attempt, worker_id, first_seen, last_seen";
