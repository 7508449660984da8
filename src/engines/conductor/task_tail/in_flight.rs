//! Reading only what is in flight (`docs/engines/conductor-redis.md` §7.6): Conductor keeps
//! `task_in_progress` (a row per non-terminal task), `workflow_pending` (a row per running
//! workflow) and `workflow_to_task` (a row per task of a workflow, indexed on `workflow_id`),
//! each written in the same transaction as the task or workflow row. An idle poll reads those
//! ids, then `task`'s `modified_on` by primary key for them (no `json_data`), and fetches a
//! document only where `modified_on` moved or the id is new: its cost is the work in flight,
//! not the table's history. A workflow that starts and ends between two polls is in none of
//! these tables: `task_index` shows it where Conductor keeps one (`task_index.rs`; then
//! `workflow_to_task` is not read either); else the `modified_on` listing (a sequential scan
//! of `task`) finds it, run as a sweep every [`SWEEP_EVERY`] polls instead of every poll.

use std::collections::{HashMap, HashSet};

use super::{fetch::Listed, TaskTail, FETCH_BATCH};
use crate::error::Result;

/// Polls between two sweeps of `task` by `modified_on` (the first one is the 30th poll): how
/// late, at most, the tasks of a workflow that started and ended between two polls arrive
/// (30 × `--conductor-poll-interval`), for one sequential scan of `task` per sweep.
pub const SWEEP_EVERY: u32 = 30;

/// Whether Conductor's bookkeeping tables are there (in the session's `search_path`) and the
/// reader may read them: a table it may not read would fail every poll.
pub(super) const HAS_TABLES: &str = "\
    SELECT COALESCE(bool_and(r IS NOT NULL AND has_table_privilege(r, 'SELECT')), false) \
    FROM unnest(ARRAY[to_regclass('task_in_progress'), to_regclass('workflow_pending'), \
                      to_regclass('workflow_to_task')]) AS r";
/// Every non-terminal task (`PostgresExecutionDAO.addTaskInProgress`/`removeTaskInProgress`).
const IN_PROGRESS: &str = "SELECT task_id::text FROM task_in_progress";
/// Every running workflow (`addPendingWorkflow`/`removePendingWorkflow`).
const PENDING: &str = "SELECT workflow_id::text FROM workflow_pending";
/// The tasks of these workflows (`$1`): the short tasks `task_in_progress` never shows.
const OF_WORKFLOWS: &str = "SELECT task_id::text FROM workflow_to_task WHERE workflow_id = ANY($1)";

/// What the in-flight reader keeps between polls.
#[derive(Default)]
pub(super) struct InFlight {
    /// The ids read last poll, with the `modified_on` (wall µs) read for each.
    known: HashMap<String, i64>,
    /// Polls since start, for [`SWEEP_EVERY`].
    polls: u32,
}

impl InFlight {
    /// Counts a poll; true when this one is a sweep.
    pub(super) fn sweep_due(&mut self) -> bool {
        self.polls = self.polls.wrapping_add(1);
        self.polls % SWEEP_EVERY == 0
    }
}

impl TaskTail {
    /// The ids in flight now: in `task_in_progress`, last read non-terminal (a task a rerun
    /// put back to work is never in `task_in_progress` again), or, unless `task_index` is
    /// followed, tasks of a running workflow.
    pub(super) async fn ids_in_flight(&mut self) -> Result<HashSet<String>> {
        let mut ids: HashSet<String> = sqlx::query_scalar(IN_PROGRESS)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        self.rows += ids.len() as i64;
        ids.extend(
            self.seen
                .iter()
                .filter(|(_, (s, _))| !s.status.is_terminal())
                .map(|(id, _)| id.clone()),
        );
        if self.index_live() {
            return Ok(ids);
        }
        let running: Vec<String> = sqlx::query_scalar(PENDING).fetch_all(&self.pool).await?;
        self.rows += running.len() as i64;
        for chunk in running.chunks(FETCH_BATCH) {
            let tasks: Vec<String> = sqlx::query_scalar(OF_WORKFLOWS)
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
            self.rows += tasks.len() as i64;
            ids.extend(tasks);
        }
        Ok(ids)
    }

    /// One poll of what is in flight: ids that appeared, ids that disappeared (a terminal
    /// write), and ids whose `modified_on` moved are fetched; the rest cost one primary-key
    /// look-up each. Returns the number of updates. A failed poll forgets what it knew, so
    /// the next one fetches every document in flight once (nothing is submitted twice: the
    /// updates are compared with what was submitted).
    pub(super) async fn poll_in_flight(&mut self) -> Result<usize> {
        let Some(known) = self.flight.as_mut().map(|f| std::mem::take(&mut f.known)) else {
            return Ok(0);
        };
        let now = self.ids_in_flight().await?;
        let mut ids: Vec<String> = now.iter().cloned().collect();
        ids.extend(known.keys().filter(|id| !now.contains(*id)).cloned());
        let listed = self.sized(&ids).await?;
        self.rows += listed.len() as i64;
        self.forget_removed(&ids, &listed);
        let wanted: Vec<Listed> = listed
            .iter()
            .filter(|(id, _, wall)| {
                known.get(id) != Some(wall) && self.read_at.get(id) != Some(wall)
            })
            .cloned()
            .collect();
        self.rows += wanted.len() as i64;
        let n = self.read_rows(&wanted, |_| true).await?;
        if let Some(f) = self.flight.as_mut() {
            f.known = listed
                .into_iter()
                .filter(|(id, _, _)| now.contains(id))
                .map(|(id, _, wall)| (id, wall))
                .collect();
        }
        Ok(n)
    }

    /// Tasks no longer in `task` (removed, archived) are not looked for again.
    fn forget_removed(&mut self, asked: &[String], listed: &[Listed]) {
        if asked.len() == listed.len() {
            return;
        }
        let there: HashSet<&str> = listed.iter().map(|(id, _, _)| id.as_str()).collect();
        for id in asked.iter().filter(|id| !there.contains(id.as_str())) {
            self.seen.remove(id);
        }
    }
}
