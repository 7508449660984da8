//! `lost_terminal_update`: taskpulse accepted a task as terminal, and the engine still holds it
//! SCHEDULED or IN_PROGRESS. That is the conductor-oss#176 shape: the completion was lost
//! inside the engine (or a late IN_PROGRESS overwrote it there), and the workflow waits for a
//! task that has finished. The rule looks in two places:
//!
//! - **What the proxy forwarded** (`--conductor-url`): each terminal TaskResult is compared with
//!   the engine [`VERIFY_AFTER`] after it went upstream, and again every pass until the engine
//!   holds it terminal. Every replica runs this part about once a second for what it forwarded.
//! - **Every finished task**, when taskpulse reads the engine's store (`--conductor-db`,
//!   `--conductor-redis`; leader only): each task that became terminal in taskpulse is compared
//!   once, [`STORE_GRACE`] after it did, in pages of [`PAGE`] (one keyed query on taskpulse's
//!   `terminal_at` index, one batched read of the engine's store); so is each finished task
//!   for which an engine store reader later brought a non-terminal update that the lifecycle
//!   rejected (the engine flipped back after the first comparison). A diverging task is
//!   compared again every pass until the two sides agree. At most [`MAX_SWEPT`] tasks are
//!   compared per pass; a backlog older than [`LOOKBACK`] is skipped with a warning.
//!
//! A task the engine itself put back to work after it finished is not a violation: its record
//! then shows it scheduled or started again after the end taskpulse holds (a rerun;
//! `task_tail::update_from_row`, the lifecycle's reopen rule), and the store reader brings the
//! new run to taskpulse. The conductor-oss#176 shape keeps the times of the run that ended.
//!
//! Evidence holds both sides. The repair posts the forwarded TaskResult again through the REST
//! API, when the proxy still holds it; otherwise the violation is reported only (taskpulse does
//! not keep task output, and a completion without it would lose the worker's result). Tasks
//! that taskpulse itself inferred as timed out (`lease_expired` repairs) are left out: there
//! the engine is right and taskpulse guessed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use tokio::sync::Mutex;

use super::super::lookup::{EngineTask, Lookup};
use super::super::proxy::Proxy;
use super::Repost;
use crate::checker::{Context, RepairPlan, Rule, Violation};
use crate::error::Result;
use crate::lifecycle;
use crate::model::Status;

/// A forwarded terminal update is compared with the engine this long after it was sent.
pub const VERIFY_AFTER: Duration = Duration::from_secs(2);
/// A finished task is compared with the engine's store this long after taskpulse saw it
/// finish: the engine writes a completion before it reports it, and within milliseconds of a
/// worker's post through the proxy.
pub const STORE_GRACE: Duration = Duration::from_secs(10);
/// The first pass (of `serve` or `taskpulse check`) compares the tasks that finished this
/// long ago or later; so does a pass after the sweep fell further behind.
pub const LOOKBACK: Duration = Duration::from_secs(3600);
/// Finished tasks read (and looked up in the engine's store) per step.
pub const PAGE: i64 = 2_000;
/// Finished tasks compared per pass, at most: with the default 30 s `--check-interval`,
/// about 6,600 tasks finishing per second.
pub const MAX_SWEPT: usize = 200_000;
/// Diverging tasks reported per pass and kept to compare again, at most.
const MAX_OPEN: usize = 10_000;

/// Not inferred by taskpulse: the engine's word or a worker's, not a `lease_expired` guess.
const NOT_INFERRED: &str = "NOT EXISTS (SELECT 1 FROM repairs r \
     WHERE r.task_id = t.task_id AND r.rule = 'lease_expired')";

/// A task taskpulse holds as finished.
#[derive(sqlx::FromRow, Debug, Clone)]
struct Finished {
    task_id: String,
    workflow_id: String,
    status: String,
    terminal_at: i64,
    update_time: Option<i64>,
    /// The engine's time of the terminal update, when it carried one.
    end_time: Option<i64>,
    worker_id: Option<String>,
}

/// A finished task with a rejected update after it, and that update's event id.
#[derive(sqlx::FromRow)]
struct Rejected {
    event_id: i64,
    #[sqlx(flatten)]
    task: Finished,
}

/// Where the sweep of finished tasks stands between passes.
#[derive(Default)]
struct Sweep {
    /// Tasks that finished up to this `terminal_at` (epoch ms) were compared; `None` before
    /// the first pass.
    until: Option<i64>,
    /// The last `task_events` row read for rejected updates.
    event_mark: Option<i64>,
    /// Tasks found diverging, compared again every pass until they agree.
    open: BTreeSet<String>,
    /// Tasks reported in this pass.
    reported: HashSet<String>,
}

pub struct LostTerminalUpdate {
    lookup: Arc<Lookup>,
    px: Option<Arc<Proxy>>,
    sweep: Option<Mutex<Sweep>>,
}

