//! The consistency checker: finds illegal states in the store and repairs them.
//!
//! A pass runs every named [`Rule`]. A rule's check returns [`Violation`]s, each with its
//! evidence and, where a safe repair exists, a [`RepairPlan`]. One executor applies the plans,
//! so every repair is done the same way:
//!
//! - guarded by optimistic locking: the row is written only if its `version` is still the one
//!   the check read (another replica or a fresh update in between makes it a `conflict`);
//! - idempotent: a repaired row no longer matches the rule, and a replayed plan conflicts;
//! - audited: the audit row (rule, task, before, after, evidence, time) is written in the same
//!   transaction as the repair;
//! - counted in `taskpulse_checker_repairs_total{rule,outcome}`.
//!
//! With repairs off (`--repair=false`, or `taskpulse check` without `--repair`) plans are
//! reported and counted as `skipped`; a pass applies at most `--max-repairs-per-run`.

mod metrics;
mod rules;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::leader::Leadership;
use crate::model::{RepairRecord, TaskRecord};
use crate::pipeline::Tracker;
use crate::settings::{CheckerSettings, ThrottleSettings, WaitSettings};
use crate::store::{Store, StoreMetrics, WriteKind};

pub use metrics::CheckerMetrics;
pub use rules::{default_rules, LeaseExpired, StoreDivergence, SuccessorFinished, WaitOverdue};

/// The rules of a pass: the core's, where an engine brings a rule of the same name its own in
/// that place (one that can ask the engine), and then the engine's other rules.
pub fn compose(mut core: Vec<Box<dyn Rule>>, engine: Vec<Box<dyn Rule>>) -> Vec<Box<dyn Rule>> {
    for rule in engine {
        match core.iter().position(|r| r.name() == rule.name()) {
            Some(i) => core[i] = rule,
            None => core.push(rule),
        }
    }
    core
}

/// What a rule found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub rule: &'static str,
    pub task_id: String,
    pub workflow_id: String,
    /// Why this is a violation: the facts the rule saw.
    pub evidence: serde_json::Value,
    /// The repair, when there is a safe one.
    #[serde(skip)]
    pub repair: Option<RepairPlan>,
}

/// How to repair a violation.
#[derive(Clone, Debug)]
pub enum RepairPlan {
    /// Write `after` over the stored row if its version is still `version` (0: only if the
    /// store has no row), then make memory follow.
    Rewrite {
        before: Option<TaskRecord>,
        after: TaskRecord,
        version: i64,
        detail: String,
    },
    /// The store is right: memory follows it.
    ReloadMemory {
        before: TaskRecord,
        stored: TaskRecord,
        detail: String,
    },
    /// Ask the engine to put it right (post a lost update again, re-run its decider).
    Engine {
        action: Arc<dyn EngineAction>,
        detail: String,
    },
}

/// A repair the engine carries out. Must be idempotent: the engine ignores a repeat.
pub trait EngineAction: Send + Sync + std::fmt::Debug {
    fn run(&self) -> futures_util::future::BoxFuture<'_, Result<()>>;
}

/// Settings a pass depends on.
#[derive(Clone, Debug)]
pub struct CheckSettings {
    pub repair: bool,
    pub max_repairs_per_run: usize,
    /// Added to response timeouts and deadlines before a silent task counts as expired.
    pub lease_grace: Duration,
    pub wait_grace: Duration,
    /// `--retention`: finished tasks the store deleted on purpose after this long (zero: none).
    pub retention: Duration,
}

impl CheckSettings {
    pub fn new(
        checker: &CheckerSettings,
        throttle: &ThrottleSettings,
        wait: &WaitSettings,
        repair: bool,
    ) -> CheckSettings {
        CheckSettings {
            repair,
            max_repairs_per_run: checker.max_repairs_per_run,
            // A silent task's last write may lag its last update by one throttle interval.
            lease_grace: checker.lease_grace + throttle.progress_min_interval,
            wait_grace: wait.wait_grace,
            retention: Duration::ZERO,
        }
    }

    /// Finished tasks are deleted from the store `retention` after they finished.
    pub fn with_retention(mut self, retention: Duration) -> CheckSettings {
        self.retention = retention;
        self
    }
}

