//! What every reader of an engine's own store shares (Conductor's `task_tail` and
//! `redis_reader`, Kestra's `executions` reader): handing what they read to the pipeline, and
//! the poll loop with its backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use crate::error::{Error, Result};
use crate::ingest::{Item, TaskUpdate};
use crate::pipeline::{Ack, Pipeline};

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

/// Whether a store reader's last read worked: `/readyz` asks (every reader's own).
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// `Some(why)` while reads are failing.
    pub fn failing(&self) -> Option<String> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }

    pub(crate) fn set(&self, why: Option<String>) {
        if let Ok(mut g) = self.0.lock() {
            *g = why;
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

    /// After each poll: how long it took, and the error with the number of failures in a row.
    fn observe(&mut self, took: Duration, failed: Option<(&Error, u32)>);
}

/// Polls every `every` until `stop`; failures are retried with backoff (logged on the first
/// and then at powers of two, so an outage doesn't flood the log).
pub(crate) fn run<P: Poller>(
    mut reader: P,
    every: Duration,
    stop: CancellationToken,
) -> BoxFuture<'static, ()> {
    async move {
        let mut failures = 0u32;
        loop {
            let wait = if failures == 0 {
                every
            } else {
                backoff(failures, every)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = std::time::Instant::now();
            match reader.poll_once().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "{}: reading again", P::WHAT);
                    }
                    failures = 0;
                    reader.observe(started.elapsed(), None);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "{}: read failed; keeping the last state and retrying", P::WHAT);
                    }
                    reader.observe(started.elapsed(), Some((&e, failures)));
                }
            }
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

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
