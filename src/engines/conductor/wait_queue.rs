//! The WAIT queue read from Conductor's own PostgreSQL (`--conductor-db`), for the WAIT gauges
//! of contract 4.3 and the wake-up lag histogram.
//!
//! Since Conductor 3.14 a WAIT task is an async system task: a row of `queue_message` with
//! `queue_name = 'WAIT'` and `message_id` = the task id, delivered to the system task worker at
//! `deliver_on`. The task's own JSON (`task.json_data`) carries `workflowType` and the exact
//! wake-up time `waitTimeout` (epoch ms).
//!
//! How it works:
//! - **Read-only.** Every session runs `SET default_transaction_read_only = on` (and a statement
//!   timeout) before it is used, including the LISTEN session; nothing here writes. Sessions
//!   carry `application_name = taskpulse-wait-queue` unless the URL names one.
//! - **One read** = the WAIT rows of `queue_message` (id, popped, deliver_on) plus the database's
//!   statement time, then `task.json_data` only for ids not seen before (cached while the id
//!   stays in the queue). JSON is parsed here, leniently: a malformed document costs the labels,
//!   never the read.
//! - **Time.** `deliver_on` is a `TIMESTAMP` without time zone that Conductor writes from
//!   `current_timestamp` in the server's time zone, normally UTC; it is read as UTC
//!   (`AT TIME ZONE 'UTC'`, which is also right if the column is `TIMESTAMPTZ`). "Now" is the
//!   database's `statement_timestamp()`, the clock `deliver_on` was computed from, so clock skew
//!   between taskpulse and the database doesn't show up as lateness. `read_at` is that time.
//! - **Which wake-up time wins.** `waitTimeout` from `json_data` when present and positive, else
//!   `deliver_on`. `waitTimeout` is what the user asked for and what Conductor's `Wait` task
//!   itself checks before completing; `deliver_on` is rounded to seconds and moves when the
//!   engine postpones a message or pushes it again, which would hide lateness. It is also what
//!   the in-memory path uses (`waitUntil`/`waitTimeout`). A wake-up time more than ten years out
//!   (a WAIT without `duration`/`until`: `callbackAfterSeconds = 2147483647`) means "until
//!   signalled": the task counts as waiting, never as due or overdue, and yields no lag.
//! - **Popped rows** have been delivered to Conductor's system task worker: they are not
//!   waiting. If the engine fails to finish one, Conductor's unack processing puts it back
//!   (`popped = false`) and it counts again (and shows as overdue).
//! - **Refresh** every `refresh_every`, and on `conductor_queue_state` notifications
//!   (`experimentalQueueNotify`). Notifications carry every queue's state; only those in which
//!   the `WAIT` entry changed cause a read, and reads are at least [`MIN_READ_GAP`] apart, so a
//!   busy engine doesn't turn into a busy reader.
//! - **Wake-up lag**, measured as it happens: when a WAIT message that was waiting leaves the
//!   waiting set (it is popped or gone), `read_at - wake` is observed once, labelled with its
//!   workflow type. Not observed: messages that leave before their wake-up time (signalled,
//!   cancelled, or popped early and postponed), "until signalled" messages, messages that leave
//!   while reads were failing (the moment can't be placed), and a message popped again after it
//!   was already observed. The value is late by at most the time to the next read: with
//!   notifications, [`MIN_READ_GAP`] plus a query; without, `refresh_every`.
//! - **Failures** (database down, query error) never end the task: the last snapshot stays,
//!   reads are retried with exponential backoff, and the LISTEN session is re-established by
//!   `PgListener` (a read follows every reconnect, since notifications may have been missed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::HistogramVec;
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Acquire, Executor, PgPool};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Conductor's queue of WAIT tasks.
pub const WAIT_QUEUE: &str = "WAIT";
/// The channel of Conductor's `experimentalQueueNotify` trigger.
pub const NOTIFY_CHANNEL: &str = "conductor_queue_state";
/// `application_name` of the reader's sessions (unless the URL sets one).
pub const APPLICATION_NAME: &str = "taskpulse-wait-queue";
/// Reads are at least this far apart, however many notifications arrive.
pub const MIN_READ_GAP: Duration = Duration::from_millis(200);