/// The `outcome` label values of `taskpulse_checker_repairs_total` (and of the audit trail).
pub const REPAIR_OUTCOMES: [&str; 4] = ["repaired", "conflict", "failed", "skipped"];

/// What a rule sees.
pub struct Context {
    pub store: Store,
    /// The serving process's memory; `None` in `taskpulse check`.
    pub tracker: Option<Arc<Tracker>>,
    pub now: i64,
    pub settings: CheckSettings,
}

/// A named rule.
pub trait Rule: Send + Sync {
    fn name(&self) -> &'static str;
    /// Finds violations, with evidence and repair plans.
    fn check<'a>(
        &'a self,
        ctx: &'a Context,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Violation>>>;
}

/// One pass's findings.
#[derive(Debug, Default, Serialize)]
pub struct PassReport {
    pub violations: Vec<Violation>,
    /// Audit rows written by this pass.
    pub repairs: Vec<RepairRecord>,
    /// Plans not applied (repairs off, or past the per-run limit).
    pub skipped: usize,
}

/// The rules and what they report to.
pub struct Checker {
    rules: Vec<Box<dyn Rule>>,
    metrics: CheckerMetrics,
    store_metrics: StoreMetrics,
    /// Count passes in `checker_runs_total` (false for side loops such as the proxy's
    /// verification of forwarded terminal updates).
    count_runs: bool,
}

impl Checker {
    pub fn new(
        rules: Vec<Box<dyn Rule>>,
        metrics: CheckerMetrics,
        store_metrics: StoreMetrics,
    ) -> Checker {
        // Every rule's series exist from the first scrape, so dashboards show 0 rather than
        // "No data" and increase() sees the first repair.
        for r in &rules {
            metrics.violations.with_label_values(&[r.name()]).set(0);
            for outcome in REPAIR_OUTCOMES {
                metrics
                    .repairs_total
                    .with_label_values(&[r.name(), outcome]);
            }
        }
        Checker {
            rules,
            metrics,
            store_metrics,
            count_runs: true,
        }
    }

    /// A checker whose passes are not counted as checker runs.
    pub fn side_loop(
        rules: Vec<Box<dyn Rule>>,
        metrics: CheckerMetrics,
        store_metrics: StoreMetrics,
    ) -> Checker {
        Checker {
            count_runs: false,
            ..Checker::new(rules, metrics, store_metrics)
        }
    }

    /// Drops the violation gauges (a replica that doesn't lead has no current findings).
    pub fn forget_findings(&self) {
        self.metrics.violations.reset();
    }

