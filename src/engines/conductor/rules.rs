//! Checker rules that ask the engine (with `--conductor-url`). They replace the engine-less
//! `successor_finished` and `wait_overdue` and add `lost_terminal_update`. Every repair they
//! plan is carried out by the engine, audited and counted by the checker's executor, and is
//! idempotent on the engine's side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Method;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;

use super::client::{urlencode, EngineClient};
use super::proxy::Proxy;
use crate::checker::{
    Context, EngineAction, RepairPlan, Rule, SuccessorFinished, Violation, WaitOverdue,
};
use crate::error::Result;
use crate::model::Status;

/// A forwarded terminal update is checked against the engine this long after it was sent.
pub const VERIFY_AFTER: Duration = Duration::from_secs(2);
/// Engine look-ups per rule per pass, at most.
const MAX_ENGINE_CALLS: usize = 500;

/// The rules that ask the engine: in place of the core's `successor_finished` and
/// `wait_overdue`, plus `lost_terminal_update` when the proxy forwards terminal updates (that
/// one also runs on every replica soon after each forward, see [`LostTerminalUpdate`]).
pub fn engine_rules(client: Arc<EngineClient>, proxy: Option<Arc<Proxy>>) -> Vec<Box<dyn Rule>> {
    let mut rules: Vec<Box<dyn Rule>> = vec![
        Box::new(EngineSuccessorFinished {
            client: client.clone(),
        }),
        Box::new(EngineWaitOverdue {
            client,
            decided: Arc::new(DashMap::new()),
        }),
    ];
    if let Some(px) = proxy {
        rules.push(Box::new(LostTerminalUpdate { px }));
    }
    rules
}

/// What the engine says about a task.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTask {
    pub status: Option<Status>,
    pub update_time: Option<i64>,
}

/// `GET /api/tasks/{taskId}`: `Ok(None)` when the engine doesn't know the task.
pub async fn engine_task(
    client: &EngineClient,
    task_id: &str,
) -> std::result::Result<Option<EngineTask>, String> {
    let path = format!("/api/tasks/{}", urlencode(task_id));
    Ok(client.get_json(&path).await?.map(|v| EngineTask {
        status: v
            .get("status")
            .and_then(|s| s.as_str())
            .and_then(Status::parse),
        update_time: v.get("updateTime").and_then(|t| t.as_i64()),
    }))
}

/// Posts a forwarded TaskResult again.
#[derive(Debug)]
struct Repost {
    client: Arc<EngineClient>,
    body: Bytes,
}

impl EngineAction for Repost {
    fn run(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
        self.client
            .call(Method::POST, "/api/tasks", self.body.clone())
            .boxed()
    }
}

/// `PUT /api/workflow/decide/{workflowId}`, remembered so a workflow is decided at most once
/// per grace period.
#[derive(Debug)]
struct Decide {
    client: Arc<EngineClient>,
    workflow_id: String,
    decided: Arc<DashMap<String, Instant>>,
}

impl EngineAction for Decide {
    fn run(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
        async move {
            let path = format!("/api/workflow/decide/{}", urlencode(&self.workflow_id));
            self.client.call(Method::PUT, &path, Bytes::new()).await?;
            self.decided
                .insert(self.workflow_id.clone(), Instant::now());
            Ok(())
        }
        .boxed()
    }
}

/// `lost_terminal_update`: the engine shows SCHEDULED or IN_PROGRESS for a task whose terminal
/// update taskpulse forwarded (the conductor-oss#176 shape, where the completion is lost inside
/// the engine). Repair: post that TaskResult again. Each forwarded terminal update is checked
/// this way soon after it was sent, and until the engine is seen to hold it.
pub struct LostTerminalUpdate {
    pub px: Arc<Proxy>,
}

