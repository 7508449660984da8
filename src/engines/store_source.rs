//! What every reader of an engine's own store shares (Conductor's `task_tail` and
//! `redis_reader`, Kestra's `executions` reader, Airflow's reader): their settings' common
//! checks, the poll metrics they all keep, handing what they read to the pipeline, and
//! the poll loop with its backoff, its deadline and its part in readiness.
//!
//! Why the loop owns the deadline: an engine's database or Redis can stop answering without
//! closing the connection (a frozen network path, a proxy that hangs, a lock the server waits
//! on). The server's own `statement_timeout` does not help when its answer never arrives, so
//! every poll, whatever queries it sends, is abandoned after [`POLL_DEADLINE`] on taskpulse's
//! side (the connection is dropped, the pool opens a new one), counted as a failed read and
//! retried with backoff. Readiness turns 503 as soon as a poll is overdue ([`POLL_OVERDUE`]),
//! not only once it failed, and a stop request ends the loop at once, mid-poll included.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::error::{Error, Result};
use crate::ingest::{Item, TaskUpdate};
use crate::pipeline::{Ack, Pipeline};
use crate::settings::redact_url;

/// Submits updates read from the engine's store, acknowledged from memory (a reader reads
/// again what it misses). Those the pipeline refuses (overloaded) go to `unsent`, to be
/// submitted first next time. Returns how many were taken.
pub(crate) async fn submit(
    pipeline: &Pipeline,
    source: &'static str,
    updates: Vec<TaskUpdate>,
    unsent: &mut Vec<TaskUpdate>,
) -> usize {
    if updates.is_empty() {
        return 0;
    }
    let n = updates.len();
    let items = updates.iter().cloned().enumerate().map(|(index, u)| Item {
        index,
        parsed: Ok(u),
    });
    match pipeline.submit(items, source, Ack::Memory).await {
        Ok(_) => n,
        Err(e) => {
            tracing::warn!(error = %e, updates = n, source, "the pipeline refused updates read from the engine's store; retrying");
            unsent.extend(updates);
            0
        }
    }
}

/// Run first on every session of an engine's database: read-only, and a server-side limit
/// for one statement.
const SESSION_SETUP: &str = "SET default_transaction_read_only = on; SET statement_timeout = '10s'";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool on an engine's PostgreSQL whose every session is read-only, not yet connected.
pub(crate) struct ReadOnlyPool {
    pool: PgPoolOptions,
    options: PgConnectOptions,
}

/// `flag`: the setting the URL came from, for errors; `application`: the sessions'
/// `application_name` unless the URL sets one.
pub(crate) fn read_only_pool(flag: &str, application: &str, url: &str) -> Result<ReadOnlyPool> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::Config(format!(
            "--{flag}: expected a postgres://... URL"
        )));
    }
    let mut options: PgConnectOptions = url
        .parse()
        .map_err(|e| Error::Config(format!("--{flag}: {e}")))?;
    if options.get_application_name().is_none() {
        options = options.application_name(application);
    }
    let pool = PgPoolOptions::new()
        // one for reads, one held by a listener, one spare while a dead one is replaced
        .max_connections(3)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // no arguments: the simple query protocol, so both statements run
                conn.execute(SESSION_SETUP).await?;
                Ok(())
            })
        });
    Ok(ReadOnlyPool { pool, options })
}

impl ReadOnlyPool {
    pub(crate) async fn connect(self) -> Result<PgPool> {
        Ok(self.pool.connect_with(self.options).await?)
    }

    pub(crate) fn lazy(self) -> PgPool {
        self.pool.connect_lazy_with(self.options)
    }
}

/// A poll running longer than this makes `/readyz` answer 503 naming the source (a slow poll
/// under it does not: readiness must not flap with the engine's load).
pub const POLL_OVERDUE: Duration = Duration::from_secs(15);
/// A poll still running after this is abandoned on taskpulse's side and counted as failed,
/// whatever the network or the engine's server do.
pub const POLL_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct HealthState {
    failing: Option<String>,
    polling_since: Option<Instant>,
}

/// A UTC offset in seconds as `UTC-08:00`, for errors about an engine's session time zone.
pub(crate) fn utc_offset(secs: i64) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let m = secs.unsigned_abs() / 60;
    format!("UTC{sign}{:02}:{:02}", m / 60, m % 60)
}

/// Up to four zone names an engine's PostgreSQL knows at this offset from UTC now, region
/// names first (none when the query fails: the error it helps word still stands).
pub(crate) async fn zones_at(pool: &PgPool, secs: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT name FROM pg_timezone_names WHERE utc_offset = make_interval(secs => $1) \
         ORDER BY (name LIKE '%/%' AND name NOT LIKE 'Etc/%') DESC, name LIMIT 4",
    )
    .bind(secs as f64)
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

