//! What the two readers of Conductor's own store (`task_tail`, `redis_reader`) share: handing
//! what they read to the pipeline, and the poll loop with its backoff.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::wait_queue::backoff;
use crate::error::{Error, Result};
use crate::ingest::{Item, TaskUpdate};
use crate::pipeline::{Ack, Pipeline};

/// Submits updates read from the engine's store, acknowledged from memory (a reader reads
/// again what it misses). Those the pipeline refuses (overloaded) go to `unsent`, to be
/// submitted first next time. Returns how many were taken.
pub(super) async fn submit(
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

/// A reader of the engine's store, polled by [`run`].
pub(super) trait Poller: Send + 'static {
    /// What it reads, for logs ("Conductor's Redis").
    const WHAT: &'static str;

    fn poll_once(&mut self) -> BoxFuture<'_, Result<()>>;

    /// After each poll: how long it took, and the error with the number of failures in a row.
    fn observe(&mut self, took: Duration, failed: Option<(&Error, u32)>);
}

/// Polls every `every` until `stop`; failures are retried with backoff (logged on the first
/// and then at powers of two, so an outage doesn't flood the log).
pub(super) fn run<P: Poller>(
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