impl Rule for LostTerminalUpdate {
    fn name(&self) -> &'static str {
        "lost_terminal_update"
    }

    fn check<'a>(&'a self, _ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let due = self.px.forwarded.due(VERIFY_AFTER, MAX_ENGINE_CALLS);
            let mut out = Vec::new();
            for (task_id, fwd) in due {
                match engine_task(&self.px.client, &task_id).await {
                    Ok(Some(t)) if t.status.is_some_and(Status::is_terminal) => {
                        self.px.forwarded.remove(&task_id); // the engine holds it: verified
                    }
                    Ok(None) => {
                        self.px.forwarded.remove(&task_id); // gone from the engine
                    }
                    Ok(Some(t)) => out.push(Violation {
                        rule: self.name(),
                        task_id: task_id.clone(),
                        workflow_id: fwd.workflow_id.clone(),
                        evidence: json!({
                            "accepted": fwd.status,
                            "forwardedSecondsAgo": fwd.forwarded_at.elapsed().as_secs_f64(),
                            "engineStatus": t.status,
                            "engineUpdateTime": t.update_time,
                            // too large to keep (or over the proxy's bound): reported only
                            "taskResultKept": fwd.body.is_some(),
                        }),
                        repair: fwd.body.clone().map(|body| RepairPlan::Engine {
                            action: Arc::new(Repost {
                                client: self.px.client.clone(),
                                body,
                            }),
                            detail: format!(
                                "the engine lost the {} update taskpulse forwarded; posted the TaskResult again",
                                fwd.status
                            ),
                        }),
                    }),
                    Err(e) => tracing::debug!(task_id, error = %e, "lost_terminal_update: engine look-up failed; retrying next pass"),
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

/// `successor_finished` with the engine: ask it for the task. If it has the task terminal,
/// taskpulse missed the update and syncs its state to the engine's; otherwise report only.
pub struct EngineSuccessorFinished {
    pub client: Arc<EngineClient>,
}

impl Rule for EngineSuccessorFinished {
    fn name(&self) -> &'static str {
        "successor_finished"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let mut found = SuccessorFinished.check(ctx).await?;
            for v in found.iter_mut().take(MAX_ENGINE_CALLS) {
                let engine = match engine_task(&self.client, &v.task_id).await {
                    Ok(t) => t,
                    Err(e) => {
                        v.evidence["engine"] = json!({"error": e});
                        continue;
                    }
                };
                v.evidence["engine"] = json!({"status": engine.as_ref().and_then(|t| t.status)});
                let Some(EngineTask {
                    status: Some(status),
                    update_time,
                }) = engine
                else {
                    continue;
                };
                if !status.is_terminal() {
                    continue; // the engine agrees the task is unfinished: report only
                }
                let stored = ctx.store.get_tasks_versioned(&[v.task_id.as_str()]).await?;
                let Some(s) = stored.into_iter().next() else {
                    continue;
                };
                let mut after = s.rec.clone();
                after.status = status;
                after.update_time = update_time.max(s.rec.update_time);
                after.terminal_at = Some(ctx.now);
                after.last_seen = ctx.now;
                v.repair = Some(RepairPlan::Rewrite {
                    before: Some(s.rec),
                    after,
                    version: s.version,
                    detail: format!(
                        "the engine has the task {status}; taskpulse's state synced to it"
                    ),
                });
            }
            Ok(found)
        }
        .boxed()
    }
}

/// `wait_overdue` with the engine: repair by asking it to re-run the workflow's decider, at
/// most once per workflow per `--wait-grace`.
pub struct EngineWaitOverdue {
    pub client: Arc<EngineClient>,
    decided: Arc<DashMap<String, Instant>>,
}

impl Rule for EngineWaitOverdue {
    fn name(&self) -> &'static str {
        "wait_overdue"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let grace = ctx.settings.wait_grace;
            self.decided.retain(|_, at| at.elapsed() < grace);
            let mut found = WaitOverdue.check(ctx).await?;
            let mut planned = std::collections::HashSet::new();
            for v in &mut found {
                if let Some(at) = self.decided.get(&v.workflow_id) {
                    v.evidence["decideRequestedSecondsAgo"] = json!(at.elapsed().as_secs_f64());
                    continue; // asked within the grace period: give the engine time
                }
                if !planned.insert(v.workflow_id.clone()) {
                    continue; // one decide per workflow per pass
                }
                v.repair = Some(RepairPlan::Engine {
                    action: Arc::new(Decide {
                        client: self.client.clone(),
                        workflow_id: v.workflow_id.clone(),
                        decided: self.decided.clone(),
                    }),
                    detail: format!(
                        "asked the engine to re-run the decider of workflow {}",
                        v.workflow_id
                    ),
                });
            }
            Ok(found)
        }
        .boxed()
    }
}