/// Whether a store reader is keeping up: its last read worked and no read is overdue.
/// `/readyz` asks (every reader's own).
#[derive(Clone, Debug)]
pub struct Health {
    /// What the reader reads and the setting naming it, for the answer ("Conductor's task
    /// table (--conductor-db)").
    what: &'static str,
    state: Arc<Mutex<HealthState>>,
}

impl Health {
    pub fn new(what: &'static str) -> Health {
        Health {
            what,
            state: Arc::default(),
        }
    }

    /// `Some(why)` while reads are failing, or while one has been running past
    /// [`POLL_OVERDUE`].
    pub fn failing(&self) -> Option<String> {
        let g = self.state.lock().ok()?;
        if let Some(why) = &g.failing {
            return Some(why.clone());
        }
        let running = g.polling_since?.elapsed();
        (running > POLL_OVERDUE).then(|| {
            format!(
                "{}: a read has been running for {} s (overdue after {} s, abandoned after {} s)",
                self.what,
                running.as_secs(),
                POLL_OVERDUE.as_secs(),
                POLL_DEADLINE.as_secs()
            )
        })
    }

    pub(crate) fn set(&self, why: Option<String>) {
        if let Ok(mut g) = self.state.lock() {
            g.failing = why;
        }
    }

    /// `failures` reads in a row failed, the last with `e`.
    pub(crate) fn failed(&self, failures: u32, e: &Error) {
        self.set(Some(format!(
            "{}: {failures} failed read(s) in a row: {e}",
            self.what
        )));
    }

    fn polling(&self, since: Option<Instant>) {
        if let Ok(mut g) = self.state.lock() {
            g.polling_since = since;
        }
    }
}

/// Longest wait between retries (unless the poll interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Retry delay after `failures` consecutive failures: from `min(base, 500 ms)`, doubling, at
/// most `max(base, 30 s)`.
pub(crate) fn backoff(failures: u32, base: Duration) -> Duration {
    let first = base.min(Duration::from_millis(500));
    let cap = base.max(MAX_BACKOFF);
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap)
}

/// A reader of the engine's store, polled by [`run`].
pub(crate) trait Poller: Send + 'static {
    /// What it reads, for logs ("Conductor's Redis").
    const WHAT: &'static str;

    fn poll_once(&mut self) -> BoxFuture<'_, Result<()>>;

    /// Its readiness: [`run`] marks each poll's start and end, and sets why reads fail.
    fn health(&self) -> &Health;

    /// After each poll, for the reader's metrics: how long it took, and the error with the
    /// number of failures in a row.
    fn observe(&mut self, took: Duration, failed: Option<(&Error, u32)>);
}

/// Polls every `every` until `stop`: a poll starts `every` after the previous one started
/// (so a change waits at most about `every` to be read, not `every` plus a poll), and at
/// least a tenth of `every` after it ended (a slow poll never runs back to back on the
/// engine). Failures are retried with backoff (logged on the first and then at powers of
/// two, so an outage doesn't flood the log). A poll is abandoned after [`POLL_DEADLINE`], and
/// `stop` ends the loop at once, mid-poll included.
pub(crate) fn run<P: Poller>(
    mut reader: P,
    every: Duration,
    stop: CancellationToken,
) -> BoxFuture<'static, ()> {
    async move {
        let mut failures = 0u32;
        let mut took = Duration::ZERO;
        loop {
            let wait = next_wait(every, took, failures);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = Instant::now();
            let Some(outcome) = poll_bounded(&mut reader, &stop).await else {
                return;
            };
            took = started.elapsed();
            match outcome {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "{}: reading again", P::WHAT);
                    }
                    failures = 0;
                    reader.health().set(None);
                    reader.observe(started.elapsed(), None);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "{}: read failed; keeping the last state and retrying", P::WHAT);
                    }
                    reader.health().failed(failures, &e);
                    reader.observe(started.elapsed(), Some((&e, failures)));
                }
            }
        }
    }
    .boxed()
}

/// `--<engine>-poll-interval`: at least 100 ms, so no setting turns a reader into a busy loop
/// on the engine's store.
pub(crate) fn check_poll_interval(flag: &str, every: Duration) -> Result<()> {
    if every < Duration::from_millis(100) {
        return Err(Error::Config(format!(
            "`{flag}` must be at least 100ms (e.g. 1s)"
        )));
    }
    Ok(())
}

/// A PostgreSQL URL for `flag`, naming `whose` database when it is not one.
pub(crate) fn check_postgres_url(flag: &str, whose: &str, url: &str) -> Result<()> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(());
    }
    Err(Error::Config(format!(
        "`{flag}` must be a postgres:// URL of {whose}, got `{}`",
        redact_url(url)
    )))
}

