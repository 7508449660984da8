//! `airflow_success_overwritten` (`docs/engines/airflow.md` §4.4 and §9), report only: a try
//! that succeeded and then went to `failed` **in that same try**, in either of the two ways
//! Airflow's database shows it:
//!
//! - **overwritten**: taskpulse followed the try to `success`, and Airflow's row now shows it
//!   `failed` (or `upstream_failed`) with the same `try_number`, the try never archived to
//!   `task_instance_history` (a retry and a clear both archive it first, so it is neither);
//! - **stale executor success** (apache/airflow#71172, #72716, #33000): the executor reported
//!   the try's end as `success` after the task instance with the same `try_number` already
//!   looked scheduled, queued or running again (a reschedule-mode sensor's next poke, a
//!   resumed deferral), and the scheduler's `process_executor_events` took it for a task
//!   killed externally: it wrote a `state mismatch` line to Airflow's `log` table and failed
//!   the task instance (`handle_failure`, which writes a `failed` line too).
//!
//! taskpulse holds the first finished state and rejects an overwrite; the rule says so with both
//! sides' evidence: Airflow's row and its `log` lines for that try, and taskpulse's record and
//! its rejected transitions. Nothing is written to Airflow.
//!
//! Cost, per pass: the failed task instances changed within [`RECENT`] through `ti_state` (the
//! filter on the unindexed `updated_at` applies to the failed rows only) and the `state
//! mismatch` lines of [`RECENT`] through `idx_log_event`, at most [`MAX_READ`] each, and
//! taskpulse's records of those in one store query. The per-task look-ups (`log`,
//! `task_instance_history`, taskpulse's history) run for the violations only.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::rows::Key;
use crate::checker::{Context, Rule, Violation};
use crate::error::Result;
use crate::model::{Outcome, Status, TaskRecord};

pub const SUCCESS_OVERWRITTEN: &str = "airflow_success_overwritten";
/// How far back a failed task instance (by `updated_at`) or a `state mismatch` line (by
/// `dttm`) is looked at: a checker pass runs every few minutes, so a day leaves room for
/// passes that failed or a taskpulse restarted.
const RECENT: &str = "1 day";
/// Rows read per pass and query, at most (the newest first).
const MAX_READ: i64 = 5_000;
/// Airflow `log` lines and taskpulse history lines kept in the evidence.
const LINES_KEPT: usize = 5;
/// The columns of `task_instance` (as `t`) a candidate is read with ([`Candidate::from_row`]).
const COLUMNS: &str = "t.dag_id, t.run_id, t.task_id, t.map_index, t.state, t.try_number, \
     (extract(epoch FROM t.end_date) * 1000)::int8, \
     (extract(epoch FROM t.updated_at) * 1000)::int8, left(t.hostname, 256), t.pid";

/// Which of the two ways the try's success turned to a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// taskpulse followed the try to success; Airflow's row now says failed in it.
    Overwritten,
    /// Airflow's `log` has the executor's `success` for the try taken as a state mismatch.
    StaleExecutorSuccess,
}

impl Shape {
    fn as_str(self) -> &'static str {
        match self {
            Shape::Overwritten => "overwritten",
            Shape::StaleExecutorSuccess => "staleExecutorSuccess",
        }
    }
}

/// A task instance as the rule reads it: its row now, and the try in question.
struct Candidate {
    key: Key,
    state: Option<String>,
    /// The row's `try_number` now.
    try_number: i32,
    /// The try whose success turned to a failure.
    the_try: i32,
    end: Option<i64>,
    updated: Option<i64>,
    hostname: Option<String>,
    pid: Option<i32>,
    shape: Shape,
}

