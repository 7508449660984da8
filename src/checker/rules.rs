//! The rules that need no engine connection. Each reads the store (the truth every replica
//! shares) with one query, and looks at this process's memory where memory may know better
//! (a throttled write that has not reached the store yet).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;

use super::{Context, RepairPlan, Rule, Violation};
use crate::error::Result;
use crate::model::{Status, StoredTask, TaskRecord, WAIT_TASK_TYPE};
use crate::store::TASK_COLUMNS;

/// Most violations one rule reports per pass; the next pass picks up the rest. Each one holds
/// its task's row, evidence and plan until the pass ends, and a pass repairs at most
/// `--max-repairs-per-run` (1,000 by default): at 100,000 a flood of expired leases made every
/// pass hold ~100 MB for findings it would not act on (measured with scripts/flood.sh).
pub const MAX_FOUND: i64 = 10_000;

/// The four rules, in the order a pass runs them.
pub fn default_rules() -> Vec<Box<dyn super::Rule>> {
    vec![
        Box::new(LeaseExpired),
        Box::new(SuccessorFinished),
        Box::new(WaitOverdue),
        Box::new(StoreDivergence),
    ]
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// `lease_expired`: a non-terminal, non-WAIT task that has been silent longer than its
/// `responseTimeoutSeconds` (while IN_PROGRESS) plus a grace, or is past its deadline plus a
/// grace. The engine will have timed it out and the update that said so never arrived.
/// Repair: mark it TIMED_OUT; the audit says the status was inferred.
pub struct LeaseExpired;

/// Why a task's lease is over, if it is: (which limit, when it ran out, epoch ms).
fn lease_over(r: &TaskRecord, now: i64, grace: i64) -> Option<(&'static str, i64)> {
    if r.status.is_terminal() || &*r.task_type == WAIT_TASK_TYPE {
        return None;
    }
    if r.status == Status::InProgress {
        if let Some(rt) = r.response_timeout_seconds.filter(|t| *t > 0) {
            let until = r.last_seen.saturating_add(rt.saturating_mul(1000));
            if until.saturating_add(grace) < now {
                return Some(("responseTimeoutSeconds", until));
            }
        }
    }
    match r.deadline_ms() {
        Some(d) if d.saturating_add(grace) < now => Some(("timeoutSeconds", d)),
        _ => None,
    }
}

impl Rule for LeaseExpired {
    fn name(&self) -> &'static str {
        "lease_expired"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let grace = ctx.settings.lease_grace.as_millis() as i64;
            let sql = format!(
                "SELECT {TASK_COLUMNS}, version FROM tasks \
                 WHERE terminal_at IS NULL AND task_type <> 'WAIT' AND ( \
                   (status = 'IN_PROGRESS' AND response_timeout_seconds > 0 \
                    AND last_seen + response_timeout_seconds * 1000 + $1 < $2) \
                   OR (timeout_seconds > 0 \
                    AND COALESCE(NULLIF(start_time, 0), first_seen) + timeout_seconds * 1000 + $1 < $2)) \
                 ORDER BY last_seen LIMIT $3"
            );
            let rows = ctx.store.query_tasks(&sql, &[grace, ctx.now, MAX_FOUND]).await?;
            let mut out = Vec::new();
            for s in rows {
                // Memory may hold a fresher update whose throttled write is still waiting.
                if let Some(mem) = ctx.tracker.as_ref().and_then(|t| t.get(&s.rec.task_id)) {
                    if lease_over(&mem, ctx.now, grace).is_none() {
                        continue;
                    }
                }
                let Some((limit, until)) = lease_over(&s.rec, ctx.now, grace) else {
                    continue;
                };
                let mut after = s.rec.clone();
                after.status = Status::TimedOut;
                after.terminal_at = Some(ctx.now);
                after.last_seen = ctx.now;
                let silent = ctx.now - s.rec.last_seen;
                let detail = format!(
                    "status inferred: no update for {:.0}s and its {limit} ran out {:.0}s ago (grace {:.0}s); the engine will have timed it out",
                    secs(silent),
                    secs(ctx.now - until),
                    secs(grace)
                );
                out.push(Violation {
                    rule: self.name(),
                    task_id: s.rec.task_id.to_string(),
                    workflow_id: s.rec.workflow_id.to_string(),
                    evidence: json!({
                        "status": s.rec.status,
                        "lastSeen": s.rec.last_seen,
                        "silentSeconds": secs(silent),
                        "limit": limit,
                        "expiredAt": until,
                        "responseTimeoutSeconds": s.rec.response_timeout_seconds,
                        "timeoutSeconds": s.rec.timeout_seconds,
                        "deadline": s.rec.deadline_ms(),
                        "graceSeconds": secs(grace),
                        "inferred": true,
                    }),
                    repair: Some(RepairPlan::Rewrite {
                        before: Some(s.rec),
                        after,
                        version: s.version,
                        detail,
                    }),
                });
            }
            Ok(out)
        }
        .boxed()
    }
}

