//! PostgreSQL backend. A batch is one transaction of three set-based statements
//! (`INSERT ... SELECT FROM UNNEST(...)`), so a batch of thousands of tasks costs three round
//! trips, not thousands.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::rows::{
    prune_attempts_sql, prune_events_sql, upsert_set_clause, AttemptRow, EventRow, TaskRow,
    ATTEMPT_COLUMNS, ATTEMPT_UPSERT, EVENT_COLUMNS, OVERWRITE_GUARD, TASK_COLUMNS,
};
use super::Batch;
use crate::error::Result;
use crate::model::{Attempt, TaskEvent, TaskRecord};

pub(super) async fn connect(url: &str, timeout: Duration) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(timeout)
        .connect(url)
        .await?;
    Ok(pool)
}

fn upsert_sql() -> String {
    format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::int4[], $7::int4[], $8::int4[], $9::text[], $10::float4[], $11::text[], $12::text[], \
           $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], \
           $18::text[], $19::text[], $20::int8[], $21::int8[], $22::int8[], $23::int8[], \
           $24::int8[], $25::int8[]) \
         ON CONFLICT (task_id) DO UPDATE SET {} WHERE {OVERWRITE_GUARD} \
         RETURNING task_id",
        upsert_set_clause()
    )
}

/// The writer hands over at most one row per task id (Postgres cannot update one row twice in
/// one statement).
pub(super) async fn write_batch(pool: &PgPool, batch: &Batch) -> Result<Vec<usize>> {
    static UPSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let upsert = UPSERT.get_or_init(upsert_sql);
    let t = &batch.tasks;
    let mut tx = pool.begin().await?;
    let mut conflicts = Vec::new();
    if !t.is_empty() {
        let written: Vec<String> = sqlx::query_scalar(upsert)
            .bind(t.iter().map(|r| &*r.task_id).collect::<Vec<_>>())
            .bind(t.iter().map(|r| &*r.workflow_id).collect::<Vec<_>>())
            .bind(t.iter().map(|r| &*r.task_type).collect::<Vec<_>>())
            .bind(
                t.iter()
                    .map(|r| r.workflow_type.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                t.iter()
                    .map(|r| r.reference_task_name.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(t.iter().map(|r| r.seq).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.iteration).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.retry_count).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.progress).collect::<Vec<_>>())
            .bind(
                t.iter()
                    .map(|r| r.progress_message.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(t.iter().map(|r| r.worker_id.as_deref()).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.start_time).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.update_time).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.timeout_seconds).collect::<Vec<_>>())
            .bind(
                t.iter()
                    .map(|r| r.response_timeout_seconds)
                    .collect::<Vec<_>>(),
            )
            .bind(t.iter().map(|r| r.wait_until).collect::<Vec<_>>())
            .bind(
                t.iter()
                    .map(|r| r.parent_task_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                t.iter()
                    .map(|r| r.iteration_value.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(t.iter().map(|r| r.end_time).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.reopened_at).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.first_seen).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.last_seen).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.progress_changed).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.terminal_at).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        if written.len() < t.len() {
            let written: HashSet<&str> = written.iter().map(String::as_str).collect();
            conflicts = (0..t.len())
                .filter(|i| !written.contains(&*t[*i].task_id))
                .collect();
        }
    }
    let (e, a) = batch.history_after(&conflicts);
    if !e.is_empty() {
        sqlx::query(
            "INSERT INTO task_events (task_id, at, outcome, from_status, to_status, reason, worker_id, progress, update_time, count, last_at) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float4[], $9::int8[], $10::int4[], $11::int8[])",
        )
        .bind(e.iter().map(|r| &*r.task_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.from.map(|s| s.as_str())).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.to.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.worker_id.as_deref()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.progress_percent).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.update_time).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.count as i32).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.last_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !a.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO task_attempts ({ATTEMPT_COLUMNS}) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[], \
               $6::int8[], $7::int8[], $8::int8[]) {ATTEMPT_UPSERT}"
        ))
        .bind(a.iter().map(|r| &*r.task_id).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.attempt).collect::<Vec<_>>())
        .bind(a.iter().map(|r| &*r.worker_id).collect::<Vec<_>>())
        .bind(
            a.iter()
                .map(|r| r.status.map(|s| s.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(a.iter().map(|r| r.start_time).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.end_time).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.first_seen).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.last_seen).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    for (ids, sql) in [
        (&batch.prune_events, prune_events_sql()),
        (&batch.prune_attempts, prune_attempts_sql()),
    ] {
        for id in ids {
            sqlx::query(&sql).bind(&**id).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(conflicts)
}

pub(super) async fn get_task(pool: &PgPool, task_id: &str) -> Result<Option<TaskRecord>> {
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"
    ))
    .bind(task_id)
    .fetch_optional(pool)
    .await?;
    row.map(TaskRecord::try_from).transpose()
}

pub(super) async fn get_tasks(pool: &PgPool, ids: &[&str]) -> Result<Vec<TaskRecord>> {
    let rows: Vec<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TaskRecord::try_from).collect()
}

pub(super) async fn task_history(
    pool: &PgPool,
    task_id: &str,
    limit: i64,
) -> Result<Vec<TaskEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM task_events WHERE task_id = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(task_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TaskEvent::try_from).collect()
}

pub(super) async fn task_attempts(pool: &PgPool, task_id: &str) -> Result<Vec<Attempt>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM (SELECT {ATTEMPT_COLUMNS} FROM task_attempts WHERE task_id = $1 \
         ORDER BY attempt DESC, last_seen DESC LIMIT {}) AS newest ORDER BY attempt, first_seen",
        crate::model::ATTEMPTS_KEPT
    ))
    .bind(task_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Attempt::from).collect())
}
