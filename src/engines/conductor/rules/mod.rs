//! Checker rules that know what the engine holds: read from its store when taskpulse follows
//! one (`--conductor-db`, `--conductor-redis`), else asked of its REST API (`--conductor-url`),
//! through a [`Lookup`]. They replace the engine-less `successor_finished` and `wait_overdue`
//! and add `lost_terminal_update` ([`lost_terminal`]). Every repair they plan is carried out
//! by the engine's REST API (or is a rewrite of taskpulse's own row), audited and counted by
//! the checker's executor, and is idempotent on the engine's side.

mod lost_terminal;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::Method;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;

use super::client::{urlencode, EngineClient};
use super::lookup::{EngineTask, Lookup};
use super::proxy::Proxy;
use crate::checker::{
    Context, EngineAction, RepairPlan, Rule, SuccessorFinished, Violation, WaitOverdue,
};
use crate::error::{Error, Result};

pub use lost_terminal::{LostTerminalUpdate, VERIFY_AFTER};

/// The rules that know the engine's side. `lookup`: its store, or its REST API; `client`: the
/// REST API, which carries out repairs (`None`: report only, except rewrites of taskpulse's
/// own rows); `proxy`: the terminal updates it forwarded.
pub fn engine_rules(
    lookup: Option<Arc<Lookup>>,
    client: Option<Arc<EngineClient>>,
    proxy: Option<Arc<Proxy>>,
) -> Vec<Box<dyn Rule>> {
    let mut rules: Vec<Box<dyn Rule>> = Vec::new();
    if let Some(lookup) = &lookup {
        rules.push(Box::new(EngineSuccessorFinished {
            lookup: lookup.clone(),
        }));
    }
    if let Some(client) = &client {
        rules.push(Box::new(EngineWaitOverdue {
            client: client.clone(),
            decided: Arc::new(DashMap::new()),
        }));
    }
    if let Some(lookup) = lookup {
        if lookup.is_store() || proxy.is_some() {
            rules.push(Box::new(LostTerminalUpdate::new(lookup, proxy)));
        }
    }
    rules
}

/// Posts a forwarded TaskResult again.
#[derive(Debug)]
struct Repost {
    client: Arc<EngineClient>,
    body: Bytes,
}

impl EngineAction for Repost {
    fn run(&self) -> BoxFuture<'_, crate::error::Result<()>> {
        async move {
            self.client
                .call(Method::POST, "/api/tasks", self.body.clone())
                .await
                .map_err(|e| Error::EngineCall(Box::new(e)))
        }
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
    fn run(&self) -> BoxFuture<'_, crate::error::Result<()>> {
        async move {
            let path = format!("/api/workflow/decide/{}", urlencode(&self.workflow_id));
            self.client
                .call(Method::PUT, &path, Bytes::new())
                .await
                .map_err(|e| Error::EngineCall(Box::new(e)))?;
            self.decided
                .insert(self.workflow_id.clone(), Instant::now());
            Ok(())
        }
        .boxed()
    }
}

/// `successor_finished` with the engine: look the tasks up (in one batch from a store). If the
/// engine has one terminal, taskpulse missed the update and syncs its state to the engine's;
/// otherwise report only.
pub struct EngineSuccessorFinished {
    pub lookup: Arc<Lookup>,
}

impl Rule for EngineSuccessorFinished {
    fn name(&self) -> &'static str {
        "successor_finished"
    }

    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Vec<Violation>>> {
        async move {
            let mut found = SuccessorFinished.check(ctx).await?;
            let asked: Vec<String> = found
                .iter()
                .take(self.lookup.per_pass())
                .map(|v| v.task_id.clone())
                .collect();
            let engine = match self.lookup.tasks(&asked).await {
                Ok(tasks) => tasks,
                Err(e) => {
                    for v in found.iter_mut().take(asked.len()) {
                        v.evidence["engine"] =
                            json!({"error": e.to_string(), "via": self.lookup.via()});
                    }
                    return Ok(found);
                }
            };
            for v in found.iter_mut().take(asked.len()) {
                let t = engine.get(&v.task_id);
                v.evidence["engine"] =
                    json!({"status": t.and_then(|t| t.status), "via": self.lookup.via()});
                let Some(EngineTask {
                    status: Some(status),
                    update_time,
                    ..
                }) = t.cloned()
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