/// `successor_finished` (the conductor-oss#176 shape): a task that is not finished while a
/// later task (higher `seq`) of the same workflow and iteration has finished. To leave out
/// parallel fork branches, which finish in any order, the successor must have appeared after
/// the task's last update, as a task scheduled because this one completed does. No safe repair
/// without the engine: report only.
pub struct SuccessorFinished;

#[derive(sqlx::FromRow)]
struct SuccessorRow {
    task_id: String,
    workflow_id: String,
    status: String,
    seq: i32,
    iteration: Option<i32>,
    last_seen: i64,
    next_id: String,
    next_status: String,
    next_seq: i32,
    next_type: String,
    next_first_seen: i64,
    next_terminal_at: Option<i64>,
}

impl Rule for SuccessorFinished {
    fn name(&self) -> &'static str {
        "successor_finished"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let sql = "SELECT a.task_id, a.workflow_id, a.status, a.seq, a.iteration, a.last_seen, \
                   b.task_id AS next_id, b.status AS next_status, b.seq AS next_seq, \
                   b.task_type AS next_type, b.first_seen AS next_first_seen, b.terminal_at AS next_terminal_at \
                 FROM tasks a JOIN tasks b \
                   ON b.workflow_id = a.workflow_id AND b.seq > a.seq \
                   AND COALESCE(b.iteration, 0) = COALESCE(a.iteration, 0) \
                 WHERE a.terminal_at IS NULL AND a.seq IS NOT NULL \
                   AND b.terminal_at IS NOT NULL AND b.first_seen > a.last_seen \
                 ORDER BY a.task_id, b.seq LIMIT $1";
            let rows: Vec<SuccessorRow> = ctx.store.query_as(sql, &[MAX_FOUND]).await?;
            let mut out: Vec<Violation> = Vec::new();
            for r in rows {
                if out.last().is_some_and(|v| v.task_id == r.task_id) {
                    continue; // the first finished successor is evidence enough
                }
                if let Some(mem) = ctx.tracker.as_ref().and_then(|t| t.get(&r.task_id)) {
                    if mem.status.is_terminal() {
                        continue;
                    }
                }
                out.push(Violation {
                    rule: self.name(),
                    task_id: r.task_id.clone(),
                    workflow_id: r.workflow_id,
                    evidence: json!({
                        "task": {"taskId": r.task_id, "status": r.status, "seq": r.seq,
                                 "iteration": r.iteration, "lastSeen": r.last_seen},
                        "successor": {"taskId": r.next_id, "status": r.next_status, "seq": r.next_seq,
                                      "taskType": r.next_type, "firstSeen": r.next_first_seen,
                                      "finishedAt": r.next_terminal_at},
                    }),
                    repair: None,
                });
            }
            Ok(out)
        }
        .boxed()
    }
}

/// `wait_overdue`: a WAIT task past its wake-up time by more than `--wait-grace`. Report only
/// here (the Conductor adapter can ask the engine to re-decide the workflow).
pub struct WaitOverdue;

impl Rule for WaitOverdue {
    fn name(&self) -> &'static str {
        "wait_overdue"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let grace = ctx.settings.wait_grace.as_millis() as i64;
            let sql = format!(
                "SELECT {TASK_COLUMNS}, version FROM tasks \
                 WHERE terminal_at IS NULL AND task_type = 'WAIT' \
                   AND wait_until IS NOT NULL AND wait_until + $1 < $2 \
                 ORDER BY wait_until LIMIT $3"
            );
            let rows = ctx
                .store
                .query_tasks(&sql, &[grace, ctx.now, MAX_FOUND])
                .await?;
            Ok(rows
                .into_iter()
                .filter(|s| {
                    let mem = ctx.tracker.as_ref().and_then(|t| t.get(&s.rec.task_id));
                    !mem.is_some_and(|m| m.status.is_terminal())
                })
                .map(|s| {
                    let wake = s.rec.wait_until.unwrap_or(ctx.now);
                    Violation {
                        rule: self.name(),
                        task_id: s.rec.task_id.to_string(),
                        workflow_id: s.rec.workflow_id.to_string(),
                        evidence: json!({
                            "waitUntil": wake,
                            "overdueSeconds": secs(ctx.now - wake),
                            "graceSeconds": secs(grace),
                            "workflowType": s.rec.workflow_type,
                        }),
                        repair: None,
                    }
                })
                .collect())
        }
        .boxed()
    }
}

/// `store_divergence`: memory and the store disagree beyond the writes still waiting (after a
/// write the store refused, or an edit behind taskpulse's back). Repair: whichever is newer by
/// `updateTime` wins; a terminal state wins over a non-terminal one, as the lifecycle says.
///
/// Only settled tasks are compared: every write sent before the pass starts is committed first
/// (a writer barrier), and tasks with a coalesced value waiting, or updated since (before or
/// while the store is read), are skipped.
pub struct StoreDivergence;

