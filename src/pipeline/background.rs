//! The pipeline's own background work: the throttle's timers, settling writes that lost to the
//! store, the sweeper, and (on PostgreSQL) the leader folding in other replicas' writes. Each
//! loop returns once `stop` is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Tracker;
use crate::leader::Leadership;
use crate::store::writer::Lost;
use crate::store::Store;
use crate::throttle;

/// How often finished tasks and idle workers are swept from memory.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Writes coalesced progress when its interval ends.
pub async fn timers(
    tracker: Arc<Tracker>,
    requests: mpsc::UnboundedReceiver<(Arc<str>, Duration)>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = throttle::run_timers(tracker, requests) => {}
    }
}

/// Memory follows the store where a write nobody waited for lost to it.
pub async fn settle_lost(
    tracker: Arc<Tracker>,
    mut lost: mpsc::UnboundedReceiver<Lost>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            next = lost.recv() => match next {
                Some(l) => tracker.settle_lost(l),
                None => return,
            },
        }
    }
}

/// Forgets what memory no longer needs (finished tasks past `--terminal-retention`, workers
/// past `--worker-expiry`), and evicts past `--max-tracked-tasks` (at once when a flood of new
/// tasks went far over it). Runs every 5 s, or every quarter of `--worker-expiry` when that is
/// shorter: a worker leaves the gauges at most one tick after its expiry.
pub async fn sweeper(
    tracker: Arc<Tracker>,
    terminal_retention: Duration,
    worker_expiry: Duration,
    stop: CancellationToken,
) {
    let retention_ms = terminal_retention.as_millis() as i64;
    let expiry_ms = worker_expiry.as_millis() as i64;
    let mut tick =
        tokio::time::interval(SWEEP_EVERY.min((worker_expiry / 4).max(Duration::from_millis(100))));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => tracker.sweep(retention_ms, expiry_ms),
            _ = tracker.eviction_wanted() => {}
        }
        tracker.evict_over_cap();
    }
}

/// On PostgreSQL the leader folds in what other replicas wrote, so its state gauges count every
/// task once. The first refresh after taking the lead reads every unfinished task; later ones
/// only rows changed since (with a margin for clock skew between replicas).
pub async fn follow_replicas(
    store: Store,
    tracker: Arc<Tracker>,
    leadership: Leadership,
    every: Duration,
    terminal_retention: Duration,
    stop: CancellationToken,
) {
    let retention_ms = terminal_retention.as_millis() as i64;
    let margin = (every * 4).as_millis() as i64 + 5_000;
    let mut since: Option<i64> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            since = None;
            continue;
        }
        let started = crate::now_ms();
        let rows = match since {
            None => store.load_tasks(started - retention_ms).await,
            Some(t) => store.changed_since(t - margin).await,
        };
        match rows {
            Ok(rows) => {
                tracker.merge_from_store(rows);
                since = Some(started);
            }
            Err(e) => tracing::warn!(error = %e, "leader: refreshing from the store failed"),
        }
    }
}