/// A wake-up time further out than this is "until signalled".
const NO_TIMER_HORIZON_MS: i64 = 10 * 365 * 86_400_000;
const DUE_WINDOW_MS: i64 = 60_000;
/// Run first on every session: read-only, and a server-side limit for one statement.
const SESSION_SETUP: &str = "SET default_transaction_read_only = on; SET statement_timeout = '10s'";
/// Client-side limit for one whole read (also covers a silent network).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const TASK_LOOKUP_CHUNK: usize = 1000;

/// Counts for one workflow type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaitCounts {
    pub waiting: i64,
    pub overdue: i64,
    pub due_next_minute: i64,
}

/// The WAIT queue as last read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaitSnapshot {
    pub by_workflow_type: HashMap<String, WaitCounts>,
    /// Lateness past the wake-up time (seconds) of the most overdue WAIT task, counting only
    /// tasks past wake-up + grace; 0 if none. Same rule as the in-memory path.
    pub oldest_overdue_seconds: f64,
    /// When it was read (epoch ms, the database's clock).
    pub read_at: i64,
}

/// One WAIT message as read, joined with its task.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitRow {
    pub message_id: String,
    /// `workflowType` of the task, "" when unknown.
    pub workflow_type: String,
    /// When the task should wake (epoch ms); `None`: no timer, it waits to be signalled.
    pub wake_at: Option<i64>,
    /// Delivered to Conductor's system task worker.
    pub popped: bool,
}

/// What `task.json_data` tells about a WAIT task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskInfo {
    pub workflow_type: String,
    pub wait_timeout: Option<i64>,
}

/// Parses the fields needed from a task's JSON. Never fails: whatever is missing or malformed
/// is left at its default.
pub fn task_info(json_data: &str) -> TaskInfo {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "workflowType", default)]
        workflow_type: Option<Value>,
        #[serde(rename = "waitTimeout", default)]
        wait_timeout: Option<Value>,
    }
    // (a derived struct would also take a JSON array, field by field)
    if !json_data.trim_start().starts_with('{') {
        return TaskInfo::default();
    }
    let Ok(raw) = serde_json::from_str::<Raw>(json_data) else {
        return TaskInfo::default();
    };
    let workflow_type = match raw.workflow_type {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let wait_timeout = raw.wait_timeout.and_then(|v| match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    });
    TaskInfo {
        workflow_type,
        wait_timeout,
    }
}

/// The wake-up time of a WAIT task: `waitTimeout` when present and positive, else `deliver_on`
/// (both epoch ms); `None` when neither is known or it is more than ten years after `now`
/// (a WAIT without a timer).
pub fn wake_time(deliver_on: Option<i64>, wait_timeout: Option<i64>, now: i64) -> Option<i64> {
    let wake = wait_timeout.filter(|t| *t > 0).or(deliver_on)?;
    (wake <= now.saturating_add(NO_TIMER_HORIZON_MS)).then_some(wake)
}

/// The WAIT gauges from one read. Popped rows are delivered, not waiting. Per workflow type:
/// `waiting` counts every unpopped row; `overdue` those with `wake + grace < now`;
/// `due_next_minute` those with `now <= wake <= now + 60 s`. `oldest_overdue_seconds` is the
/// largest `now - wake` among the overdue.
pub fn snapshot_from_rows(rows: &[WaitRow], now: i64, grace: Duration) -> WaitSnapshot {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut by_workflow_type: HashMap<String, WaitCounts> = HashMap::new();
    let mut oldest_overdue_ms = 0i64;
    for row in rows.iter().filter(|r| !r.popped) {
        let c = by_workflow_type
            .entry(row.workflow_type.clone())
            .or_default();
        c.waiting += 1;
        if let Some(wake) = row.wake_at {
            let late = now.saturating_sub(wake);
            if late > grace_ms {
                c.overdue += 1;
                oldest_overdue_ms = oldest_overdue_ms.max(late);
            } else if late <= 0 && -late <= DUE_WINDOW_MS {
                c.due_next_minute += 1;
            }
        }
    }
    WaitSnapshot {
        by_workflow_type,
        oldest_overdue_seconds: oldest_overdue_ms as f64 / 1000.0,
        read_at: now,
    }
}