    /// Runs every rule once and applies (or skips) their repairs.
    #[tracing::instrument(name = "checker_pass", skip_all)]
    pub async fn run_pass(&self, ctx: &Context) -> Result<PassReport> {
        let result = self.pass(ctx).await;
        if !self.count_runs {
            return result;
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.runs_total.with_label_values(&[outcome]).inc();
        self.metrics
            .last_run_timestamp_seconds
            .set(crate::now_ms() as f64 / 1000.0);
        result
    }

    async fn pass(&self, ctx: &Context) -> Result<PassReport> {
        let mut report = PassReport::default();
        let mut budget = ctx.settings.max_repairs_per_run;
        for rule in &self.rules {
            let found = rule.check(ctx).await?;
            self.metrics
                .violations
                .with_label_values(&[rule.name()])
                .set(found.len() as i64);
            for v in &found {
                let Some(plan) = &v.repair else { continue };
                if !ctx.settings.repair || budget == 0 {
                    report.skipped += 1;
                    self.count(v.rule, "skipped");
                    continue;
                }
                budget -= 1;
                let audit = self.apply(ctx, v, plan).await;
                self.count(v.rule, &audit.outcome);
                report.repairs.push(audit);
            }
            report.violations.extend(found);
        }
        Ok(report)
    }

    fn count(&self, rule: &str, outcome: &str) {
        self.metrics
            .repairs_total
            .with_label_values(&[rule, outcome])
            .inc();
    }

    /// Applies one plan; never fails the pass (a failure is an audited outcome).
    async fn apply(&self, ctx: &Context, v: &Violation, plan: &RepairPlan) -> RepairRecord {
        let json = |r: &TaskRecord| serde_json::to_value(r).unwrap_or_default();
        let mut audit = RepairRecord {
            id: None,
            at: crate::now_ms(),
            rule: v.rule.to_string(),
            task_id: v.task_id.clone(),
            workflow_id: v.workflow_id.clone(),
            outcome: String::new(),
            before: None,
            after: None,
            evidence: v.evidence.clone(),
            detail: String::new(),
        };
        match plan {
            RepairPlan::Rewrite {
                before,
                after,
                version,
                detail,
            } => {
                audit.before = before.as_ref().map(json);
                audit.after = Some(json(after));
                audit.detail = detail.clone();
                match ctx.store.apply_repair(after, *version, &mut audit).await {
                    Ok(true) => {
                        self.store_metrics.written(WriteKind::Repair);
                        if let Some(t) = &ctx.tracker {
                            t.reload(after.clone());
                        }
                    }
                    Ok(false) => {
                        tracing::info!(rule = v.rule, task_id = %v.task_id, "repair lost to a newer write; the next pass looks again");
                    }
                    Err(e) => {
                        audit.outcome = "failed".into();
                        audit.detail = format!("{detail}; failed: {e}");
                        self.audit_failure(ctx, &audit).await;
                    }
                }
            }
            RepairPlan::Engine { action, detail } => {
                audit.detail = detail.clone();
                match action.run().await {
                    Ok(()) => audit.outcome = "repaired".into(),
                    Err(e) => {
                        audit.outcome = "failed".into();
                        audit.detail = format!("{detail}; the engine refused: {e}");
                    }
                }
                if let Err(e) = ctx.store.record_repair(&audit).await {
                    tracing::warn!(error = %e, "could not write the audit row of an engine repair");
                }
            }
            RepairPlan::ReloadMemory {
                before,
                stored,
                detail,
            } => {
                audit.before = Some(json(before));
                audit.after = Some(json(stored));
                audit.detail = detail.clone();
                audit.outcome = "repaired".into();
                if let Some(t) = &ctx.tracker {
                    t.reload(stored.clone());
                }
                if let Err(e) = ctx.store.record_repair(&audit).await {
                    tracing::warn!(error = %e, "could not write the audit row of a memory reload");
                }
            }
        }
        audit
    }

    async fn audit_failure(&self, ctx: &Context, audit: &RepairRecord) {
        if let Err(e) = ctx.store.record_repair(audit).await {
            tracing::warn!(error = %e, rule = %audit.rule, task_id = %audit.task_id, "repair failed and could not be audited");
        }
    }
}

/// Runs a pass every `interval` (while this replica leads, when `leadership` is given) until
/// `stop` is cancelled; a pass under way is finished first.
pub async fn run_loop(
    checker: Checker,
    mut ctx: Context,
    leadership: Option<Leadership>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if leadership.as_ref().is_some_and(|l| !l.is_leader()) {
            // Only the leader's findings are current; a follower exports none.
            checker.forget_findings();
            continue;
        }
        ctx.now = crate::now_ms();
        match checker.run_pass(&ctx).await {
            Ok(report) if report.violations.is_empty() => tracing::debug!("checker: clean"),
            Ok(report) => tracing::warn!(
                violations = report.violations.len(),
                repairs = report.repairs.len(),
                skipped = report.skipped,
                "checker found violations"
            ),
            Err(e) => tracing::warn!(error = %e, "checker pass failed"),
        }
    }
}

impl PassReport {
    /// The findings as lines for a terminal.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for v in &self.violations {
            let outcome = match (
                &v.repair,
                self.repairs
                    .iter()
                    .find(|r| r.rule == v.rule && r.task_id == v.task_id),
            ) {
                (None, _) => "reported".to_string(),
                (Some(_), Some(audit)) => audit.outcome.clone(),
                (Some(_), None) => {
                    "skipped (no --repair, or past --max-repairs-per-run)".to_string()
                }
            };
            out.push_str(&format!(
                "{:<20} task {} (workflow {}): {}\n    evidence: {}\n",
                v.rule, v.task_id, v.workflow_id, outcome, v.evidence
            ));
        }
        let repaired = self
            .repairs
            .iter()
            .filter(|r| r.outcome == "repaired")
            .count();
        out.push_str(&format!(
            "{} violation(s); {} repaired, {} other repair outcome(s), {} repair(s) skipped\n",
            self.violations.len(),
            repaired,
            self.repairs.len() - repaired,
            self.skipped
        ));
        out
    }
}
