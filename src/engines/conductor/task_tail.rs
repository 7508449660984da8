//! Conductor's `task` table followed (`--conductor-db`): every task transition the engine
//! stores, including the ones no webhook reports (a WAIT completed by the async system task
//! executor, a timeout raised by the decider, tasks cancelled with their workflow; see
//! `docs/engines/conductor-redis.md` §6), fed into the pipeline with `source="conductor_db"`.
//!
//! How it works (`docs/engines/conductor-redis.md` §7 for the table):
//! - **Read-only**, through the same kind of sessions as the WAIT reader
//!   (`default_transaction_read_only = on`, a statement timeout).
//! - **What changed.** `modified_on` is set on every write of a task, but it has no index and is
//!   the writing transaction's *start* time, so a transaction that commits late carries an
//!   earlier value than rows already read. Each poll therefore lists the ids and `modified_on`
//!   of the rows modified since the newest one seen minus [`OVERLAP`], and fetches `json_data`
//!   (by primary key) only for rows not already read at that same `modified_on`. Listing is one
//!   sequential scan of `task` per poll: the cost the missing index forces, and the only one
//!   (documented in the README with its measured figure).
//! - **Once per transition.** A row re-read (the overlap, or a write that changed nothing
//!   taskpulse looks at) is submitted only when what taskpulse takes from it changed: status,
//!   last change (the larger of `updateTime` and `endTime`: Conductor does not move
//!   `updateTime` on the terminal write), worker, retry count, progress. The pipeline's
//!   lifecycle handles the rest (an update older than the last one is stale).
//! - **Start.** The first pass loads the tasks Conductor holds as SCHEDULED or IN_PROGRESS
//!   (their current state, not their history) and the current state of every task taskpulse
//!   holds as in flight, so a transition that happened while taskpulse was down is seen once;
//!   finished tasks taskpulse never knew are not replayed. Polling then starts [`OVERLAP`]
//!   before the database's clock.
//! - **Bounded.** Lists are at most [`LIST_LIMIT`] rows per query (the rest on the next
//!   query), fetches [`FETCH_BATCH`] ids per query, the first pass [`SCAN_PAGE`] rows per
//!   query (a range of the primary key); memory holds one entry per row modified
//!   within the overlap and one per task in flight.
//! - **Failures** never end the reader: the database being down or a query failing is retried
//!   with backoff from where it stopped; an overloaded pipeline (503) is retried with the same
//!   updates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use super::metrics::ConductorMetrics;
use super::wait_queue::connect_read_only;
use crate::engines::store_source::{self, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::{RawUpdate, Reopen, TaskUpdate};
use crate::model::{ReopenKind, Status};
use crate::pipeline::Pipeline;

/// The `source` of updates read from Conductor's database.
pub const SOURCE: &str = "conductor_db";
/// How far before the newest `modified_on` seen each poll looks again: longer than any of
/// Conductor's write transactions takes to commit.
pub const OVERLAP: Duration = Duration::from_secs(10);
/// Rows listed per query.
pub const LIST_LIMIT: i64 = 50_000;
/// Rows fetched (`json_data`) per query.
pub const FETCH_BATCH: usize = 2_000;

/// Rows modified after a point, oldest first, with the database's clock.
const LIST_CHANGED: &str = "\
    SELECT task_id::text AS task_id, \
           (EXTRACT(EPOCH FROM (modified_on AT TIME ZONE 'UTC')) * 1000)::int8 AS modified_ms \
    FROM task \
    WHERE modified_on > (to_timestamp($1::float8 / 1000) AT TIME ZONE 'UTC') \
    ORDER BY modified_on, task_id LIMIT $2";
const FETCH: &str = "\
    SELECT task_id::text AS task_id, json_data, \
           (EXTRACT(EPOCH FROM (modified_on AT TIME ZONE 'UTC')) * 1000)::int8 AS modified_ms, \
           (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8 AS now_ms \
    FROM task WHERE task_id = ANY($1)";
/// The end of the next range of [`SCAN_PAGE`] ids after `$1` (none: the rest is shorter), read
/// from the primary key's index alone.
const PAGE_END: &str = "\
    SELECT task_id::text FROM task WHERE task_id > $1 ORDER BY task_id OFFSET $2 LIMIT 1";
/// The in-flight candidates in one range of ids. The text match is a cheap filter (whatever
/// the JSON's spacing); the parsed status decides.
const IN_FLIGHT_RANGE: &str = "\
    SELECT task_id::text AS task_id, json_data, \
           (EXTRACT(EPOCH FROM (modified_on AT TIME ZONE 'UTC')) * 1000)::int8 AS modified_ms \
    FROM task \
    WHERE task_id > $1 AND ($2::text IS NULL OR task_id <= $2) \
      AND json_data ~ '\"status\"\\s*:\\s*\"(IN_PROGRESS|SCHEDULED)\"'";
/// Rows the first pass looks at per query: each query's time stays bounded on any table size.
pub const SCAN_PAGE: i64 = 20_000;
const DB_NOW: &str = "SELECT (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8";

/// A task as Conductor stores it (`TaskModel` JSON): what [`RawUpdate`] reads, `endTime` and
/// `scheduledTime`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredTask {
    #[serde(flatten)]
    update: RawUpdate,
    end_time: Option<i64>,
    scheduled_time: Option<i64>,
}

