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
//!   earlier value than rows already read. Each poll therefore lists the ids, sizes and
//!   `modified_on` of the rows modified since the newest one seen (or the database's clock read
//!   in the zone, if earlier: a fall-back hour) minus [`OVERLAP`], paging on the
//!   `(modified_on, task_id)` keyset, and fetches `json_data` (by primary key) only for rows not
//!   already read at that same `modified_on`. Listing is one sequential scan of `task` per page:
//!   the cost the missing index forces (documented in the README with its measured figure).
//! - **In flight only** (`in_flight.rs`): when Conductor's bookkeeping tables are there, a poll
//!   reads the ids in flight (`task_in_progress`, tasks of `workflow_pending` workflows) and
//!   `task` by primary key for them, and the listing above runs as a sweep every
//!   [`SWEEP_EVERY`] polls, so an idle poll costs the work in flight, not the history.
//!   Where Conductor keeps `task_index` (`task_index.rs`), it is listed by its indexed
//!   `update_time` each poll instead, and once shown to be kept, no poll scans `task`.
//! - **Time zone.** `modified_on` is the writer's wall time in the Conductor JVM's zone; it is
//!   paged on as a wall time (exact microseconds, `sql.rs`) and turned into an instant only
//!   `AT TIME ZONE` `--conductor-db-time-zone`, which start-up checks against the rows
//!   (`super::db`).
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
//! - **Bounded.** Lists are at most [`LIST_LIMIT`] rows per page, fetches [`FETCH_BATCH`] ids
//!   and [`FETCH_BYTES`] per query, a document past [`MAX_DOCUMENT_BYTES`] is never loaded
//!   (`fetch.rs`), the first pass looks at [`SCAN_PAGE`] rows per query (a range of the
//!   primary key); memory holds one entry per row modified within the overlap and one per task
//!   in flight.
//! - **Failures** never end the reader: the database being down or a query failing is retried
//!   with backoff from where it stopped; an overloaded pipeline (503) is retried with the same
//!   updates.