/// One WAIT wake-up seen happen.
#[derive(Clone, Debug, PartialEq)]
pub struct Wakeup {
    pub workflow_type: String,
    pub lag_seconds: f64,
}

#[derive(Clone, Debug)]
struct Tracked {
    workflow_type: String,
    wake_at: Option<i64>,
    waiting: bool,
    /// Its wake-up was observed (kept while the id stays in the queue, so it counts once).
    observed: bool,
}

/// Finds WAIT wake-ups by diffing successive reads (see the module docs for the rules).
#[derive(Debug)]
pub struct LagTracker {
    tracked: HashMap<String, Tracked>,
    last_read_at: Option<i64>,
    max_gap_ms: i64,
}

impl LagTracker {
    /// `max_gap`: reads further apart than this can't place a departure in time; what left
    /// in between is not observed.
    pub fn new(max_gap: Duration) -> LagTracker {
        LagTracker {
            tracked: HashMap::new(),
            last_read_at: None,
            max_gap_ms: i64::try_from(max_gap.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Takes the next read; answers the wake-ups that happened since the previous one. The
    /// first read only sets the baseline.
    pub fn update(&mut self, rows: &[WaitRow], read_at: i64) -> Vec<Wakeup> {
        let placeable = self
            .last_read_at
            .is_some_and(|last| read_at >= last && read_at - last <= self.max_gap_ms);
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let prev = self.tracked.remove(&row.message_id);
            let mut t = Tracked {
                workflow_type: row.workflow_type.clone(),
                wake_at: row.wake_at,
                waiting: !row.popped,
                observed: prev.as_ref().is_some_and(|p| p.observed),
            };
            if row.popped && placeable {
                if let Some(w) = prev.as_ref().and_then(|p| departure(p, read_at)) {
                    out.push(w);
                    t.observed = true;
                }
            }
            next.insert(row.message_id.clone(), t);
        }
        if placeable {
            out.extend(self.tracked.values().filter_map(|p| departure(p, read_at)));
        }
        self.tracked = next;
        self.last_read_at = Some(read_at);
        out
    }
}

/// The wake-up of a message that stopped waiting at `at`, if it was one.
fn departure(p: &Tracked, at: i64) -> Option<Wakeup> {
    if !p.waiting || p.observed {
        return None;
    }
    let wake = p.wake_at?;
    (at >= wake).then(|| Wakeup {
        workflow_type: p.workflow_type.clone(),
        lag_seconds: (at - wake) as f64 / 1000.0,
    })
}

/// Whether a `conductor_queue_state` payload shows a WAIT queue different from the last one
/// seen (`last`: `None` = nothing seen yet). Anything unparsable counts as a change.
fn wait_state_changed(payload: &str, last: &mut Option<Option<Value>>) -> bool {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(mut m)) => {
            let wait = m.remove(WAIT_QUEUE);
            if last.as_ref() == Some(&wait) {
                false
            } else {
                *last = Some(wait);
                true
            }
        }
        _ => {
            *last = None;
            true
        }
    }
}

/// Retry delay after `failures` consecutive failures: from `min(base, 500 ms)`, doubling, at
/// most `max(base, 30 s)`.
fn backoff(failures: u32, base: Duration) -> Duration {
    let first = base.min(Duration::from_millis(500));
    let cap = base.max(MAX_BACKOFF);
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap)
}

