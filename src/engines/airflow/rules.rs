//! Checker rules that know Airflow's side (`docs/engines/airflow.md` §9), report-only: nothing
//! is written back to Airflow's database, and no repair is planned.
//!
//! - `airflow_queued_too_long`: a task instance `queued` for longer than
//!   `--airflow-queued-limit` was handed to an executor that never started it (a lost executor
//!   event, a dead worker: apache/airflow#23432, #28943).
//! - `airflow_heartbeat_stopped`: a `running` task instance whose `last_heartbeat_at` is older
//!   than `--airflow-heartbeat-limit`: its worker went silent (Airflow's scheduler fails it after
//!   `task_instance_heartbeat_timeout`, unless the scheduler that queued it is gone too).
//!
//! Evidence from both sides: Airflow's row (the try, since when, executor, host and pid, the
//! scheduler job that queued it) and what taskpulse holds of the task.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use sqlx::{PgPool, Row};

use super::rows::Key;
use crate::checker::{Context, Rule, Violation};
use crate::error::Result;

pub const QUEUED_TOO_LONG: &str = "airflow_queued_too_long";
pub const HEARTBEAT_STOPPED: &str = "airflow_heartbeat_stopped";
/// Task instances reported per pass and rule, at most.
const MAX_REPORTED: i64 = 1_000;

/// A task instance in `state` whose `column` is older than `limit`.
pub struct Overdue {
    name: &'static str,
    state: &'static str,
    /// The time column that should have moved (`queued_dttm`, `last_heartbeat_at`).
    column: &'static str,
    /// Its name in the evidence.
    field: &'static str,
    pool: PgPool,
    limit: Duration,
}

impl Overdue {
    /// `airflow_queued_too_long`: queued, never started.
    pub(super) fn queued(pool: PgPool, limit: Duration) -> Overdue {
        Overdue {
            name: QUEUED_TOO_LONG,
            state: "queued",
            column: "queued_dttm",
            field: "queuedAt",
            pool,
            limit,
        }
    }

    /// `airflow_heartbeat_stopped`: running, its worker silent.
    pub(super) fn heartbeat(pool: PgPool, limit: Duration) -> Overdue {
        Overdue {
            name: HEARTBEAT_STOPPED,
            state: "running",
            column: "last_heartbeat_at",
            field: "lastHeartbeatAt",
            pool,
            limit,
        }
    }
}

impl Rule for Overdue {
    fn name(&self) -> &'static str {
        self.name
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            // through `ti_state`: only the task instances in that state are read
            let sql = format!(
                "SELECT dag_id, run_id, task_id, map_index, try_number, \
                 (extract(epoch FROM {c}) * 1000)::int8, executor, queued_by_job_id, \
                 (extract(epoch FROM now() - {c}))::float8, left(hostname, 256), pid \
                 FROM task_instance WHERE state = '{s}' \
                 AND {c} < now() - make_interval(secs => $1) ORDER BY {c} LIMIT $2",
                c = self.column,
                s = self.state
            );
            let rows = sqlx::query(&sql)
                .bind(self.limit.as_secs_f64())
                .bind(MAX_REPORTED)
                .fetch_all(&self.pool)
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let key = Key {
                    dag_id: r.try_get(0)?,
                    run_id: r.try_get(1)?,
                    task_id: r.try_get(2)?,
                    map_index: r.try_get(3)?,
                };
                let id = key.task_id();
                let held = ctx.store.get_task(&id).await?;
                let mut airflow = json!({
                    "state": self.state,
                    "tryNumber": r.try_get::<i32, _>(4)?,
                    "forSeconds": r.try_get::<Option<f64>, _>(8)?.map(f64::round),
                    "executor": r.try_get::<Option<String>, _>(6)?,
                    "queuedByJobId": r.try_get::<Option<i32>, _>(7)?,
                    "hostname": r.try_get::<Option<String>, _>(9)?,
                    "pid": r.try_get::<Option<i32>, _>(10)?,
                });
                airflow[self.field] = json!(r.try_get::<Option<i64>, _>(5)?);
                let evidence = json!({
                    "airflow": airflow,
                    "taskpulse": held.map(|t| json!({
                        "status": t.status.as_str(),
                        "retryCount": t.retry_count,
                        "workerId": t.worker_id.as_deref(),
                    })),
                    "limitSeconds": self.limit.as_secs(),
                });
                out.push(Violation {
                    rule: self.name,
                    task_id: id,
                    workflow_id: key.workflow_id(),
                    evidence,
                    repair: None,
                });
            }
            Ok(out)
        }
        .boxed()
    }
}
