//! `GET /api/v1/overview`: what the status page's overview shows, in one JSON object. The same
//! classifications as the metrics (in flight, stalled, predicted late, the WAIT queue's
//! overdue and due-soon), from one walk of the tracked tasks.
//!
//! The walk is shared and never waited for: at a million tracked tasks it takes a few hundred
//! milliseconds, and a request that waited for it (or for a lock held across it) would tie up
//! an async worker, and with it `/healthz` and ingest on the same worker. So the overview is
//! stale-while-revalidate: callers get the last computed answer at once; once that answer is
//! older than [`FRESH_FOR`], the next caller starts one recomputation on the blocking pool
//! (`spawn_blocking`), at most one at a time, and later callers get the new answer when it is
//! there. Only the very first caller, with nothing computed yet, waits for a walk. Fifty open
//! pages cost about one walk a second, not fifty.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::checker::CheckerMetrics;
use crate::leader::Leadership;
use crate::pipeline::Tracker;
use crate::wait::{WaitCounts, WaitMetrics, WaitSource};

/// How long one computed overview is served before a caller starts the next computation.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Task and workflow types listed for the page's filters, at most (the most common first).
const TYPES_LISTED: usize = 200;

/// What the overview reads besides the tracked tasks.
pub struct OverviewSources {
    pub tracker: Arc<Tracker>,
    /// An engine's own WAIT queue, when one reads it; else the WAIT tasks taskpulse tracks.
    pub wait_source: Option<WaitSource>,
    pub wait_metrics: WaitMetrics,
    pub wait_grace: Duration,
    pub stall_after: Duration,
    pub leadership: Leadership,
    /// `None` when the checker is off (`--check-interval 0`).
    pub checker: Option<CheckerMetrics>,
}

/// One computed overview and when its computation finished.
type Computed = Option<(Instant, Arc<Value>)>;

/// The overview, recomputed in the background at most once per [`FRESH_FOR`] (module docs).
pub struct Overview {
    sources: OverviewSources,
    /// The newest computed overview. The channel's lock is held only to read or replace the
    /// `Arc`, never across a walk.
    latest: watch::Sender<Computed>,
    /// A recomputation is running: no second one starts.
    computing: AtomicBool,
}

/// Clears [`Overview::computing`] when a recomputation ends, even by a panic, so one failed
/// walk never stops the overview for good.
struct Computing(Arc<Overview>);

impl Drop for Computing {
    fn drop(&mut self) {
        self.0.computing.store(false, Ordering::Release);
    }
}

impl Overview {
    pub fn new(sources: OverviewSources) -> Overview {
        Overview {
            sources,
            latest: watch::Sender::new(None),
            computing: AtomicBool::new(false),
        }
    }

    /// The current overview: the last computed one at once (starting a recomputation when it is
    /// older than [`FRESH_FOR`]); only when none was ever computed, the first computation.
    pub async fn get(self: &Arc<Self>) -> Arc<Value> {
        // subscribed first, so a computation that ends before we wait still wakes us
        let mut rx = self.latest.subscribe();
        loop {
            if let Some(v) = self.latest() {
                return v;
            }
            // a computation fills the channel; should one fail, the next round starts another
            let _ = tokio::time::timeout(FRESH_FOR, rx.changed()).await;
        }
    }

    /// The last computed overview, never waiting: `None` until the first computation ends.
    /// Starts a recomputation when there is none yet or it is older than [`FRESH_FOR`].
    pub fn latest(self: &Arc<Self>) -> Option<Arc<Value>> {
        let (stale, v) = match &*self.latest.borrow() {
            Some((at, v)) => (at.elapsed() >= FRESH_FOR, Some(v.clone())),
            None => (true, None),
        };
        if stale {
            self.recompute();
        }
        v
    }

    /// Starts one computation on the blocking pool, unless one is running.
    fn recompute(self: &Arc<Self>) {
        if self.computing.swap(true, Ordering::AcqRel) {
            return;
        }
        let guard = Computing(self.clone());
        tokio::task::spawn_blocking(move || {
            let v = Arc::new(guard.0.compute());
            guard.0.latest.send_replace(Some((Instant::now(), v)));
            drop(guard);
        });
    }

    fn compute(&self) -> Value {
        let s = &self.sources;
        let now = crate::now_ms();
        let stall_ms = s.stall_after.as_millis() as i64;
        let grace_ms = s.wait_grace.as_millis() as i64;
        let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut by_type: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut workflow_types: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut tracked_wait = WaitCounts::default();
        let (mut in_flight, mut stalled, mut late) = (0u64, 0u64, 0u64);
        s.tracker.for_each(|st| {
            let r = &st.rec;
            if r.status.is_terminal() {
                return;
            }
            if let Some(wf) = &r.workflow_type {
                *workflow_types.entry(wf.clone()).or_default() += 1;
            }
            if r.is_waiting() {
                tracked_wait.add(r.wait_until, now, grace_ms);
                return;
            }
            in_flight += 1;
            *by_status.entry(r.status.as_str()).or_default() += 1;
            *by_type.entry(r.task_type.clone()).or_default() += 1;
            if r.progress_stalled(now, stall_ms) {
                stalled += 1;
            }
            if r.predicted_late(st.predicted_completion(now, stall_ms)) {
                late += 1;
            }
        });
        let wait = match &s.wait_source {
            Some(src) => {
                let snap = src.borrow();
                let mut c = WaitCounts::default();
                for v in snap.by_workflow_type.values() {
                    c.merge(v);
                }
                c
            }
            None => tracked_wait,
        };
        let types = most_common(by_type);
        let task_types: BTreeSet<&str> = types.iter().map(|(t, _)| &**t).collect();
        let workflow_types: BTreeSet<Arc<str>> = most_common(workflow_types)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "at": now,
            "inFlight": {
                "total": in_flight,
                "byStatus": {
                    "SCHEDULED": by_status.get("SCHEDULED").copied().unwrap_or(0),
                    "IN_PROGRESS": by_status.get("IN_PROGRESS").copied().unwrap_or(0),
                },
                "byType": types
                    .iter()
                    .map(|(t, n)| json!({ "taskType": t, "count": n }))
                    .collect::<Vec<_>>(),
            },
            "wait": {
                "waiting": wait.waiting,
                "dueWithinMinute": wait.due_next_minute,
                "overdue": wait.overdue,
                "wakeLagSeconds": s.wait_metrics.last_lag_seconds(),
            },
            "predictedLate": late,
            "stalled": stalled,
            "checker": self.checker(),
            "taskTypes": task_types,
            "workflowTypes": workflow_types,
        })
    }

    fn checker(&self) -> Value {
        let s = &self.sources;
        let leader = s.leadership.is_leader();
        let Some(m) = &s.checker else {
            return json!({ "enabled": false, "leader": leader, "lastRun": null, "openViolations": null });
        };
        let last = m.last_run_timestamp_seconds.get();
        let open: i64 = m
            .violations
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|g| g.get_gauge().get_value() as i64)
            .sum();
        json!({
            "enabled": true,
            "leader": leader,
            "lastRun": (last > 0.0).then_some((last * 1000.0) as i64),
            // only the leader runs the checker: another replica's count says nothing
            "openViolations": leader.then_some(open),
        })
    }
}

/// The [`TYPES_LISTED`] most common names with their counts, most common first (ties by name).
fn most_common(counts: BTreeMap<Arc<str>, u64>) -> Vec<(Arc<str>, u64)> {
    let mut v: Vec<(Arc<str>, u64)> = counts.into_iter().collect();
    // stable: equal counts stay in the map's name order
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    v.truncate(TYPES_LISTED);
    v
}