/// A pool on Conductor's database whose every session is read-only. `url`: `postgres://...`.
pub async fn connect_read_only(url: &str) -> Result<PgPool> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::Config(
            "--conductor-db: expected a postgres://... URL".into(),
        ));
    }
    let mut options: PgConnectOptions = url
        .parse()
        .map_err(|e| Error::Config(format!("--conductor-db: {e}")))?;
    if options.get_application_name().is_none() {
        options = options.application_name(APPLICATION_NAME);
    }
    let pool = PgPoolOptions::new()
        // one for reads, one held by the listener, one spare while a dead one is replaced
        .max_connections(3)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // no arguments: the simple query protocol, so both statements run
                conn.execute(SESSION_SETUP).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// The WAIT rows and the statement time in one statement (one row even when WAIT is empty).
const READ_QUEUE: &str = "\
    SELECT (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8 AS now_ms, \
           q.message_id, q.popped, q.deliver_ms \
    FROM (SELECT 1) AS one \
    LEFT JOIN ( \
        SELECT message_id::text AS message_id, COALESCE(popped, FALSE) AS popped, \
               CASE WHEN isfinite(deliver_on) \
                    THEN (EXTRACT(EPOCH FROM (deliver_on AT TIME ZONE 'UTC')) * 1000)::int8 \
               END AS deliver_ms \
        FROM queue_message WHERE queue_name = $1 \
    ) AS q ON TRUE";

const READ_TASKS: &str =
    "SELECT task_id::text, json_data::text FROM task WHERE task_id = ANY($1::text[])";

/// Reads the WAIT queue, caching what each task's JSON says while its message is queued.
struct Reader {
    pool: PgPool,
    tasks: HashMap<String, TaskInfo>,
}

impl Reader {
    async fn read(&mut self) -> Result<(Vec<WaitRow>, i64)> {
        type QueueRow = (i64, Option<String>, Option<bool>, Option<i64>);
        let raw: Vec<QueueRow> = sqlx::query_as(READ_QUEUE)
            .bind(WAIT_QUEUE)
            .fetch_all(&self.pool)
            .await?;
        let now = raw.first().map(|r| r.0).unwrap_or_else(crate::now_ms);
        let queued: Vec<(String, bool, Option<i64>)> = raw
            .into_iter()
            .filter_map(|(_, id, popped, deliver)| Some((id?, popped.unwrap_or(false), deliver)))
            .collect();

        let present: HashSet<&str> = queued.iter().map(|q| q.0.as_str()).collect();
        self.tasks.retain(|id, _| present.contains(id.as_str()));
        let missing: Vec<String> = queued
            .iter()
            .filter(|q| !self.tasks.contains_key(&q.0))
            .map(|q| q.0.clone())
            .collect();
        for chunk in missing.chunks(TASK_LOOKUP_CHUNK) {
            let found: Vec<(String, Option<String>)> = sqlx::query_as(READ_TASKS)
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
            for (id, json) in found {
                let info = json.as_deref().map(task_info).unwrap_or_default();
                self.tasks.insert(id, info);
            }
        }

        let rows = queued
            .into_iter()
            .map(|(message_id, popped, deliver)| {
                let info = self.tasks.get(&message_id);
                WaitRow {
                    workflow_type: info.map(|i| i.workflow_type.clone()).unwrap_or_default(),
                    wake_at: wake_time(deliver, info.and_then(|i| i.wait_timeout), now),
                    popped,
                    message_id,
                }
            })
            .collect();
        Ok((rows, now))
    }

