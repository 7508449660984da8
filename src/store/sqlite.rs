//! SQLite backend: the embedded default. One file, WAL journal, created if absent.
//!
//! A batch is one transaction of prepared statements (cached per connection); SQLite runs them
//! in-process, so per-row statements cost microseconds and need no multi-row tricks.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{
    AttemptRow, Batch, EventRow, TaskEvent, TaskRecord, TaskRow, ATTEMPT_COLUMNS, EVENT_COLUMNS,
    OVERWRITE_GUARD, TASK_COLUMNS,
};
use crate::error::Result;
use crate::store::{upsert_set_clause, Attempt};

pub(super) async fn connect(url: &str) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged completion survives a power cut, not only a process crash.
        // Group commit keeps the fsync cost per batch, not per update.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok(pool)
}

fn upsert_sql() -> String {
    let placeholders = vec!["?"; TASK_COLUMNS.split(", ").count()].join(", ");
    format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({placeholders}) \
         ON CONFLICT (task_id) DO UPDATE SET {} WHERE {OVERWRITE_GUARD}",
        upsert_set_clause()
    )
}

pub(super) async fn write_batch(pool: &SqlitePool, batch: &Batch) -> Result<Vec<usize>> {
    static UPSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let upsert = UPSERT.get_or_init(upsert_sql);
    let mut conflicts = Vec::new();
    let mut tx = pool.begin().await?;
    for (i, t) in batch.tasks.iter().enumerate() {
        let done = sqlx::query(upsert)
            .bind(&*t.task_id)
            .bind(&*t.workflow_id)
            .bind(&*t.task_type)
            .bind(t.workflow_type.as_deref())
            .bind(t.reference_task_name.as_deref())
            .bind(t.seq)
            .bind(t.iteration)
            .bind(t.retry_count)
            .bind(t.status.as_str())
            .bind(t.progress)
            .bind(t.progress_message.as_deref())
            .bind(t.worker_id.as_deref())
            .bind(t.start_time)
            .bind(t.update_time)
            .bind(t.timeout_seconds)
            .bind(t.response_timeout_seconds)
            .bind(t.wait_until)
            .bind(t.first_seen)
            .bind(t.last_seen)
            .bind(t.progress_changed)
            .bind(t.terminal_at)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            conflicts.push(i);
        }
    }
    for e in &batch.events {
        sqlx::query(
            "INSERT INTO task_events (task_id, at, outcome, from_status, to_status, reason, worker_id, progress, update_time) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&*e.task_id)
        .bind(e.at)
        .bind(e.outcome)
        .bind(e.from.map(|s| s.as_str()))
        .bind(e.to.as_str())
        .bind(e.reason.as_deref())
        .bind(e.worker_id.as_deref())
        .bind(e.progress_percent)
        .bind(e.update_time)
        .execute(&mut *tx)
        .await?;
    }
    for a in &batch.attempts {
        sqlx::query(
            "INSERT INTO task_attempts (task_id, attempt, worker_id, first_seen, last_seen) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (task_id, attempt, worker_id) DO UPDATE SET last_seen = max(task_attempts.last_seen, excluded.last_seen)",
        )
        .bind(&*a.task_id)
        .bind(a.attempt)
        .bind(&*a.worker_id)
        .bind(a.first_seen)
        .bind(a.last_seen)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(conflicts)
}

pub(super) async fn load_tasks(pool: &SqlitePool, terminal_since: i64) -> Result<Vec<TaskRecord>> {
    let rows: Vec<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE terminal_at IS NULL OR terminal_at >= ?"
    ))
    .bind(terminal_since)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TaskRecord::try_from).collect()
}

pub(super) async fn get_task(pool: &SqlitePool, task_id: &str) -> Result<Option<TaskRecord>> {
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?"
    ))
    .bind(task_id)
    .fetch_optional(pool)
    .await?;
    row.map(TaskRecord::try_from).transpose()
}

pub(super) async fn task_history(
    pool: &SqlitePool,
    task_id: &str,
    limit: i64,
) -> Result<Vec<TaskEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM task_events WHERE task_id = ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(task_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TaskEvent::try_from).collect()
}

pub(super) async fn task_attempts(pool: &SqlitePool, task_id: &str) -> Result<Vec<Attempt>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM task_attempts WHERE task_id = ? ORDER BY attempt, first_seen"
    ))
    .bind(task_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Attempt::from).collect())
}