mod fetch;
mod in_flight;
mod sql;
mod task_index;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::db::{check_time_zone, DbOptions, SkipMetrics};
use super::metrics::ConductorMetrics;
use super::wait_queue::connect_read_only;
use crate::engines::store_source::{self, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::{RawUpdate, Reopen, TaskUpdate};
use crate::model::{ReopenKind, Status};
use crate::pipeline::Pipeline;

pub use fetch::{plan_batches, FETCH_BYTES, MAX_DOCUMENT_BYTES};
pub use in_flight::SWEEP_EVERY;

/// The `source` of updates read from Conductor's database.
pub const SOURCE: &str = "conductor_db";
/// How far before the newest `modified_on` seen each poll looks again: longer than any of
/// Conductor's write transactions takes to commit.
pub const OVERLAP: Duration = Duration::from_secs(10);
/// Rows listed per query.
pub const LIST_LIMIT: i64 = 50_000;
/// Rows fetched (`json_data`) per query, at most (and at most [`FETCH_BYTES`]).
pub const FETCH_BATCH: usize = 2_000;
/// Rows the first pass looks at per query: each query's time stays bounded on any table size.
pub const SCAN_PAGE: i64 = 20_000;
/// [`OVERLAP`] in microseconds (the unit of wall times here).
const OVERLAP_US: i64 = OVERLAP.as_micros() as i64;

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

/// The follower's state between polls. Times named `wall` are `modified_on` wall µs
/// (`sql.rs`).
pub struct TaskTail {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    /// `--conductor-db-time-zone`: bound into every statement that reads an instant.
    zone: String,
    /// `modified_on` of each row read in the overlap window.
    read_at: HashMap<String, i64>,
    /// What was last submitted per task still in flight, or modified within the overlap.
    seen: HashMap<String, (Seen, i64)>,
    /// The newest `modified_on` read.
    high_water: i64,
    /// The database's clock as a wall time in the zone, at the start of the last poll.
    clock: i64,
    /// Updates the pipeline refused (overloaded), submitted again first.
    unsent: Vec<TaskUpdate>,
    metrics: ConductorMetrics,
    skips: SkipMetrics,
    /// Tasks whose oversized document was already logged (cleared when large).
    logged_large: HashSet<String>,
    /// Ends a long poll between pages (set by [`TaskTail::run`]).
    stop: CancellationToken,
    health: Health,
    /// Reading what is in flight (Conductor's bookkeeping tables are there), or `None`: the
    /// `modified_on` listing every poll.
    flight: Option<in_flight::InFlight>,
    /// Following `task_index` (with the in-flight tables only), or `None`.
    index: Option<task_index::TaskIndex>,
    /// Rows read from Conductor's tables by the poll under way
    /// (`taskpulse_conductor_db_poll_rows` once it ends).
    rows: i64,
}

impl TaskTail {
    /// Connects read-only, checks the time zone against the rows, and runs the first pass.
    /// Fails when the database can't be reached, has no `task` table in the schema, or its
    /// rows show another time zone: a wrong `--conductor-db*` setting stops start-up.
    pub async fn start(
        url: &str,
        options: &DbOptions,
        pipeline: Arc<Pipeline>,
        metrics: ConductorMetrics,
        skips: SkipMetrics,
    ) -> Result<TaskTail> {
        let pool = connect_read_only(&options.session_url(url)).await?;
        check_time_zone(&pool, &options.time_zone).await?;
        let mut tail = TaskTail {
            pool,
            pipeline,
            zone: options.time_zone.clone(),
            read_at: HashMap::new(),
            seen: HashMap::new(),
            high_water: 0,
            clock: 0,
            unsent: Vec::new(),
            metrics,
            skips,
            logged_large: HashSet::new(),
            stop: CancellationToken::new(),
            health: Health::new("Conductor's task table (--conductor-db)"),
            flight: None,
            index: None,
            rows: 0,
        };
        tail.flight = tail.choose_reader().await?;
        tail.index = tail.choose_index().await?;
        let now = tail.db_clock().await?;
        let loaded = tail.load_in_flight().await?;
        tail.clock = now;
        tail.high_water = now - OVERLAP_US;
        tracing::info!(
            in_flight = loaded,
            time_zone = %tail.zone,
            "following Conductor's task table (--conductor-db)"
        );
        Ok(tail)
    }

    /// Reads what is in flight when Conductor's bookkeeping tables are there; else lists
    /// `task` by `modified_on` every poll. Logged once, here.
    async fn choose_reader(&self) -> Result<Option<in_flight::InFlight>> {
        let present: bool = sqlx::query_scalar(in_flight::HAS_TABLES)
            .fetch_one(&self.pool)
            .await?;
        if present {
            tracing::info!(
                sweep_every_polls = SWEEP_EVERY,
                "conductor task table: reading tasks in flight (task_in_progress, workflow_pending, workflow_to_task); task listed by modified_on every {SWEEP_EVERY} polls"
            );
            Ok(Some(in_flight::InFlight::default()))
        } else {
            tracing::warn!(
                "conductor task table: task_in_progress, workflow_pending or workflow_to_task missing or not readable; listing task by modified_on every poll (one sequential scan of task per poll)"
            );
            Ok(None)
        }
    }

    /// Follows `task_index` when the in-flight tables are read and it is there (checked
    /// against `task` before the sweep stops: `task_index.rs`).
    async fn choose_index(&self) -> Result<Option<task_index::TaskIndex>> {
        if self.flight.is_none() {
            return Ok(None);
        }
        let present: bool = sqlx::query_scalar(task_index::HAS_INDEX)
            .fetch_one(&self.pool)
            .await?;
        let state = if present {
            tracing::info!("conductor task table: task_index is there; listing it by update_time every poll (the sweep stops once it shows it follows task)");
            task_index::Use::Unverified
        } else {
            tracing::info!("conductor task table: no task_index (conductor.indexing.type is not postgres); sweeping task by modified_on every {SWEEP_EVERY} polls");
            task_index::Use::Unused
        };
        self.metrics
            .task_index_used
            .set(i64::from(state != task_index::Use::Unused));
        Ok(Some(task_index::TaskIndex::new(state)))
    }

    /// Whether `task_index` is followed and shown to be kept: no sweep, no `workflow_to_task`.
    fn index_live(&self) -> bool {
        self.index
            .as_ref()
            .is_some_and(|i| i.state == task_index::Use::Live)
    }

    /// The database's clock as a wall time in the zone: where Conductor's writes are now.
    async fn db_clock(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(sql::NOW_WALL)
            .bind(&self.zone)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The tasks in flight in Conductor's store, and the current state of those in flight in
    /// taskpulse's memory; submitted as they are now.
    async fn load_in_flight(&mut self) -> Result<usize> {
        let mut n = match self.ids_at_start().await? {
            Some(ids) => {
                let listed = self.sized(&ids).await?;
                self.read_rows(&listed, |u| !u.status.is_terminal()).await?
            }
            None => self.scan_in_flight().await?,
        };
        let tracked: Vec<String> = self
            .pipeline
            .tracker()
            .select(|r| !r.status.is_terminal())
            .into_iter()
            .map(|r| r.task_id.to_string())
            .filter(|id| !self.seen.contains_key(id))
            .collect();
        let tracked = self.sized(&tracked).await?;
        n += self.read_rows(&tracked, |_| true).await?;
        Ok(n)
    }

    /// With the in-flight tables and `task_index`, the tasks not finished are where they say:
    /// `task_in_progress`, the tasks of running workflows, and the index's non-terminal rows
    /// (a late write that reopened a finished task, conductor-oss#176, is in none of the
    /// first two; `task_index_status_idx` finds it). `None`: they are not all there, and
    /// [`Self::scan_in_flight`] reads the whole table once.
    async fn ids_at_start(&mut self) -> Result<Option<Vec<String>>> {
        let indexed = self
            .index
            .as_ref()
            .is_some_and(|i| i.state != task_index::Use::Unused);
        if self.flight.is_none() || !indexed {
            return Ok(None);
        }
        let mut ids = self.ids_in_flight().await?;
        ids.extend(task_index::not_finished(&self.pool).await?);
        Ok(Some(ids.into_iter().collect()))
    }

    /// The first pass without the in-flight tables and `task_index`: every row of `task`,
    /// a range of [`SCAN_PAGE`] ids per query, SCHEDULED and IN_PROGRESS taken.
    async fn scan_in_flight(&mut self) -> Result<usize> {
        let mut after = String::new();
        let mut n = 0;
        loop {
            let end: Option<String> = sqlx::query_scalar(sql::PAGE_END)
                .bind(&after)
                .bind(SCAN_PAGE - 1)
                .fetch_optional(&self.pool)
                .await?;
            let listed: Vec<fetch::Listed> = sqlx::query_as(sql::IN_FLIGHT_RANGE)
                .bind(&after)
                .bind(&end)
                .fetch_all(&self.pool)
                .await?;
            n += self.read_rows(&listed, |u| !u.status.is_terminal()).await?;
            match end {
                Some(end) => after = end,
                None => break,
            }
        }
        Ok(n)
    }

    /// One poll: what changed since the last, submitted. Returns the number of updates.
    ///
    /// Pages on the `(modified_on, task_id)` keyset, so any number of rows sharing one
    /// `modified_on` (one transaction's) is read in pages that always advance. Starts
    /// [`OVERLAP`] before the newest row read, or before the database's clock if that is
    /// earlier: after a fall-back hour Conductor's wall times start over below the newest
    /// row read, and are still listed (`docs/engines/conductor-redis.md` §7, DST).
    pub async fn poll(&mut self) -> Result<usize> {
        self.rows = 0;
        let mut submitted = 0;
        let pending = std::mem::take(&mut self.unsent);
        submitted += self.submit(pending).await;
        self.clock = self.db_clock().await?;
        let live = self.index_live();
        let sweep = match self.flight.as_mut() {
            Some(f) => f.sweep_due() && !live,
            None => true,
        };
        if self.flight.is_some() {
            submitted += self.poll_in_flight().await?;
            submitted += self.poll_index().await?;
        }
        if sweep {
            submitted += self.list_changed().await?;
        }
        self.forget();
        self.metrics.poll_rows.set(self.rows);
        Ok(submitted)
    }

    /// The rows changed since the newest read (minus [`OVERLAP`]), by the keyset: one
    /// sequential scan of `task` per page. Returns the number of updates.
    async fn list_changed(&mut self) -> Result<usize> {
        let mut submitted = 0;
        let mut cursor = (self.high_water.min(self.clock) - OVERLAP_US, String::new());
        loop {
            let rows: Vec<fetch::Listed> = sqlx::query_as(sql::LIST_CHANGED)
                .bind(cursor.0)
                .bind(&cursor.1)
                .bind(LIST_LIMIT)
                .fetch_all(&self.pool)
                .await?;
            let full = rows.len() as i64 == LIST_LIMIT;
            self.rows += rows.len() as i64;
            let mut wanted = Vec::new();
            for (id, bytes, wall) in rows {
                if self.read_at.get(&id) != Some(&wall) {
                    wanted.push((id.clone(), bytes, wall));
                }
                cursor = (wall, id);
            }
            self.rows += wanted.len() as i64;
            submitted += self.read_rows(&wanted, |_| true).await?;
            // only once the page is read: a poll abandoned mid-page (the loop's deadline, a
            // stop) leaves the mark where the next poll finds the rest
            self.high_water = self.high_water.max(cursor.0);
            if !full || self.stop.is_cancelled() {
                break;
            }
        }
        Ok(submitted)
    }

    /// Records what a row says; false when it says what was already submitted.
    fn note(&mut self, u: &TaskUpdate, modified: i64) -> bool {
        let now = Seen::of(u);
        let held = self.seen.get(&u.task_id).map(|(s, _)| s);
        if held == Some(&now) {
            return false;
        }
        let before = held.map(|s| s.status);
        if before != Some(now.status) {
            if let Some(index) = self.index.as_mut() {
                index.changed(&u.task_id, now.status, before.is_none());
            }
        }
        self.read_at.insert(u.task_id.clone(), modified);
        self.seen.insert(u.task_id.clone(), (now, modified));
        true
    }

    /// Rows older than the overlap are not read again; finished tasks among them are over.
    /// While `task_index` is followed the `modified_on` mark stands still (no sweep): the
    /// database's clock then says what is old.
    fn forget(&mut self) {
        let mark = if self.index_live() {
            self.clock
        } else {
            self.high_water.min(self.clock)
        };
        let cut = mark - 2 * OVERLAP_US;
        self.read_at.retain(|_, m| *m >= cut);
        self.seen
            .retain(|_, (s, m)| *m >= cut || !s.status.is_terminal());
        if self.logged_large.len() > 10_000 {
            self.logged_large.clear();
        }
    }

    async fn submit(&mut self, updates: Vec<TaskUpdate>) -> usize {
        store_source::submit(&self.pipeline, SOURCE, updates, &mut self.unsent).await
    }

    /// Polls every `every` until `stop` (see [`store_source::run`]); a poll in progress ends
    /// at its next page once `stop` is cancelled.
    pub fn run(mut self, every: Duration, stop: CancellationToken) -> BoxFuture<'static, ()> {
        self.stop = stop.clone();
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
        self.metrics.polls.observe(took, failed);
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