    async fn read_timed(&mut self) -> Result<(Vec<WaitRow>, i64)> {
        match tokio::time::timeout(READ_TIMEOUT, self.read()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "reading Conductor's WAIT queue timed out",
            ))),
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects read-only (every session `SET default_transaction_read_only = on`; never writes),
/// reads a first snapshot, then keeps it fresh every `refresh_every` and on each
/// `conductor_queue_state` notification (debounced), observing wake-up lag into `wakeup_lag`
/// (labels: workflow_type) as WAIT messages leave the queue.
///
/// Fails when the database can't be reached or the first read fails (say, no `queue_message`
/// table): a wrong `--conductor-db` is a start-up error. Afterwards nothing ends the task but
/// dropping every receiver (or aborting the handle).
pub async fn spawn(
    url: &str,
    wait_grace: Duration,
    refresh_every: Duration,
    wakeup_lag: HistogramVec,
) -> Result<(watch::Receiver<WaitSnapshot>, JoinHandle<()>)> {
    let refresh_every = refresh_every.max(Duration::from_millis(100));
    let pool = connect_read_only(url).await?;
    // LISTEN before the first read, so no change after that read goes unnoticed.
    let listener = match connect_listener(&pool).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "WAIT queue: cannot LISTEN {NOTIFY_CHANNEL} yet; retrying in the background");
            None
        }
    };
    let mut reader = Reader {
        pool: pool.clone(),
        tasks: HashMap::new(),
    };
    let (rows, now) = reader.read_timed().await?;
    let mut lag = LagTracker::new(refresh_every * 2 + Duration::from_secs(2));
    lag.update(&rows, now);
    let (tx, rx) = watch::channel(snapshot_from_rows(&rows, now, wait_grace));
    tracing::info!(
        waiting = rows.iter().filter(|r| !r.popped).count(),
        "WAIT queue: reading Conductor's database"
    );

    let poke = Arc::new(Notify::new());
    let listen_task = tokio::spawn(listen(pool, listener, poke.clone()));
    let handle = tokio::spawn(async move {
        let _listen = AbortOnDrop(listen_task);
        let mut state = Refresher {
            reader,
            lag,
            tx,
            wakeup_lag,
            wait_grace,
            refresh_every,
            failures: 0,
        };
        state.run(poke).await;
    });
    Ok((rx, handle))
}

struct Refresher {
    reader: Reader,
    lag: LagTracker,
    tx: watch::Sender<WaitSnapshot>,
    wakeup_lag: HistogramVec,
    wait_grace: Duration,
    refresh_every: Duration,
    failures: u32,
}

impl Refresher {
    async fn run(&mut self, poke: Arc<Notify>) {
        let min_gap = MIN_READ_GAP.min(self.refresh_every);
        let mut last_read = Instant::now();
        let mut next_due = last_read + self.refresh_every;
        loop {
            let poked = tokio::select! {
                biased;
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep_until(next_due) => false,
                _ = poke.notified() => true,
            };
            if poked {
                if self.failures > 0 {
                    // backing off: the retry comes at next_due
                    continue;
                }
                tokio::time::sleep_until(last_read + min_gap).await;
            }
            let ok = self.refresh().await;
            last_read = Instant::now();
            next_due = last_read
                + if ok {
                    self.refresh_every
                } else {
                    backoff(self.failures, self.refresh_every)
                };
        }
    }