fn same(a: &TaskRecord, b: &TaskRecord) -> bool {
    a.status == b.status
        && a.progress == b.progress
        && a.progress_message == b.progress_message
        && a.update_time == b.update_time
        && a.worker_id == b.worker_id
        && a.retry_count == b.retry_count
}

/// Memory is newer than the store: terminal beats non-terminal, then `updateTime`, then
/// taskpulse's own last sighting.
fn memory_wins(mem: &TaskRecord, stored: &TaskRecord) -> bool {
    match (mem.status.is_terminal(), stored.status.is_terminal()) {
        (true, false) => true,
        (false, true) => false,
        _ => (mem.update_time, mem.last_seen) > (stored.update_time, stored.last_seen),
    }
}

/// Settled tasks compared per read of the store: the rows read for one chunk are dropped
/// before the next is read. Read all at once, 100,000 tasks' rows (each with its own strings)
/// and a map of their ids took about 140 MB more during the pass, and glibc kept much of it:
/// resident memory went from 819 to 1,127 bytes per task after the first pass and stayed
/// there. Chunks of 1,024 kept it at 827 but made the pass a fifth slower; at 4,096 it is 856,
/// and the pass takes as long as before (BENCHMARKS.md, issue 27's sixth stop).
const COMPARED_PER_READ: usize = crate::store::VERSIONED_LIST;

impl Rule for StoreDivergence {
    fn name(&self) -> &'static str {
        "store_divergence"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let Some(tracker) = &ctx.tracker else {
                return Ok(Vec::new()); // `taskpulse check` has no memory to compare
            };
            // The snapshot first, then the barrier: a task is clean once its write is sent
            // (under its entry's lock), so the barrier, queued behind every write sent before
            // the snapshot, returns when all of the snapshot's writes are committed. (The other
            // way round, a batch that took its time before the pass could send writes after
            // the barrier with a `lastSeen` before it, and read as missing from the store.)
            let started = crate::now_ms();
            let settled = tracker.settled(started);
            if !tracker.writer().barrier().await {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for chunk in settled.chunks(COMPARED_PER_READ) {
                let ids: Vec<&str> = chunk.iter().map(|(id, _)| &**id).collect();
                let stored: HashMap<Arc<str>, StoredTask> = ctx
                    .store
                    .get_tasks_versioned(&ids)
                    .await?
                    .into_iter()
                    .map(|s| (s.rec.task_id.clone(), s))
                    .collect();
                // Finished tasks past --retention were deleted from the store on purpose;
                // memory may hold them a little longer (--terminal-retention plus a sweep).
                // Measured from after the read: whatever retention deleted before it finished
                // before this.
                let pruned_before = (!ctx.settings.retention.is_zero())
                    .then(|| crate::now_ms() - ctx.settings.retention.as_millis() as i64);
                out.extend(chunk.iter().filter_map(|(id, last_seen)| {
                    let stored = stored.get(&**id);
                    // Updated since the snapshot (or gone): the store read raced live ingest,
                    // and the store may hold a write newer than the snapshot that memory holds
                    // too. The next pass compares it settled. A task the store agrees with is
                    // not copied.
                    let mem = tracker.get_if(id, |m| {
                        m.last_seen == *last_seen && !stored.is_some_and(|s| same(m, &s.rec))
                    })?;
                    divergence(self.name(), mem, stored, pruned_before)
                }));
            }
            Ok(out)
        }
        .boxed()
    }
}

/// The violation of one settled task that memory (unchanged since the pass's snapshot) and
/// the store disagree about, unless retention deleted its row on purpose.
fn divergence(
    rule: &'static str,
    mem: TaskRecord,
    stored: Option<&StoredTask>,
    pruned_before: Option<i64>,
) -> Option<Violation> {
    let (plan, evidence) = match stored {
        None if pruned_before
            .zip(mem.terminal_at)
            .is_some_and(|(before, at)| at < before) =>
        {
            return None
        }
        None => (
            RepairPlan::Rewrite {
                before: None,
                after: mem.clone(),
                version: 0,
                detail: "the store has no row for an accepted task; written from memory".into(),
            },
            json!({"memory": mem, "store": null}),
        ),
        Some(s) => {
            let evidence = json!({"memory": mem, "store": s.rec, "storeVersion": s.version});
            if memory_wins(&mem, &s.rec) {
                (
                    RepairPlan::Rewrite {
                        before: Some(s.rec.clone()),
                        after: mem.clone(),
                        version: s.version,
                        detail: "memory is newer: the store was rewritten from the accepted state"
                            .into(),
                    },
                    evidence,
                )
            } else {
                (
                    RepairPlan::ReloadMemory {
                        before: mem.clone(),
                        stored: s.rec.clone(),
                        detail: "the store is newer: memory was reloaded from it".into(),
                    },
                    evidence,
                )
            }
        }
    };
    Some(Violation {
        rule,
        task_id: mem.task_id.to_string(),
        workflow_id: mem.workflow_id.to_string(),
        evidence,
        repair: Some(plan),
    })
}