impl Candidate {
    /// From a row of [`COLUMNS`].
    fn from_row(r: &PgRow, the_try: Option<i32>, shape: Shape) -> Result<Candidate> {
        let try_number: i32 = r.try_get(5)?;
        Ok(Candidate {
            key: Key::from_row(r)?,
            state: r.try_get(4)?,
            try_number,
            the_try: the_try.unwrap_or(try_number),
            end: r.try_get(6)?,
            updated: r.try_get(7)?,
            hostname: r.try_get(8)?,
            pid: r.try_get(9)?,
            shape,
        })
    }
}

/// The rule: a try's success turned to a failure in that same try.
pub struct SuccessOverwritten {
    pool: PgPool,
}

impl SuccessOverwritten {
    pub(super) fn new(pool: PgPool) -> SuccessOverwritten {
        SuccessOverwritten { pool }
    }

    /// The task instances failed (changed within [`RECENT`]), in their current try.
    async fn failed(&self) -> Result<Vec<Candidate>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM task_instance t WHERE t.state IN ('failed', 'upstream_failed') \
             AND t.updated_at > now() - interval '{RECENT}' ORDER BY t.updated_at DESC LIMIT $1"
        );
        let rows = sqlx::query(&sql)
            .bind(MAX_READ)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Candidate::from_row(r, None, Shape::Overwritten))
            .collect()
    }

    /// The task instances of the `state mismatch` lines (within [`RECENT`]) where the executor
    /// reported `success` (`scheduler_job_runner.py`'s message: "... finished with state
    /// success, but the task instance's state attribute is ..."), with the try of the line;
    /// not those of a cleared try (`restarting`), which Airflow sets back to no state instead.
    async fn stale_successes(&self) -> Result<Vec<Candidate>> {
        let sql = format!(
            "SELECT DISTINCT ON (t.id) {COLUMNS}, l.try_number FROM log l \
             JOIN task_instance t ON t.dag_id = l.dag_id AND t.task_id = l.task_id \
             AND t.run_id = l.run_id AND t.map_index = l.map_index \
             WHERE l.event = 'state mismatch' AND l.dttm > now() - interval '{RECENT}' \
             AND l.extra LIKE '%finished with state success,%' \
             AND l.extra NOT LIKE '%state attribute is restarting%' \
             ORDER BY t.id, l.id DESC LIMIT $1"
        );
        let rows = sqlx::query(&sql)
            .bind(MAX_READ)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let the_try: Option<i32> = r.try_get(10)?;
                Candidate::from_row(r, the_try, Shape::StaleExecutorSuccess)
            })
            .collect()
    }

    /// Whether Airflow archived try `try_number` of the task instance (a retry or a clear did).
    async fn archived(&self, key: &Key, try_number: i32) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task_instance_history WHERE dag_id = $1 AND task_id = $2 \
             AND run_id = $3 AND map_index = $4 AND try_number = $5",
        )
        .bind(&key.dag_id)
        .bind(&key.task_id)
        .bind(&key.run_id)
        .bind(key.map_index)
        .bind(try_number)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Airflow's `log` lines for that try (`idx_log_task_instance`), oldest first: the
    /// scheduler's `state mismatch` and `failed` when it was the executor-event path; the REST
    /// API's audit line (`patch_task_instance`, which names no map index and no try) when a
    /// user marked it failed.
    async fn log_lines(&self, key: &Key, try_number: i32) -> Result<Vec<Value>> {
        let rows = sqlx::query(
            "SELECT event, (extract(epoch FROM dttm) * 1000)::int8, left(extra, 500) FROM log \
             WHERE dag_id = $1 AND task_id = $2 AND run_id = $3 \
             AND (map_index = $4 OR map_index IS NULL) \
             AND (try_number = $5 OR try_number IS NULL) ORDER BY id DESC LIMIT $6",
        )
        .bind(&key.dag_id)
        .bind(&key.task_id)
        .bind(&key.run_id)
        .bind(key.map_index)
        .bind(try_number)
        .bind(LINES_KEPT as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            out.push(json!({
                "event": r.try_get::<String, _>(0)?,
                "at": r.try_get::<Option<i64>, _>(1)?,
                "extra": r.try_get::<Option<String>, _>(2)?,
            }));
        }
        Ok(out)
    }

    /// The violation for `c`, which taskpulse holds as `held`.
    async fn violation(
        &self,
        ctx: &Context,
        c: &Candidate,
        held: Option<&TaskRecord>,
        archived: bool,
    ) -> Result<Violation> {
        let id = c.key.task_id();
        let taskpulse = match held {
            Some(t) => json!({
                "status": t.status.as_str(),
                "retryCount": t.retry_count,
                "endTime": t.end_time,
                "workerId": t.worker_id.as_deref(),
                "rejected": rejected(ctx, &id).await?,
            }),
            None => Value::Null,
        };
        let evidence = json!({
            "shape": c.shape.as_str(),
            "try": c.the_try,
            "airflow": {
                "state": c.state,
                "tryNumber": c.try_number,
                "archived": archived,
                "endDate": c.end,
                "updatedAt": c.updated,
                "hostname": c.hostname,
                "pid": c.pid,
                "log": self.log_lines(&c.key, c.the_try).await?,
            },
            "taskpulse": taskpulse,
        });
        Ok(Violation {
            rule: SUCCESS_OVERWRITTEN,
            task_id: id,
            workflow_id: c.key.workflow_id(),
            evidence,
            repair: None,
        })
    }
}