/// The poll metrics every reader of an engine's store keeps:
/// `taskpulse_<prefix>_polls_total{outcome}` and `taskpulse_<prefix>_poll_seconds`.
#[derive(Clone, Debug)]
pub struct PollMetrics {
    ok: IntCounter,
    failed: IntCounter,
    seconds: Histogram,
}

impl PollMetrics {
    /// Registers both families; `what` says what a poll reads and `flag` names its setting
    /// ("Reads of {what} ({flag}), by outcome"), `steps` what one poll does.
    pub(crate) fn register(
        registry: &Registry,
        prefix: &str,
        what: &str,
        flag: &str,
        steps: &str,
    ) -> prometheus::Result<PollMetrics> {
        let polls = IntCounterVec::new(
            Opts::new(
                format!("taskpulse_{prefix}_polls_total"),
                format!("Reads of {what} ({flag}), by outcome (ok, error)."),
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(polls.clone()))?;
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("taskpulse_{prefix}_poll_seconds"),
                format!("Time one read of {what} took ({steps})."),
            )
            .buckets(POLL_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(PollMetrics {
            ok: polls.with_label_values(&["ok"]),
            failed: polls.with_label_values(&["error"]),
            seconds,
        })
    }

    /// After a poll: its time, and its outcome counted.
    pub(crate) fn observe(&self, took: Duration, outcome: Option<(&Error, u32)>) {
        self.seconds.observe(took.as_secs_f64());
        match outcome {
            None => self.ok.inc(),
            Some(_) => self.failed.inc(),
        }
    }
}

/// Buckets of a poll's time, seconds.
pub(crate) const POLL_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The pause before the next poll: the rest of the interval since the last one started (at
/// least a tenth of it), or the backoff after failures.
fn next_wait(every: Duration, took: Duration, failures: u32) -> Duration {
    if failures == 0 {
        every.saturating_sub(took).max(every / 10)
    } else {
        backoff(failures, every)
    }
}

/// One poll under [`POLL_DEADLINE`], its start and end marked in the reader's health; `None`
/// when `stop` came first (the poll is dropped: it only reads).
async fn poll_bounded<P: Poller>(reader: &mut P, stop: &CancellationToken) -> Option<Result<()>> {
    let health = reader.health().clone();
    health.polling(Some(Instant::now()));
    let poll = reader
        .poll_once()
        .instrument(tracing::info_span!("poll", reader = P::WHAT));
    let outcome = tokio::select! {
        _ = stop.cancelled() => None,
        r = tokio::time::timeout(POLL_DEADLINE, poll) => Some(r.unwrap_or_else(|_| {
            Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s (client-side deadline)", POLL_DEADLINE.as_secs()),
            )))
        })),
    };
    health.polling(None);
    outcome
}

#[cfg(test)]
mod tests {
    #[test]
    fn polls_start_every_interval_and_never_back_to_back() {
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(next_wait(s, ms(0), 0), s);
        assert_eq!(
            next_wait(s, ms(300), 0),
            ms(700),
            "the interval counts from the start"
        );
        assert_eq!(next_wait(s, ms(950), 0), ms(100), "at least a tenth of it");
        assert_eq!(next_wait(s, ms(5_000), 0), ms(100), "a slow poll too");
        assert!(next_wait(s, ms(0), 3) > s, "failures back off");
    }

    use super::*;

    /// A reader whose polls never answer, like one behind a frozen network path.
    struct Frozen(Health, Arc<Mutex<Vec<String>>>);

    impl Poller for Frozen {
        const WHAT: &'static str = "frozen";
        fn poll_once(&mut self) -> BoxFuture<'_, Result<()>> {
            futures_util::future::pending().boxed()
        }
        fn health(&self) -> &Health {
            &self.0
        }
        fn observe(&mut self, _took: Duration, failed: Option<(&Error, u32)>) {
            if let (Some((e, _)), Ok(mut seen)) = (failed, self.1.lock()) {
                seen.push(e.to_string());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_never_answers_is_overdue_then_abandoned_and_stop_ends_it() {
        let health = Health::new("frozen (--frozen)");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            Frozen(health.clone(), seen.clone()),
            Duration::from_secs(1),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            health.failing(),
            None,
            "a poll under way is not overdue yet"
        );
        tokio::time::sleep(POLL_OVERDUE).await;
        let why = health.failing().expect("overdue");
        assert!(
            why.starts_with("frozen (--frozen): a read has been running"),
            "{why}"
        );
        tokio::time::sleep(POLL_DEADLINE).await;
        let errors = seen.lock().unwrap().clone();
        assert!(errors[0].contains("client-side deadline"), "{errors:?}");
        let why = health.failing().expect("failing after the deadline");
        assert!(
            why.starts_with("frozen (--frozen): 1 failed read(s) in a row")
                && why.contains("client-side deadline"),
            "{why}"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_millis(10), task)
            .await
            .expect("stop ends the loop mid-poll")
            .unwrap();
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
