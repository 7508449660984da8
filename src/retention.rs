//! Retention: what is over leaves the store, so it stops growing. The leading replica deletes
//! finished tasks `--retention` after they finished, with their history and attempts, and the
//! checker's audit records `--audit-retention` after they were written. In-flight tasks are
//! never deleted, whatever their age.
//!
//! The deletes go a batch of [`BATCH`] at a time, each in a short transaction of its own with a
//! pause after it, so the writer's batches never wait long behind them; on SQLite each batch
//! gives its freed pages back to the file system. A pass runs once per `--check-interval` (every
//! 30 s with the checker off) and goes on until nothing is left to delete.

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::leader::Leadership;
use crate::settings::RetentionSettings;
use crate::store::prune::Pruned;
use crate::store::Store;

/// Tasks (or audit records) deleted per transaction.
pub const BATCH: i64 = 1000;
/// Free SQLite pages given back after each batch (4 KiB each).
const RECLAIM_PAGES: i64 = 4096;
/// The writer's turn between two batches.
const PAUSE: Duration = Duration::from_millis(5);
/// How often a pass runs when the checker is off.
const EVERY_WITHOUT_CHECKER: Duration = Duration::from_secs(30);

/// `taskpulse_store_pruned_total{table}`: rows retention deleted.
#[derive(Clone, Debug)]
pub struct RetentionMetrics {
    tasks: IntCounter,
    events: IntCounter,
    attempts: IntCounter,
    repairs: IntCounter,
}

impl RetentionMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<RetentionMetrics> {
        let pruned = IntCounterVec::new(
            Opts::new(
                "taskpulse_store_pruned_total",
                "Rows deleted from the store by --retention (tasks, task_events, task_attempts) and --audit-retention (repairs).",
            ),
            &["table"],
        )?;
        registry.register(Box::new(pruned.clone()))?;
        Ok(RetentionMetrics {
            tasks: pruned.with_label_values(&["tasks"]),
            events: pruned.with_label_values(&["task_events"]),
            attempts: pruned.with_label_values(&["task_attempts"]),
            repairs: pruned.with_label_values(&["repairs"]),
        })
    }

    pub fn unregistered() -> RetentionMetrics {
        RetentionMetrics::register(&Registry::new()).expect("fresh registry")
    }
}

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassTotals {
    pub finished: Pruned,
    pub repairs: u64,
}

/// How often passes run: once per `--check-interval`, or every 30 s with the checker off.
pub fn every(check_interval: Duration) -> Duration {
    if check_interval.is_zero() {
        EVERY_WITHOUT_CHECKER
    } else {
        check_interval
    }
}

/// One pass at `now_ms`: deletes batches until none is left (or `stop`).
pub async fn pass(
    store: &Store,
    settings: &RetentionSettings,
    now_ms: i64,
    metrics: &RetentionMetrics,
    stop: &CancellationToken,
) -> Result<PassTotals> {
    let mut totals = PassTotals::default();
    if !settings.retention.is_zero() {
        let before = now_ms - settings.retention.as_millis() as i64;
        while !stop.is_cancelled() {
            let p = store.prune_finished(before, BATCH).await?;
            metrics.tasks.inc_by(p.tasks);
            metrics.events.inc_by(p.events);
            metrics.attempts.inc_by(p.attempts);
            totals.finished.tasks += p.tasks;
            totals.finished.events += p.events;
            totals.finished.attempts += p.attempts;
            if p.tasks == 0 {
                break;
            }
            store.reclaim(RECLAIM_PAGES).await?;
            tokio::time::sleep(PAUSE).await;
        }
        // Worker hosts not seen for as long: one row per worker, few.
        store.prune_workers(before).await?;
    }
    if !settings.audit_retention.is_zero() {
        let before = now_ms - settings.audit_retention.as_millis() as i64;
        while !stop.is_cancelled() {
            let n = store.prune_repairs(before, BATCH).await?;
            metrics.repairs.inc_by(n);
            totals.repairs += n;
            if n < BATCH as u64 {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    if totals != PassTotals::default() {
        // what the last batches freed
        store.reclaim(RECLAIM_PAGES).await?;
    }
    Ok(totals)
}

/// Runs passes on the leading replica until `stop`.
pub async fn run(
    store: Store,
    settings: RetentionSettings,
    every: Duration,
    leadership: Leadership,
    metrics: RetentionMetrics,
    stop: CancellationToken,
) {
    if settings.retention.is_zero() && settings.audit_retention.is_zero() {
        return;
    }
    match store.reclaims_space().await {
        Ok(false) => tracing::warn!(
            "this SQLite database was created without incremental vacuum: retention deletes old rows, but the file keeps its size until `taskpulse migrate` (with taskpulse stopped) converts it"
        ),
        Ok(true) => {}
        Err(e) => tracing::debug!(error = %e, "retention: could not read auto_vacuum"),
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        match pass(&store, &settings, crate::now_ms(), &metrics, &stop).await {
            Ok(t) if t != PassTotals::default() => tracing::info!(
                tasks = t.finished.tasks,
                history = t.finished.events,
                attempts = t.finished.attempts,
                repairs = t.repairs,
                "retention: deleted what is past --retention and --audit-retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention: a pass failed; the next one retries"),
        }
    }
}