/// Conductor's own sign, in a task's row, that it put the task back to work after it finished
/// (`docs/engines/conductor.md`, "Reopened tasks"). Every in-place reset loads the finished
/// task and writes it back non-terminal: a rerun sets `scheduledTime` (or, for the siblings it
/// resets, `startTime`) to now, and the resets that only flip the status (the first write of a
/// rerun, a JOIN reset by a retry, the parent task of a retried or rerun sub-workflow) keep the
/// `endTime` of the run that ended, which only a terminal write sets. A late write of the same
/// run (conductor-oss#176) was made from a copy read before the end: no `endTime`, and
/// `scheduledTime`/`startTime` from before the end. So the evidence is the write's own time
/// when a non-terminal row keeps an `endTime`, else the later of `scheduledTime` and
/// `startTime`; the lifecycle takes it only when it comes after the end taskpulse holds.
fn reopen_evidence(
    status: Status,
    update: i64,
    scheduled: i64,
    start: i64,
    end: i64,
) -> Option<Reopen> {
    let began = scheduled.max(start);
    let at = if !status.is_terminal() && end > 0 {
        update.max(began)
    } else {
        began
    };
    (at > 0).then_some(Reopen {
        kind: ReopenKind::Rerun,
        at,
    })
}

/// What taskpulse takes from a row; a re-read row is submitted only when this changed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Seen {
    status: Status,
    changed: Option<i64>,
    worker: Option<String>,
    retry: Option<i32>,
    progress: Option<f32>,
}

impl Seen {
    pub(crate) fn of(u: &TaskUpdate) -> Seen {
        Seen {
            status: u.status,
            changed: u.update_time,
            worker: u.worker_id.clone(),
            retry: u.retry_count,
            progress: u.progress,
        }
    }
}

/// One row of `task` as an update: Conductor's zeros are "unset", and the last change is the
/// larger of `updateTime` and `endTime`. `None` when the row is not a task taskpulse can take
/// (logged once per row version at debug level: it is the engine's data, not an input error).
pub fn update_from_row(task_id: &str, json_data: &str) -> Option<TaskUpdate> {
    let stored: StoredTask = match serde_json::from_str(json_data) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(task_id, error = %e, "conductor task table: unreadable json_data");
            return None;
        }
    };
    let mut raw = stored.update;
    let positive = |v: Option<i64>| v.filter(|t| *t > 0);
    let engine_times = (
        positive(raw.update_time).unwrap_or(0),
        positive(stored.scheduled_time).unwrap_or(0),
        positive(raw.start_time).unwrap_or(0),
        positive(stored.end_time).unwrap_or(0),
    );
    raw.update_time = match (positive(raw.update_time), positive(stored.end_time)) {
        (Some(u), Some(e)) => Some(u.max(e)),
        (u, e) => u.or(e),
    };
    raw.start_time = positive(raw.start_time);
    raw.wait_timeout = positive(raw.wait_timeout);
    raw.wait_until = positive(raw.wait_until);
    raw.response_timeout_seconds = positive(raw.response_timeout_seconds);
    raw.task_id.get_or_insert_with(|| task_id.to_string());
    match raw.validate_from_engine() {
        Ok(mut u) => {
            let (update, scheduled, start, end) = engine_times;
            u.reopen = reopen_evidence(u.status, update, scheduled, start, end);
            Some(u)
        }
        Err(e) => {
            tracing::debug!(task_id, error = ?e, "conductor task table: not a task update");
            None
        }
    }
}