/// taskpulse's rejected transitions of the task, newest first (an overwrite it refused).
async fn rejected(ctx: &Context, id: &str) -> Result<Vec<Value>> {
    Ok(ctx
        .store
        .task_history(id, 50)
        .await?
        .iter()
        .filter(|e| e.outcome == Outcome::Rejected)
        .take(LINES_KEPT)
        .map(|e| {
            json!({
                "at": e.at,
                "from": e.from.map(Status::as_str),
                "to": e.to.as_str(),
                "reason": e.reason.as_deref(),
                "count": e.count,
            })
        })
        .collect())
}

/// Whether `c` may be the shape: taskpulse followed its try to success (an overwrite, once
/// the try is known not archived), or Airflow's own `log` says so (a stale executor success,
/// whatever taskpulse holds and whatever came after: a retry that archived the try, too).
fn is_candidate(c: &Candidate, held: Option<&TaskRecord>) -> bool {
    match c.shape {
        Shape::StaleExecutorSuccess => true,
        // taskpulse's attempt of a finished try is `try_number - 1`
        Shape::Overwritten => held.is_some_and(|t| {
            t.status == Status::Completed && t.retry_count == Some(c.try_number - 1)
        }),
    }
}

impl Rule for SuccessOverwritten {
    fn name(&self) -> &'static str {
        SUCCESS_OVERWRITTEN
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            // Airflow's own word first: a task instance in both is reported as a stale success
            let mut candidates = self.stale_successes().await?;
            candidates.extend(self.failed().await?);
            let ids: Vec<String> = candidates.iter().map(|c| c.key.task_id()).collect();
            let mut unique: Vec<&str> = ids.iter().map(String::as_str).collect();
            unique.sort_unstable();
            unique.dedup();
            let held: HashMap<Arc<str>, TaskRecord> = ctx
                .store
                .get_tasks(&unique)
                .await?
                .into_iter()
                .map(|t| (t.task_id.clone(), t))
                .collect();
            let mut out: Vec<Violation> = Vec::new();
            for (c, id) in candidates.iter().zip(&ids) {
                let record = held.get(id.as_str());
                if out.iter().any(|v| v.task_id == *id) || !is_candidate(c, record) {
                    continue;
                }
                let archived = self.archived(&c.key, c.the_try).await?;
                if archived && c.shape == Shape::Overwritten {
                    // a retry or a clear ended that try: not the same try any more
                    continue;
                }
                out.push(self.violation(ctx, c, record, archived).await?);
            }
            Ok(out)
        }
        .boxed()
    }
}
