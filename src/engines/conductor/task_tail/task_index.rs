//! Following Conductor's own search index of tasks (`docs/engines/conductor.md`, "What a poll
//! costs"): with `conductor.indexing.type=postgres` every `ExecutionDAOFacade.updateTask`
//! upserts the task into `task_index` (`PostgresIndexDAO.indexTask`) after the task's own
//! transaction, with `update_time` (a `timestamptz`, indexed by `task_index_update_time_idx`)
//! set to the task's `updateTime`. Listing `task_index` by `update_time` finds what the
//! in-flight tables cannot show (a workflow started and ended between two polls, a task put
//! back to work by a rerun, which `task_in_progress` never holds again) at the cost of the
//! rows changed in the last [`OVERLAP`](super::OVERLAP), through the index: the sweep over
//! `task` is then not needed.
//!
//! The index is only kept where Conductor is configured so (indexing enabled, synchronous,
//! on PostgreSQL), and a table left from another configuration looks the same. So it is
//! *checked* against what the reader sees in `task`: every status change (other than a
//! creation, which `createTasks` does not index) must show in `task_index` within
//! [`CHECK_AFTER`]. Until one has, the sweep keeps running; once one has not, the index is
//! given up for the process's life (logged, `taskpulse_conductor_db_task_index_used` 0) and
//! the sweep catches up from where it last ran: a stale index delays, never loses.

use std::collections::HashMap;

use super::{fetch::Listed, TaskTail, LIST_LIMIT, OVERLAP};
use crate::error::Result;
use crate::model::Status;

/// How long after the task's write its index row must be there (`indexTask` runs right
/// after `executionDAO.updateTask`, in its own transaction).
pub const CHECK_AFTER_MS: i64 = 2_000;
/// Status changes waiting to be checked, at most (later ones are not checked while full).
const MAX_CHECKS: usize = 64;
const OVERLAP_MS: i64 = OVERLAP.as_millis() as i64;

/// Whether `task_index` is there with `update_time`, and readable.
pub(super) const HAS_INDEX: &str = "\
    SELECT COALESCE(bool_and(r IS NOT NULL AND has_table_privilege(r, 'SELECT') \
        AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = r AND attname = 'update_time' \
                    AND NOT attisdropped)), false) \
    FROM unnest(ARRAY[to_regclass('task_index')]) AS r";
/// Index rows updated at or after `$1` (epoch ms) past the keyset `($1, $2)`, at most `$3`:
/// a range scan of `task_index_update_time_idx`.
const LIST: &str = "\
    SELECT task_id::text, (EXTRACT(EPOCH FROM update_time) * 1000)::int8 AS t FROM task_index \
    WHERE update_time >= to_timestamp($1::float8 / 1000) \
      AND (update_time > to_timestamp($1::float8 / 1000) OR task_id > $2) \
    ORDER BY update_time, task_id LIMIT $3";
/// The index's status of these tasks (`$1`), by primary key.
const STATUS_OF: &str =
    "SELECT task_id::text, status::text FROM task_index WHERE task_id = ANY($1)";
/// The tasks the index holds as not finished (`task_index_status_idx`).
const NOT_FINISHED: &str =
    "SELECT task_id::text FROM task_index WHERE status IN ('SCHEDULED', 'IN_PROGRESS')";
/// The database's clock, epoch ms.
const NOW_MS: &str = "SELECT (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8";

/// Where the reader stands with `task_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Use {
    /// Listed every poll, the sweep still running until a change shows it is kept.
    Unverified,
    /// Kept by Conductor: listed every poll, no sweep, no `workflow_to_task`.
    Live,
    /// Not kept (or not there): the in-flight tables and the sweep.
    Unused,
}

/// A status change seen in `task`, to be found in `task_index`.
struct Check {
    task_id: String,
    status: Status,
    due_ms: i64,
}

/// What the index reader keeps between polls.
pub(super) struct TaskIndex {
    pub(super) state: Use,
    /// The newest `update_time` listed (epoch ms, the Conductor JVM's clock).
    high_ms: i64,
    /// `update_time` of each row listed within the overlap, so it is looked at once.
    listed: HashMap<String, i64>,
    checks: Vec<Check>,
    /// The database's clock at the start of the poll, epoch ms.
    now_ms: i64,
}

impl TaskIndex {
    pub(super) fn new(state: Use) -> TaskIndex {
        TaskIndex {
            state,
            high_ms: i64::MAX,
            listed: HashMap::new(),
            checks: Vec::new(),
            now_ms: 0,
        }
    }

    /// Notes a status change read from `task` (a creation's SCHEDULED is not indexed).
    pub(super) fn changed(&mut self, task_id: &str, status: Status, first: bool) {
        if self.state == Use::Unused || self.checks.len() >= MAX_CHECKS {
            return;
        }
        if first && status == Status::Scheduled {
            return;
        }
        self.checks.push(Check {
            task_id: task_id.to_string(),
            status,
            due_ms: self.now_ms + CHECK_AFTER_MS,
        });
    }
}

