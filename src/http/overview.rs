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
use serde::Serialize;
use tokio::sync::watch;

use crate::checker::CheckerMetrics;
use crate::leader::Leadership;
use crate::model::Status;
use crate::pipeline::{ByName, Tracker};
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
type Computed = Option<(Instant, Arc<OverviewAnswer>)>;

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
    pub async fn get(self: &Arc<Self>) -> Arc<OverviewAnswer> {
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
    pub fn latest(self: &Arc<Self>) -> Option<Arc<OverviewAnswer>> {
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

    fn compute(&self) -> OverviewAnswer {
        let s = &self.sources;
        let now = crate::now_ms();
        let stall_ms = s.stall_after.as_millis() as i64;
        let grace_ms = s.wait_grace.as_millis() as i64;
        let mut by_status = [0u64; Status::ALL.len()];
        // names by the address of their interned string, folded by content after (as the
        // scrape's walk does): the walk reads each task's inline copy, not its boxed state
        let mut by_type = ByName::<u64>::default();
        let mut workflow_types = ByName::<u64>::default();
        let mut tracked_wait = WaitCounts::default();
        let (mut in_flight, mut stalled, mut late) = (0u64, 0u64, 0u64);
        s.tracker.for_each_entry(|_, e| {
            let hot = &e.hot;
            if hot.status.is_terminal() {
                return;
            }
            if hot.workflow_type != 0 {
                *workflow_types.entry(hot.workflow_type, || e.rec.workflow_type.clone()) += 1;
            }
            if hot.waiting {
                tracked_wait.add(hot.wait_until(), now, grace_ms);
                return;
            }
            in_flight += 1;
            by_status[hot.status as usize] += 1;
            *by_type.entry(hot.task_type, || Some(e.rec.task_type.clone())) += 1;
            if hot.progress_stalled(now, stall_ms) {
                stalled += 1;
            }
            if hot.predicted_late(hot.predicted_completion(now, stall_ms)) {
                late += 1;
            }
        });
        let add = |a: &mut u64, b: &u64| *a += b;
        let (by_type, workflow_types) = (by_type.by_content(add), workflow_types.by_content(add));
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
        let task_types: BTreeSet<Arc<str>> = types.iter().map(|(t, _)| t.clone()).collect();
        let workflow_types: BTreeSet<Arc<str>> = most_common(workflow_types)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        OverviewAnswer {
            at: now,
            checker: self.checker(),
            in_flight: InFlight {
                by_status: ByStatus {
                    in_progress: by_status[Status::InProgress as usize],
                    scheduled: by_status[Status::Scheduled as usize],
                },
                by_type: types
                    .iter()
                    .map(|(t, n)| TypeCount {
                        count: *n,
                        task_type: t.clone(),
                    })
                    .collect(),
                total: in_flight,
            },
            predicted_late: late,
            stalled,
            task_types,
            version: env!("CARGO_PKG_VERSION"),
            wait: WaitAnswer {
                due_within_minute: wait.due_next_minute,
                overdue: wait.overdue,
                waiting: wait.waiting,
                wake_lag_seconds: s.wait_metrics.last_lag_seconds(),
            },
            workflow_types,
        }
    }

    fn checker(&self) -> CheckerAnswer {
        let s = &self.sources;
        let leader = s.leadership.is_leader();
        let Some(m) = &s.checker else {
            return CheckerAnswer {
                enabled: false,
                last_run: None,
                leader,
                open_violations: None,
            };
        };
        let last = m.last_run_timestamp_seconds.get();
        let open: i64 = m
            .violations
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|g| g.get_gauge().get_value() as i64)
            .sum();
        CheckerAnswer {
            enabled: true,
            last_run: (last > 0.0).then_some((last * 1000.0) as i64),
            leader,
            // only the leader runs the checker: another replica's count says nothing
            open_violations: leader.then_some(open),
        }
    }
}

// The answer's shapes. Fields are in the order of their JSON names, the order the answer has
// always had (it was built as a `serde_json` map, which sorts its keys).

/// `GET /api/v1/overview`'s answer (and the live stream's `overview` event).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverviewAnswer {
    /// When it was computed, epoch milliseconds.
    pub at: i64,
    pub checker: CheckerAnswer,
    pub in_flight: InFlight,
    pub predicted_late: u64,
    pub stalled: u64,
    /// The [`TYPES_LISTED`] most common task types in flight, by name, for the page's filter.
    pub task_types: BTreeSet<Arc<str>>,
    pub version: &'static str,
    pub wait: WaitAnswer,
    /// The [`TYPES_LISTED`] most common workflow types of unfinished tasks, by name.
    pub workflow_types: BTreeSet<Arc<str>>,
}

/// Tasks in flight (not finished, not waiting).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub by_status: ByStatus,
    /// Most common first.
    pub by_type: Vec<TypeCount>,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct ByStatus {
    #[serde(rename = "IN_PROGRESS")]
    pub in_progress: u64,
    #[serde(rename = "SCHEDULED")]
    pub scheduled: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeCount {
    pub count: u64,
    pub task_type: Arc<str>,
}

/// The WAIT queue, as the metrics classify it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitAnswer {
    pub due_within_minute: i64,
    pub overdue: i64,
    pub waiting: i64,
    pub wake_lag_seconds: Option<f64>,
}

/// The checker as this replica sees it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckerAnswer {
    pub enabled: bool,
    /// Epoch milliseconds of the last pass, `null` before the first.
    pub last_run: Option<i64>,
    pub leader: bool,
    /// `null` unless this replica leads (only the leader runs the checker).
    pub open_violations: Option<i64>,
}

/// The [`TYPES_LISTED`] most common names with their counts, most common first (ties by name).
fn most_common(counts: BTreeMap<Arc<str>, u64>) -> Vec<(Arc<str>, u64)> {
    let mut v: Vec<(Arc<str>, u64)> = counts.into_iter().collect();
    // stable: equal counts stay in the map's name order
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    v.truncate(TYPES_LISTED);
    v
}