/// The follower's state between polls.
pub struct TaskTail {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    /// `modified_on` (epoch ms) of each row read in the overlap window.
    read_at: HashMap<String, i64>,
    /// What was last submitted per task still in flight, or modified within the overlap.
    seen: HashMap<String, (Seen, i64)>,
    /// The newest `modified_on` read.
    high_water: i64,
    /// Updates the pipeline refused (overloaded), submitted again first.
    unsent: Vec<TaskUpdate>,
    metrics: ConductorMetrics,
    health: Health,
}

impl TaskTail {
    /// Connects read-only and runs the first pass. Fails when the database can't be reached
    /// or has no `task` table: a wrong `--conductor-db` stops start-up.
    pub async fn start(
        url: &str,
        pipeline: Arc<Pipeline>,
        metrics: ConductorMetrics,
    ) -> Result<TaskTail> {
        let pool = connect_read_only(url).await?;
        let mut tail = TaskTail {
            pool,
            pipeline,
            read_at: HashMap::new(),
            seen: HashMap::new(),
            high_water: 0,
            unsent: Vec::new(),
            metrics,
            health: Health::new("Conductor's task table (--conductor-db)"),
        };
        let now: i64 = sqlx::query_scalar(DB_NOW).fetch_one(&tail.pool).await?;
        let loaded = tail.load_in_flight().await?;
        tail.high_water = now - OVERLAP.as_millis() as i64;
        tracing::info!(
            in_flight = loaded,
            "following Conductor's task table (--conductor-db)"
        );
        Ok(tail)
    }

