//! The WAIT queue read from Conductor's own PostgreSQL (`--conductor-db`), for the WAIT gauges
//! and the wake-up lag histogram (`docs/metrics.md`).
//!
//! Since Conductor 3.14 a WAIT task is an async system task: a row of `queue_message` with
//! `queue_name = 'WAIT'` (or `WAIT-<isolation group>`, see [`is_wait_queue`]) and `message_id` =
//! the task id, delivered to the system task worker at `deliver_on`. The task's own JSON (`task.json_data`) carries `workflowType` and the exact
//! wake-up time `waitTimeout` (epoch ms).
//!
//! How it works:
//! - **Read-only.** Every session runs `SET default_transaction_read_only = on` (and a statement
//!   timeout) before it is used, including the LISTEN session; nothing here writes. Sessions
//!   carry `application_name = taskpulse-wait-queue` unless the URL names one.
//! - **One read** = the names of the WAIT queues (from `queue`), their rows of `queue_message`
//!   (id, popped, deliver_on) plus the database's
//!   statement time, then `task.json_data` only for ids not seen before (cached while the id
//!   stays in the queue). JSON is parsed here, leniently: a malformed document costs the labels,
//!   never the read.
//! - **Time.** `deliver_on` is a `TIMESTAMP` without time zone that Conductor writes from
//!   `current_timestamp`: the wall time of the writing session, whose zone is the Conductor
//!   JVM's; it is read `AT TIME ZONE` `--conductor-db-time-zone`
//!   (`docs/engines/conductor-redis.md` §7.1). "Now" is the
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

mod lag;
mod listen;
mod reader;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engines::store_source::backoff;
use crate::error::Result;
use crate::wait::{WaitMetrics, WaitSnapshot, WaitSource};
use listen::{connect_listener, listen};
use reader::Reader;

pub use lag::{LagTracker, Wakeup};
pub use reader::{
    connect_read_only, is_wait_queue, lazy_read_only, snapshot_from_rows, task_info, wake_time,
    TaskInfo, WaitRow,
};

/// Conductor's queue of WAIT tasks.
pub const WAIT_QUEUE: &str = "WAIT";
/// The channel of Conductor's `experimentalQueueNotify` trigger.
pub const NOTIFY_CHANNEL: &str = "conductor_queue_state";
/// `application_name` of the reader's sessions (unless the URL sets one).
pub const APPLICATION_NAME: &str = "taskpulse-wait-queue";
/// Reads are at least this far apart, however many notifications arrive.
pub const MIN_READ_GAP: Duration = Duration::from_millis(200);

/// Connects read-only (every session `SET default_transaction_read_only = on`; never writes),
/// reads a first snapshot, then keeps it fresh every `refresh_every` and on each
/// `conductor_queue_state` notification (debounced), observing wake-up lag as WAIT messages
/// leave the queue.
///
/// Fails when the database can't be reached or the first read fails (say, no `queue_message`
/// table): a wrong `--conductor-db` is a start-up error. Afterwards nothing ends the task but
/// `stop`, or dropping every receiver.
pub async fn spawn(
    url: &str,
    options: &crate::engines::conductor::db::DbOptions,
    wait_grace: Duration,
    refresh_every: Duration,
    wakeup_lag: WaitMetrics,
    stop: CancellationToken,
) -> Result<(WaitSource, JoinHandle<()>)> {
    let refresh_every = refresh_every.max(Duration::from_millis(100));
    let pool = connect_read_only(&options.session_url(url)).await?;
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
        zone: options.time_zone.clone(),
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
        let mut state = Refresher {
            reader,
            lag,
            tx,
            wakeup_lag,
            wait_grace,
            refresh_every,
            failures: 0,
        };
        state.run(poke, stop).await;
        // The LISTEN session holds a connection of Conductor's database: end it with us.
        listen_task.abort();
        let _ = listen_task.await;
    });
    Ok((rx, handle))
}

struct Refresher {
    reader: Reader,
    lag: LagTracker,
    tx: watch::Sender<WaitSnapshot>,
    wakeup_lag: WaitMetrics,
    wait_grace: Duration,
    refresh_every: Duration,
    failures: u32,
}

impl Refresher {
    async fn run(&mut self, poke: Arc<Notify>, stop: CancellationToken) {
        let min_gap = MIN_READ_GAP.min(self.refresh_every);
        let mut last_read = Instant::now();
        let mut next_due = last_read + self.refresh_every;
        loop {
            let poked = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
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
                    self.wakeup_lag.woke(&w.workflow_type, w.lag_seconds);
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
