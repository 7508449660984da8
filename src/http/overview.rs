//! `GET /api/v1/overview`: what the status page's overview shows, in one JSON object. The same
//! classifications as the metrics (in flight, stalled, predicted late, the WAIT queue's
//! overdue and due-soon), from one walk of the tracked tasks.
//!
//! The walk is shared: an answer is reused for [`FRESH_FOR`], so fifty open pages cost one
//! walk a second, not fifty.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use serde_json::{json, Value};

use crate::checker::CheckerMetrics;
use crate::leader::Leadership;
use crate::pipeline::Tracker;
use crate::wait::{WaitCounts, WaitMetrics, WaitSource};

/// How long one computed overview is served again.
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

/// The overview, computed at most once per [`FRESH_FOR`].
pub struct Overview {
    sources: OverviewSources,
    cached: std::sync::Mutex<Option<(Instant, Arc<Value>)>>,
}

impl Overview {
    pub fn new(sources: OverviewSources) -> Overview {
        Overview {
            sources,
            cached: std::sync::Mutex::new(None),
        }
    }

    /// The current overview (a shared, recent computation).
    pub fn get(&self) -> Arc<Value> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = cached.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return v.clone();
            }
        }
        let v = Arc::new(self.compute());
        *cached = Some((Instant::now(), v.clone()));
        v
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