impl LostTerminalUpdate {
    /// The leader's rule: what the proxy forwarded, and every finished task when `lookup`
    /// reads the engine's store.
    pub fn new(lookup: Arc<Lookup>, px: Option<Arc<Proxy>>) -> LostTerminalUpdate {
        LostTerminalUpdate {
            sweep: lookup.is_store().then(Mutex::default),
            lookup,
            px,
        }
    }

    /// Every replica's side rule: what this replica forwarded, soon after.
    pub fn forwarded_only(lookup: Arc<Lookup>, px: Arc<Proxy>) -> LostTerminalUpdate {
        LostTerminalUpdate {
            lookup,
            px: Some(px),
            sweep: None,
        }
    }

    async fn check_forwarded(&self, px: &Proxy, out: &mut Vec<Violation>) {
        let due = px.forwarded.due(VERIFY_AFTER, self.lookup.per_pass());
        if due.is_empty() {
            return;
        }
        let ids: Vec<String> = due.iter().map(|(id, _)| id.clone()).collect();
        let engine = match self.lookup.tasks(&ids).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "lost_terminal_update: engine look-up failed; retrying next pass");
                return;
            }
        };
        for (task_id, fwd) in due {
            match engine.get(&task_id) {
                // gone from the engine, or the engine holds it: verified
                None => px.forwarded.remove(&task_id),
                Some(t) if t.status.is_some_and(Status::is_terminal) => {
                    px.forwarded.remove(&task_id)
                }
                Some(t) => out.push(Violation {
                    rule: "lost_terminal_update",
                    task_id: task_id.clone(),
                    workflow_id: fwd.workflow_id.clone(),
                    evidence: json!({
                        "accepted": fwd.status,
                        "forwardedSecondsAgo": fwd.forwarded_at.elapsed().as_secs_f64(),
                        "engineStatus": t.status,
                        "engineUpdateTime": t.update_time,
                        "via": self.lookup.via(),
                        // too large to keep (or over the proxy's bound): reported only
                        "taskResultKept": fwd.body.is_some(),
                    }),
                    repair: fwd.body.clone().map(|body| RepairPlan::Engine {
                        action: Arc::new(Repost {
                            client: px.client.clone(),
                            body,
                        }),
                        detail: format!(
                            "the engine lost the {} update taskpulse forwarded; posted the TaskResult again",
                            fwd.status
                        ),
                    }),
                }),
            }
        }
    }

    /// Compares every finished task not compared yet (and the open and flipped ones) with the
    /// engine's store.
    async fn sweep(
        &self,
        ctx: &Context,
        sweep: &Mutex<Sweep>,
        out: &mut Vec<Violation>,
    ) -> Result<()> {
        let mut st = sweep.lock().await;
        st.reported = out.iter().map(|v| v.task_id.clone()).collect();
        let mut budget = MAX_SWEPT;

        // 1. The ones found diverging before.
        let open: Vec<String> = std::mem::take(&mut st.open).into_iter().collect();
        for ids in open.chunks(PAGE as usize) {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let page: Vec<Finished> = ctx
                .store
                .get_tasks_versioned(&ids)
                .await?
                .into_iter()
                .filter_map(|s| {
                    Some(Finished {
                        terminal_at: s.rec.terminal_at?,
                        task_id: s.rec.task_id.to_string(),
                        workflow_id: s.rec.workflow_id.to_string(),
                        status: s.rec.status.as_str().to_string(),
                        update_time: s.rec.update_time,
                        end_time: s.rec.end_time,
                        worker_id: s.rec.worker_id.as_deref().map(str::to_string),
                    })
                })
                .collect();
            if !self.compare(ctx, &page, &mut st, out).await {
                st.open.extend(open); // the engine can't be read: keep them for the next pass
                return Ok(());
            }
        }

        // 2. Finished tasks a store reader brought a rejected (non-terminal) update for.
        let mut mark = match st.event_mark {
            Some(m) => m,
            None => {
                let max: Vec<(i64,)> = ctx
                    .store
                    .query_as("SELECT COALESCE(MAX(id), 0) FROM task_events", &[])
                    .await?;
                max.first().map_or(0, |m| m.0)
            }
        };
        let sql = format!(
            "SELECT e.id AS event_id, t.task_id, t.workflow_id, t.status, t.terminal_at, \
                    t.update_time, t.end_time, t.worker_id \
             FROM task_events e JOIN tasks t ON t.task_id = e.task_id \
             WHERE e.id > $1 AND e.outcome = 'rejected' AND e.to_status IN ('SCHEDULED', 'IN_PROGRESS') \
               AND t.terminal_at IS NOT NULL AND {NOT_INFERRED} \
             ORDER BY e.id LIMIT $2"
        );
        while budget > 0 {
            let rows: Vec<Rejected> = ctx.store.query_as(&sql, &[mark, PAGE]).await?;
            let full = rows.len() as i64 == PAGE;
            let Some(last) = rows.last().map(|r| r.event_id) else {
                break;
            };
            let page: Vec<Finished> = rows.into_iter().map(|r| r.task).collect();
            budget = budget.saturating_sub(page.len());
            if !self.compare(ctx, &page, &mut st, out).await {
                return Ok(());
            }
            mark = last;
            st.event_mark = Some(mark);
            if !full {
                break;
            }
        }
        st.event_mark = Some(mark);

        // 3. Tasks that finished since the last pass, STORE_GRACE ago or longer.
        let to = ctx.now - STORE_GRACE.as_millis() as i64;
        let floor = ctx.now - LOOKBACK.as_millis() as i64;
        let mut from = match st.until {
            Some(u) if u >= floor => u,
            Some(u) => {
                tracing::warn!(
                    behind_seconds = (to - u) / 1000,
                    "lost_terminal_update: more tasks finished than a pass compares; skipping to the last {}s",
                    LOOKBACK.as_secs()
                );
                floor
            }
            None => floor,
        };
        let sql = format!(
            "SELECT t.task_id, t.workflow_id, t.status, t.terminal_at, t.update_time, t.end_time, \
                    t.worker_id \
             FROM tasks t WHERE t.terminal_at > $1 AND t.terminal_at <= $2 AND {NOT_INFERRED} \
             ORDER BY t.terminal_at LIMIT $3"
        );
        while from < to {
            if budget == 0 {
                st.until = Some(from);
                return Ok(());
            }
            let rows: Vec<Finished> = ctx.store.query_as(&sql, &[from, to, PAGE]).await?;
            let full = rows.len() as i64 == PAGE;
            let last = rows.last().map_or(to, |r| r.terminal_at);
            budget = budget.saturating_sub(rows.len());
            if !self.compare(ctx, &rows, &mut st, out).await {
                st.until = Some(from);
                return Ok(());
            }
            if !full {
                from = to;
                break;
            }
            // A full page: the rest after its last instant, which is read again (compared
            // twice at worst) unless the whole page shares it.
            from = if last - 1 > from { last - 1 } else { last };
        }
        st.until = Some(from.max(st.until.unwrap_or(from)));
        Ok(())
    }

    /// Looks these tasks up in the engine's store and reports those it holds unfinished.
    /// False when the store can't be read (the pass stops here and the next one goes on).
    async fn compare(
        &self,
        ctx: &Context,
        page: &[Finished],
        st: &mut Sweep,
        out: &mut Vec<Violation>,
    ) -> bool {
        if page.is_empty() {
            return true;
        }
        let ids: Vec<String> = page.iter().map(|f| f.task_id.clone()).collect();
        let engine = match self.lookup.tasks(&ids).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "lost_terminal_update: cannot read the engine's store; comparing again next pass");
                return false;
            }
        };
        for f in page {
            let Some(t) = engine.get(&f.task_id) else {
                continue; // the engine no longer holds it (archived, removed)
            };
            if t.status.is_none_or(Status::is_terminal) {
                continue;
            }
            // The engine put the task back to work after it finished (a rerun): not a lost
            // update. Its reader brings the new run to taskpulse.
            if lifecycle::reopens(t.reopened_at, f.end_time.or(Some(f.terminal_at))) {
                st.open.remove(&f.task_id);
                continue;
            }
            if st.reported.len() >= MAX_OPEN || !st.reported.insert(f.task_id.clone()) {
                continue; // reported already, or enough for one pass (the rest stay open)
            }
            st.open.insert(f.task_id.clone());
            out.push(self.diverging(ctx, f, t));
        }
        true
    }

    fn diverging(&self, ctx: &Context, f: &Finished, t: &EngineTask) -> Violation {
        let kept = self.px.as_ref().and_then(|px| {
            let body = px.forwarded.get(&f.task_id)?.body?;
            Some((px.client.clone(), body))
        });
        Violation {
            rule: "lost_terminal_update",
            task_id: f.task_id.clone(),
            workflow_id: f.workflow_id.clone(),
            evidence: json!({
                "accepted": f.status,
                "finishedAt": f.terminal_at,
                "finishedSecondsAgo": (ctx.now - f.terminal_at) as f64 / 1000.0,
                "updateTime": f.update_time,
                "workerId": f.worker_id,
                "engineStatus": t.status,
                "engineUpdateTime": t.update_time,
                "engineWorkerId": t.worker_id,
                "via": self.lookup.via(),
                "taskResultKept": kept.is_some(),
            }),
            repair: kept.map(|(client, body)| RepairPlan::Engine {
                action: Arc::new(Repost { client, body }),
                detail: format!(
                    "the engine's store holds the task {} after taskpulse accepted it {}; posted the forwarded TaskResult again",
                    t.status.map_or("unknown", Status::as_str),
                    f.status
                ),
            }),
        }
    }
}

impl Rule for LostTerminalUpdate {
    fn name(&self) -> &'static str {
        "lost_terminal_update"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let mut out = Vec::new();
            if let Some(px) = &self.px {
                self.check_forwarded(px, &mut out).await;
            }
            if let Some(sweep) = &self.sweep {
                self.sweep(ctx, sweep, &mut out).await?;
            }
            Ok(out)
        }
        .boxed()
    }
}