    /// The tasks in flight in Conductor's store, and the current state of those in flight in
    /// taskpulse's memory; submitted as they are now.
    async fn load_in_flight(&mut self) -> Result<usize> {
        let mut after = String::new();
        let mut updates = Vec::new();
        loop {
            let end: Option<String> = sqlx::query_scalar(PAGE_END)
                .bind(&after)
                .bind(SCAN_PAGE - 1)
                .fetch_optional(&self.pool)
                .await?;
            let rows = sqlx::query(IN_FLIGHT_RANGE)
                .bind(&after)
                .bind(&end)
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
                let (id, json, modified): (String, String, i64) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if let Some(u) = update_from_row(&id, &json).filter(|u| !u.status.is_terminal()) {
                    self.note(&u, modified);
                    updates.push(u);
                }
            }
            match end {
                Some(end) => after = end,
                None => break,
            }
        }
        let known: std::collections::HashSet<String> =
            updates.iter().map(|u| u.task_id.clone()).collect();
        let tracked: Vec<String> = self
            .pipeline
            .tracker()
            .select(|r| !r.status.is_terminal())
            .into_iter()
            .map(|r| r.task_id.to_string())
            .filter(|id| !known.contains(id))
            .collect();
        for ids in tracked.chunks(FETCH_BATCH) {
            for (id, json, modified) in self.fetch(ids).await? {
                if let Some(u) = update_from_row(&id, &json) {
                    self.note(&u, modified);
                    updates.push(u);
                }
            }
        }
        let n = updates.len();
        self.submit(updates).await;
        Ok(n)
    }

    /// `(task_id, json_data, modified_ms)` of these rows; observes each row's lag.
    async fn fetch(&self, ids: &[String]) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(FETCH).bind(ids).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| {
                let (modified, now): (i64, i64) = (r.try_get(2)?, r.try_get(3)?);
                self.metrics
                    .lag_seconds
                    .observe((now - modified).max(0) as f64 / 1000.0);
                Ok((r.try_get(0)?, r.try_get(1)?, modified))
            })
            .collect()
    }

    /// One poll: what changed since the last, submitted. Returns the number of updates.
    pub async fn poll(&mut self) -> Result<usize> {
        let mut submitted = 0;
        let pending = std::mem::take(&mut self.unsent);
        submitted += self.submit(pending).await;
        let mut from = self.high_water - OVERLAP.as_millis() as i64;
        loop {
            let rows = sqlx::query(LIST_CHANGED)
                .bind(from as f64)
                .bind(LIST_LIMIT)
                .fetch_all(&self.pool)
                .await?;
            let full = rows.len() as i64 == LIST_LIMIT;
            let mut wanted = Vec::new();
            let mut last = from;
            for row in &rows {
                let (id, modified): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                last = last.max(modified);
                if self.read_at.get(&id) != Some(&modified) {
                    wanted.push(id);
                }
            }
            for ids in wanted.chunks(FETCH_BATCH) {
                let mut updates = Vec::new();
                for (id, json, modified) in self.fetch(ids).await? {
                    self.read_at.insert(id.clone(), modified);
                    self.high_water = self.high_water.max(modified);
                    let Some(u) = update_from_row(&id, &json) else {
                        continue;
                    };
                    if self.note(&u, modified) {
                        updates.push(u);
                    }
                }
                submitted += self.submit(updates).await;
            }
            // A full page: the rest after its last row (rows sharing that instant are read
            // again, and skipped as read).
            if !full || last <= from {
                break;
            }
            from = last - 1;
        }
        self.forget();
        Ok(submitted)
    }

    /// Records what a row says; false when it says what was already submitted.
    fn note(&mut self, u: &TaskUpdate, modified: i64) -> bool {
        let now = Seen::of(u);
        if self.seen.get(&u.task_id).is_some_and(|(s, _)| *s == now) {
            return false;
        }
        self.read_at.insert(u.task_id.clone(), modified);
        self.seen.insert(u.task_id.clone(), (now, modified));
        true
    }

    /// Rows older than the overlap are not read again; finished tasks among them are over.
    fn forget(&mut self) {
        let cut = self.high_water - 2 * OVERLAP.as_millis() as i64;
        self.read_at.retain(|_, m| *m >= cut);
        self.seen
            .retain(|_, (s, m)| *m >= cut || !s.status.is_terminal());
    }

    async fn submit(&mut self, updates: Vec<TaskUpdate>) -> usize {
        store_source::submit(&self.pipeline, SOURCE, updates, &mut self.unsent).await
    }

    /// Polls every `every` until `stop` (see [`store_source::run`]).
    pub fn run(self, every: Duration, stop: CancellationToken) -> BoxFuture<'static, ()> {
        store_source::run(self, every, stop)
    }

    /// Its readiness, for `/readyz`.
    pub fn health(&self) -> Health {
        self.health.clone()
    }
}

impl Poller for TaskTail {
    const WHAT: &'static str = "Conductor's task table";