/// The ids `task_index` holds as SCHEDULED or IN_PROGRESS.
pub(super) async fn not_finished(pool: &sqlx::PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(NOT_FINISHED).fetch_all(pool).await?)
}

impl TaskTail {
    /// One poll of `task_index` (when it is used): the rows whose `update_time` moved, read
    /// from `task` where their `modified_on` did too; then the due checks. Returns the
    /// number of updates.
    pub(super) async fn poll_index(&mut self) -> Result<usize> {
        let Some(index) = self.index.as_mut() else {
            return Ok(0);
        };
        if index.state == Use::Unused {
            return Ok(0);
        }
        let now: i64 = sqlx::query_scalar(NOW_MS).fetch_one(&self.pool).await?;
        index.now_ms = now;
        if index.high_ms == i64::MAX {
            index.high_ms = now;
        }
        let (fresh, newest) = self.list_index().await?;
        let ids: Vec<String> = fresh.iter().map(|(id, _)| id.clone()).collect();
        let listed = self.sized(&ids).await?;
        self.rows += listed.len() as i64;
        let wanted: Vec<Listed> = listed
            .into_iter()
            .filter(|(id, _, wall)| self.read_at.get(id) != Some(wall))
            .collect();
        self.rows += wanted.len() as i64;
        let n = self.read_rows(&wanted, |_| true).await?;
        // only once read: a poll that fails before lists the same rows again
        if let Some(index) = self.index.as_mut() {
            index.listed.extend(fresh);
            index.high_ms = index.high_ms.max(newest);
            let cut = index.high_ms.min(index.now_ms) - 2 * OVERLAP_MS;
            index.listed.retain(|_, t| *t >= cut);
        }
        self.run_checks().await?;
        Ok(n)
    }

    /// The index rows changed since the last poll (the overlap listed again, rows already
    /// looked at left out), and the newest `update_time` listed.
    async fn list_index(&mut self) -> Result<(Vec<(String, i64)>, i64)> {
        let Some(index) = self.index.as_ref() else {
            return Ok((Vec::new(), 0));
        };
        let mut cursor = (index.high_ms.min(index.now_ms) - OVERLAP_MS, String::new());
        let mut newest = index.high_ms;
        let mut fresh = Vec::new();
        loop {
            let rows: Vec<(String, i64)> = sqlx::query_as(LIST)
                .bind(cursor.0)
                .bind(&cursor.1)
                .bind(LIST_LIMIT)
                .fetch_all(&self.pool)
                .await?;
            let full = rows.len() as i64 == LIST_LIMIT;
            self.rows += rows.len() as i64;
            let Some(index) = self.index.as_ref() else {
                break;
            };
            for (id, t) in rows {
                if index.listed.get(&id) != Some(&t) {
                    fresh.push((id.clone(), t));
                }
                newest = newest.max(t);
                cursor = (t, id);
            }
            if !full || self.stop.is_cancelled() {
                break;
            }
        }
        Ok((fresh, newest))
    }

    /// Checks the due status changes against the index: all there, the index is kept
    /// ([`Use::Live`]); one missing, it is not ([`Use::Unused`], for good).
    async fn run_checks(&mut self) -> Result<()> {
        let Some(index) = self.index.as_mut() else {
            return Ok(());
        };
        let now = index.now_ms;
        let (due, later): (Vec<Check>, Vec<Check>) = std::mem::take(&mut index.checks)
            .into_iter()
            .partition(|c| c.due_ms <= now);
        index.checks = later;
        if due.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = due.iter().map(|c| c.task_id.clone()).collect();
        let rows: HashMap<String, String> = sqlx::query_as(STATUS_OF)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        self.rows += rows.len() as i64;
        let missing = due.iter().find(|c| {
            let held = self.seen.get(&c.task_id).map(|(s, _)| s.status);
            match rows.get(&c.task_id) {
                Some(s) => s != c.status.as_str() && held.is_none_or(|h| s != h.as_str()),
                None => true,
            }
        });
        let Some(index) = self.index.as_mut() else {
            return Ok(());
        };
        match missing {
            None if index.state == Use::Unverified => {
                index.state = Use::Live;
                tracing::info!(
                    checked = due.len(),
                    "conductor task table: task_index is kept by Conductor; following it instead of sweeping task"
                );
            }
            None => {}
            Some(c) => {
                tracing::warn!(
                    task_id = %c.task_id,
                    status = c.status.as_str(),
                    index_status = rows.get(&c.task_id).map(String::as_str).unwrap_or("no row"),
                    "conductor task table: task_index does not follow task (indexing off, asynchronous or elsewhere); sweeping task by modified_on instead"
                );
                index.state = Use::Unused;
                index.listed.clear();
                index.checks.clear();
            }
        }
        self.metrics
            .task_index_used
            .set(i64::from(index.state != Use::Unused));
        Ok(())
    }
}
