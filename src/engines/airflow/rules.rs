//! Checker rules that know Airflow's side (`docs/engines/airflow.md` §9), report-only: nothing
//! is written back to Airflow's database, and no repair is planned.
//!
//! `airflow_queued_too_long`: a task instance `queued` for longer than
//! `--airflow-queued-limit` was handed to an executor that never started it (a lost executor
//! event, a dead worker: apache/airflow#23432, #28943). Evidence from both sides: Airflow's row
//! (queued since, try, executor, the scheduler job that queued it) and what taskpulse holds of
//! the task.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use sqlx::{PgPool, Row};

use super::rows::Key;
use crate::checker::{Context, Rule, Violation};
use crate::error::Result;

pub const QUEUED_TOO_LONG: &str = "airflow_queued_too_long";
/// Task instances reported per pass, at most.
const MAX_REPORTED: i64 = 1_000;

pub struct QueuedTooLong {
    pub(super) pool: PgPool,
    pub(super) limit: Duration,
}

impl Rule for QueuedTooLong {
    fn name(&self) -> &'static str {
        QUEUED_TOO_LONG
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            // through `ti_state`: only the queued ones are read
            let rows = sqlx::query(
                "SELECT dag_id, run_id, task_id, map_index, try_number, \
                 (extract(epoch FROM queued_dttm) * 1000)::int8, executor, queued_by_job_id, \
                 (extract(epoch FROM now() - queued_dttm))::float8 \
                 FROM task_instance WHERE state = 'queued' \
                 AND queued_dttm < now() - make_interval(secs => $1) \
                 ORDER BY queued_dttm LIMIT $2",
            )
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
                let evidence = json!({
                    "airflow": {
                        "state": "queued",
                        "tryNumber": r.try_get::<i32, _>(4)?,
                        "queuedAt": r.try_get::<Option<i64>, _>(5)?,
                        "queuedForSeconds": r.try_get::<Option<f64>, _>(8)?.map(f64::round),
                        "executor": r.try_get::<Option<String>, _>(6)?,
                        "queuedByJobId": r.try_get::<Option<i32>, _>(7)?,
                    },
                    "taskpulse": held.map(|t| json!({
                        "status": t.status.as_str(),
                        "retryCount": t.retry_count,
                        "workerId": t.worker_id.as_deref(),
                    })),
                    "limitSeconds": self.limit.as_secs(),
                });
                out.push(Violation {
                    rule: QUEUED_TOO_LONG,
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