    fn poll_once(&mut self) -> BoxFuture<'_, Result<()>> {
        async move { self.poll().await.map(|_| ()) }.boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn observe(&mut self, took: Duration, failed: Option<(&Error, u32)>) {
        self.metrics.poll_seconds.observe(took.as_secs_f64());
        match failed {
            None => {
                self.metrics.polls_ok.inc();
                self.health.set(None);
            }
            Some((e, n)) => {
                self.metrics.polls_failed.inc();
                self.health.set(Some(format!(
                    "Conductor's task table (--conductor-db): {n} failed read(s) in a row: {e}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_becomes_an_update_with_conductors_zeros_unset_and_the_end_time() {
        let json = r#"{"taskType":"encode","taskDefName":"encode","status":"COMPLETED",
            "workflowInstanceId":"wf-1","workflowType":"media","taskId":"t-1","retryCount":1,
            "seq":2,"iteration":0,"startTime":1000,"endTime":5000,"updateTime":4000,
            "waitTimeout":0,"responseTimeoutSeconds":600,"workerId":"w-1",
            "outputData":{"progress":100},"workflowTask":{"name":"encode","type":"SIMPLE"}}"#;
        let u = update_from_row("t-1", json).expect("an update");
        assert_eq!(u.status, Status::Completed);
        assert_eq!(u.update_time, Some(5000), "endTime moves past updateTime");
        assert_eq!(u.start_time, Some(1000));
        assert_eq!(u.wait_until, None, "waitTimeout 0 is unset");
        assert_eq!(u.workflow_id, "wf-1");
        assert_eq!(u.worker_id.as_deref(), Some("w-1"));
        assert_eq!(u.retry_count, Some(1));
        assert_eq!(u.progress, Some(100.0));
        assert_eq!(u.response_timeout_seconds, Some(600));
        let scheduled = r#"{"taskType":"WAIT","status":"SCHEDULED","workflowInstanceId":"wf",
            "taskId":"w","startTime":0,"endTime":0,"updateTime":0,"waitTimeout":7000}"#;
        let u = update_from_row("w", scheduled).unwrap();
        assert_eq!(
            (u.update_time, u.start_time, u.wait_until),
            (None, None, Some(7000))
        );
        assert!(update_from_row("x", "{not json").is_none());
        assert!(update_from_row("x", r#"{"status":"RUNNING","workflowInstanceId":"w"}"#).is_none());
    }

    /// `(status, evidence)` of a row with these times, as `update_from_row` reads it.
    fn evidence(status: &str, t: [i64; 4]) -> (Status, Option<i64>) {
        let [scheduled, start, end, update] = t;
        let json = serde_json::json!({"taskType": "encode", "status": status, "taskId": "t",
            "workflowInstanceId": "wf", "scheduledTime": scheduled, "startTime": start,
            "endTime": end, "updateTime": update});
        let u = update_from_row("t", &json.to_string()).unwrap();
        (u.status, u.reopen.map(|r| r.at))
    }

    /// The rows `WorkflowExecutorOps` writes (b54f0d4e), for a task that FAILED at 5,000
    /// (scheduled 1,000, started 2,000), against the conductor-oss#176 shape.
    #[test]
    fn reopen_evidence_follows_conductors_own_writes() {
        // the terminal write: what a reopen must come after
        assert_eq!(
            evidence("FAILED", [1_000, 2_000, 5_000, 3_000]),
            (Status::Failed, Some(2_000))
        );
        // rerunWF's first write: only the status flipped, endTime kept, updateTime now
        assert_eq!(
            evidence("SCHEDULED", [1_000, 2_000, 5_000, 9_000]).1,
            Some(9_000)
        );
        // rerunWF's reset: scheduledTime now, startTime and endTime 0
        assert_eq!(evidence("SCHEDULED", [9_001, 0, 0, 9_001]).1, Some(9_001));
        // finalizeRerun's siblings: startTime now, endTime 0, scheduledTime kept
        assert_eq!(
            evidence("SCHEDULED", [1_000, 9_002, 0, 9_002]).1,
            Some(9_002)
        );
        // updateAndPushParents / retry of a JOIN: IN_PROGRESS, everything else kept
        assert_eq!(
            evidence("IN_PROGRESS", [1_000, 2_000, 5_000, 9_003]).1,
            Some(9_003)
        );
        // conductor-oss#176: a copy read before the end, written late: the run's own times
        assert_eq!(
            evidence("IN_PROGRESS", [1_000, 2_000, 0, 6_000]),
            (Status::InProgress, Some(2_000))
        );
        // rerun and finished again between two reads: scheduled after the end
        assert_eq!(
            evidence("COMPLETED", [9_001, 9_500, 12_000, 9_500]).1,
            Some(9_500)
        );
    }
}