    /// One read; false when it failed (the last snapshot stays).
    async fn refresh(&mut self) -> bool {
        match self.reader.read_timed().await {
            Ok((rows, now)) => {
                for w in self.lag.update(&rows, now) {
                    match self
                        .wakeup_lag
                        .get_metric_with_label_values(&[&w.workflow_type])
                    {
                        Ok(h) => h.observe(w.lag_seconds),
                        Err(e) => tracing::error!(error = %e, "WAIT queue: wake-up lag histogram"),
                    }
                }
                self.tx
                    .send_replace(snapshot_from_rows(&rows, now, self.wait_grace));
                if self.failures > 0 {
                    tracing::info!(
                        failures = self.failures,
                        "WAIT queue: reading Conductor's database again"
                    );
                }
                self.failures = 0;
                true
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(
                    error = %e,
                    failures = self.failures,
                    retry_in = ?backoff(self.failures, self.refresh_every),
                    "WAIT queue: reading Conductor's database failed; keeping the last snapshot"
                );
                false
            }
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(NOTIFY_CHANNEL).await?;
    Ok(l)
}

/// Pokes the refresher on every notification that changes the WAIT queue, and after every
/// (re)connection of the LISTEN session.
async fn listen(pool: PgPool, mut listener: Option<PgListener>, poke: Arc<Notify>) {
    let mut last_wait: Option<Option<Value>> = None;
    let mut failures = 0u32;
    // After an error the session is re-established before receiving again.
    let mut lost = false;
    loop {
        let Some(l) = listener.as_mut() else {
            match connect_listener(&pool).await {
                Ok(l) => {
                    tracing::info!("WAIT queue: listening on {NOTIFY_CHANNEL}");
                    listener = Some(l);
                    failures = 0;
                    last_wait = None;
                    poke.notify_one();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "WAIT queue: cannot LISTEN yet");
                    tokio::time::sleep(backoff(failures, Duration::from_secs(1))).await;
                }
            }
            continue;
        };
        if lost {
            match (&mut *l).acquire().await {
                Ok(_) => {
                    tracing::info!("WAIT queue: LISTEN {NOTIFY_CHANNEL} re-established");
                    lost = false;
                    failures = 0;
                    last_wait = None;
                    poke.notify_one();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "WAIT queue: LISTEN session still down");
                    tokio::time::sleep(backoff(failures, Duration::from_secs(1))).await;
                }
            }
            continue;
        }
        match l.try_recv().await {
            Ok(Some(n)) => {
                if wait_state_changed(n.payload(), &mut last_wait) {
                    poke.notify_one();
                }
            }
            Ok(None) => {
                // The session dropped and PgListener opened a new one (LISTEN included);
                // notifications may have been missed in between.
                tracing::info!("WAIT queue: LISTEN session reconnected");
                last_wait = None;
                poke.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAIT queue: LISTEN session lost; reconnecting");
                lost = true;
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures, Duration::from_secs(1))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn row(id: &str, wf: &str, wake: Option<i64>, popped: bool) -> WaitRow {
        WaitRow {
            message_id: id.into(),
            workflow_type: wf.into(),
            wake_at: wake,
            popped,
        }
    }

    #[test]
    fn task_info_reads_type_and_wait_timeout() {
        let info = task_info(
            r#"{"taskId":"t","taskType":"WAIT","workflowType":"order","waitTimeout":1700000060000,"inputData":{"duration":"1m"}}"#,
        );
        assert_eq!(
            info,
            TaskInfo {
                workflow_type: "order".into(),
                wait_timeout: Some(1_700_000_060_000)
            }
        );
    }

    #[test]
    fn task_info_is_lenient() {
        assert_eq!(task_info("not json"), TaskInfo::default());
        assert_eq!(task_info("[1,2]"), TaskInfo::default());
        assert_eq!(task_info("{}"), TaskInfo::default());
        let odd = task_info(r#"{"workflowType":42,"waitTimeout":"1700000060000"}"#);
        assert_eq!(odd.workflow_type, "");
        assert_eq!(odd.wait_timeout, Some(1_700_000_060_000));
        assert_eq!(
            task_info(r#"{"waitTimeout":1.7e12}"#).wait_timeout,
            Some(1_700_000_000_000)
        );
        assert_eq!(task_info(r#"{"waitTimeout":1e300}"#).wait_timeout, None);
        assert_eq!(task_info(r#"{"waitTimeout":null}"#).wait_timeout, None);
        assert_eq!(task_info(r#"{"waitTimeout":"soon"}"#).wait_timeout, None);
    }

    #[test]
    fn wait_timeout_wins_over_deliver_on() {
        assert_eq!(wake_time(Some(NOW + 5_000), Some(NOW), NOW), Some(NOW));
        assert_eq!(wake_time(Some(NOW + 5_000), None, NOW), Some(NOW + 5_000));
        // Conductor writes 0 when there is no timer
        assert_eq!(
            wake_time(Some(NOW + 5_000), Some(0), NOW),
            Some(NOW + 5_000)
        );
        assert_eq!(wake_time(None, None, NOW), None);
    }

    #[test]
    fn a_wait_without_timer_has_no_wake_time() {
        let forever = NOW + 2_147_483_647_000;
        assert_eq!(wake_time(Some(forever), None, NOW), None);
        assert_eq!(
            wake_time(Some(i64::MAX), None, i64::MAX - 1),
            Some(i64::MAX)
        );
        // a year out is a real timer
        let year = NOW + 365 * 86_400_000;
        assert_eq!(wake_time(Some(year), None, NOW), Some(year));
    }

    #[test]
    fn snapshot_counts_like_the_in_memory_path() {
        let grace = Duration::from_secs(30);
        let rows = vec![
            row("a", "order", Some(NOW - 120_000), false), // overdue by 120 s
            row("b", "order", Some(NOW - 30_000), false),  // exactly at grace: not overdue
            row("c", "order", Some(NOW + 30_000), false),  // due next minute
            row("d", "order", Some(NOW), false),           // due right now: next minute
            row("e", "order", Some(NOW + 60_000), false),  // edge of the minute: due
            row("f", "order", Some(NOW + 60_001), false),  // later
            row("g", "billing", Some(NOW - 45_000), false), // overdue by 45 s
            row("h", "billing", None, false),              // until signalled
            row("i", "billing", Some(NOW - 999_000), true), // popped: delivered
            row("j", "", Some(NOW + 1_000), false),
            row("k", "popped-only", Some(NOW), true),
        ];
        let s = snapshot_from_rows(&rows, NOW, grace);
        assert_eq!(s.read_at, NOW);
        assert_eq!(s.oldest_overdue_seconds, 120.0);
        let want: HashMap<String, WaitCounts> = [
            (
                "order",
                WaitCounts {
                    waiting: 6,
                    overdue: 1,
                    due_next_minute: 3,
                },
            ),
            (
                "billing",
                WaitCounts {
                    waiting: 2,
                    overdue: 1,
                    due_next_minute: 0,
                },
            ),
            (
                "",
                WaitCounts {
                    waiting: 1,
                    overdue: 0,
                    due_next_minute: 1,
                },
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(s.by_workflow_type, want);
    }

    #[test]
    fn empty_queue_gives_zeroes() {
        let s = snapshot_from_rows(&[], NOW, Duration::ZERO);
        assert!(s.by_workflow_type.is_empty());
        assert_eq!(s.oldest_overdue_seconds, 0.0);
    }

    fn tracker() -> LagTracker {
        LagTracker::new(Duration::from_secs(10))
    }

    #[test]
    fn first_read_is_only_a_baseline() {
        let mut t = tracker();
        assert!(t
            .update(&[row("a", "order", Some(NOW - 5_000), true)], NOW)
            .is_empty());
        // a row that was never seen waiting yields nothing when it goes
        assert!(t.update(&[], NOW + 1_000).is_empty());
    }

    #[test]
    fn a_message_that_goes_after_its_wake_up_is_observed_once() {
        let mut t = tracker();
        t.update(&[row("a", "order", Some(NOW - 2_000), false)], NOW);
        let got = t.update(&[], NOW + 500);
        assert_eq!(
            got,
            vec![Wakeup {
                workflow_type: "order".into(),
                lag_seconds: 2.5
            }]
        );
        assert!(t.update(&[], NOW + 1_000).is_empty());
    }

    #[test]
    fn popping_is_the_wake_up_and_counts_once() {
        let mut t = tracker();
        t.update(&[row("a", "order", Some(NOW), false)], NOW - 1_000);
        let got = t.update(&[row("a", "order", Some(NOW), true)], NOW + 300);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lag_seconds, 0.3);
        // deleted after being popped: not again
        assert!(t.update(&[], NOW + 600).is_empty());

        // popped, put back by Conductor's unack processing, popped again: still once
        t.update(&[row("b", "order", Some(NOW), false)], NOW + 700);
        assert_eq!(
            t.update(&[row("b", "order", Some(NOW), true)], NOW + 800)
                .len(),
            1
        );
        assert!(t
            .update(&[row("b", "order", Some(NOW), false)], NOW + 900)
            .is_empty());
        assert!(t
            .update(&[row("b", "order", Some(NOW), true)], NOW + 1_000)
            .is_empty());
        assert!(t.update(&[], NOW + 1_100).is_empty());
    }

    #[test]
    fn leaving_before_the_wake_up_is_not_a_wake_up() {
        let mut t = tracker();
        t.update(
            &[
                row("early", "order", Some(NOW + 5_000), false),
                row("signal", "order", None, false),
            ],
            NOW,
        );
        assert!(t.update(&[], NOW + 1_000).is_empty());

        // popped early (second-rounded deliver_on) and postponed, then really woken
        t.update(&[row("p", "order", Some(NOW + 2_000), false)], NOW + 1_000);
        assert!(t
            .update(&[row("p", "order", Some(NOW + 2_000), true)], NOW + 1_500)
            .is_empty());
        assert!(t
            .update(&[row("p", "order", Some(NOW + 2_000), false)], NOW + 1_600)
            .is_empty());
        let got = t.update(&[], NOW + 2_100);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lag_seconds, 0.1);
    }

    #[test]
    fn departures_across_a_gap_are_not_placed() {
        let mut t = tracker();
        t.update(&[row("a", "order", Some(NOW - 1_000), false)], NOW);
        assert!(t.update(&[], NOW + 60_000).is_empty());
        // clock going backwards is a gap too
        t.update(&[row("b", "order", Some(NOW - 1_000), false)], NOW + 61_000);
        assert!(t.update(&[], NOW).is_empty());
    }

    #[test]
    fn tracker_forgets_messages_that_left() {
        let mut t = tracker();
        let rows: Vec<WaitRow> = (0..100)
            .map(|i| row(&format!("m{i}"), "order", Some(NOW + 60_000), false))
            .collect();
        t.update(&rows, NOW);
        assert_eq!(t.tracked.len(), 100);
        t.update(&rows[..10], NOW + 1_000);
        assert_eq!(t.tracked.len(), 10);
    }

    #[test]
    fn only_changes_of_the_wait_entry_cause_a_read() {
        let mut last = None;
        let p1 = r#"{"WAIT":{"nextDelivery":1,"depth":2},"x":{"nextDelivery":5,"depth":1},"__now__":10}"#;
        assert!(wait_state_changed(p1, &mut last));
        let p2 = r#"{"WAIT":{"nextDelivery":1,"depth":2},"x":{"nextDelivery":5,"depth":9},"__now__":11}"#;
        assert!(!wait_state_changed(p2, &mut last));
        let p3 = r#"{"WAIT":{"nextDelivery":1,"depth":3},"__now__":12}"#;
        assert!(wait_state_changed(p3, &mut last));
        let empty = r#"{"__now__":13}"#;
        assert!(wait_state_changed(empty, &mut last));
        assert!(!wait_state_changed(empty, &mut last));
        assert!(wait_state_changed("garbage", &mut last));
        assert!(wait_state_changed(empty, &mut last));
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(1, base), Duration::from_millis(500));
        assert_eq!(backoff(2, base), Duration::from_secs(1));
        assert_eq!(backoff(4, base), Duration::from_secs(4));
        assert_eq!(backoff(10, base), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, base), MAX_BACKOFF);
        let fast = Duration::from_millis(200);
        assert_eq!(backoff(1, fast), fast);
        let slow = Duration::from_secs(120);
        assert_eq!(backoff(30, slow), slow);
    }
}
