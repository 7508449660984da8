//! The consistency checker's rules, run in-process against a real app on both stores: each
//! rule's check, repair, conflict and dry-run paths, the per-run limit, and the audit trail.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use taskpulse::checker::CheckerMetrics;
use taskpulse::checker::{
    default_rules, CheckSettings, Checker, Context, LeaseExpired, PassReport, Rule,
    StoreDivergence, Violation,
};
use taskpulse::store::StoreMetrics;

use crate::helpers::{exec, Backend, TestApp, TestDb};
use crate::store_test;

fn settings(repair: bool) -> CheckSettings {
    CheckSettings {
        repair,
        max_repairs_per_run: 1000,
        lease_grace: Duration::from_secs(5),
        wait_grace: Duration::from_secs(30),
        retention: Duration::ZERO,
    }
}

/// The app with the background checker off, so passes happen only when a test runs one.
async fn app(db: &TestDb) -> TestApp {
    TestApp::spawn_with(db, |s| s.check_loop.check_interval = Duration::ZERO).await
}

/// Runs one pass as if `ahead` had passed, with the app's memory.
async fn pass(
    app: &TestApp,
    rules: Vec<Box<dyn Rule>>,
    cs: CheckSettings,
    ahead: Duration,
) -> (PassReport, CheckerMetrics) {
    let metrics = CheckerMetrics::unregistered();
    let checker = Checker::new(rules, metrics.clone(), StoreMetrics::unregistered());
    let ctx = Context {
        store: app.store.clone(),
        tracker: Some(app.tracker.clone()),
        now: taskpulse::now_ms() + ahead.as_millis() as i64,
        settings: cs,
    };
    let report = checker.run_pass(&ctx).await.expect("pass runs");
    (report, metrics)
}

/// One pass of one rule, now.
async fn pass_of(
    app: &TestApp,
    rule: impl Rule + 'static,
    repair: bool,
) -> (PassReport, CheckerMetrics) {
    pass(app, vec![Box::new(rule)], settings(repair), Duration::ZERO).await
}

fn only<'a>(report: &'a PassReport, rule: &str) -> Vec<&'a Violation> {
    report
        .violations
        .iter()
        .filter(|v| v.rule == rule)
        .collect()
}

fn repairs_counted(m: &CheckerMetrics, rule: &str, outcome: &str) -> u64 {
    m.repairs_total.with_label_values(&[rule, outcome]).get()
}

async fn running(app: &TestApp, id: &str, extra: serde_json::Value) {
    let mut u = json!({"taskId": id, "workflowId": format!("wf-{id}"), "taskType": "encode",
                       "workflowType": "media", "status": "IN_PROGRESS", "progressPercent": 10});
    for (k, v) in extra.as_object().unwrap() {
        u[k] = v.clone();
    }
    assert_eq!(app.ingest(&u).await["accepted"], 1);
}

/// A silent task past its response timeout is found; dry-run leaves it; repair marks it
/// TIMED_OUT (store and memory) with an audit row saying the status was inferred; a second
/// pass finds nothing.
async fn lease_expired_check_dry_run_repair_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    running(&app, "silent", json!({"responseTimeoutSeconds": 30})).await;
    running(&app, "fresh", json!({"responseTimeoutSeconds": 3600})).await;
    app.settle().await;

    let (r, _) = pass(
        &app,
        default_rules(),
        settings(true),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        only(&r, "lease_expired").is_empty(),
        "inside timeout + grace: {:?}",
        r.violations
    );

    let later = Duration::from_secs(40);
    let (r, m) = pass(&app, default_rules(), settings(false), later).await;
    let found = only(&r, "lease_expired");
    assert_eq!(found.len(), 1, "{:?}", r.violations);
    assert_eq!(found[0].task_id, "silent");
    assert_eq!(found[0].evidence["inferred"], true);
    assert_eq!(found[0].evidence["limit"], "responseTimeoutSeconds");
    assert_eq!(r.skipped, 1);
    assert!(r.repairs.is_empty());
    assert_eq!(repairs_counted(&m, "lease_expired", "skipped"), 1);
    assert_eq!(m.violations.with_label_values(&["lease_expired"]).get(), 1);
    assert_eq!(
        app.stored("silent").await.unwrap().status.as_str(),
        "IN_PROGRESS"
    );

    let (r, m) = pass(&app, default_rules(), settings(true), later).await;
    assert_eq!(r.repairs.len(), 1);
    let audit = &r.repairs[0];
    assert_eq!(
        (
            audit.rule.as_str(),
            audit.task_id.as_str(),
            audit.outcome.as_str()
        ),
        ("lease_expired", "silent", "repaired")
    );
    assert_eq!(audit.before.as_ref().unwrap()["status"], "IN_PROGRESS");
    assert_eq!(audit.after.as_ref().unwrap()["status"], "TIMED_OUT");
    assert!(audit.detail.contains("inferred"), "{}", audit.detail);
    assert_eq!(repairs_counted(&m, "lease_expired", "repaired"), 1);
    assert_eq!(
        app.stored("silent").await.unwrap().status.as_str(),
        "TIMED_OUT"
    );
    assert_eq!(app.task("silent").await["status"], "TIMED_OUT");
    assert_eq!(
        app.stored("fresh").await.unwrap().status.as_str(),
        "IN_PROGRESS"
    );

    // idempotent: nothing left to do, and the late worker update is now rejected as terminal
    let (r, _) = pass(&app, default_rules(), settings(true), later).await;
    assert!(only(&r, "lease_expired").is_empty());
    let late = app
        .ingest(&json!({"taskId": "silent", "workflowId": "wf-silent", "status": "IN_PROGRESS", "progressPercent": 20}))
        .await;
    assert_eq!(late["rejected"][0]["reason"], "terminal");

    // the audit trail through the API, newest first
    let repairs: serde_json::Value = app
        .get("/api/v1/repairs?limit=10")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(repairs["count"], 1, "{repairs}");
    assert_eq!(repairs["repairs"][0]["taskId"], "silent");
    assert_eq!(repairs["repairs"][0]["evidence"]["inferred"], true);
    assert_eq!(app.get("/api/v1/repairs?limit=0").await.status(), 400);
}
store_test!(lease_expired_check_dry_run_repair_idempotent);

/// Past the deadline (startTime + timeoutSeconds) counts too; WAIT tasks and SCHEDULED tasks
/// (requeued, not leased) are not judged by response timeouts.
async fn lease_expired_deadline_and_exemptions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    let start = taskpulse::now_ms() - 600_000;
    running(
        &app,
        "late",
        json!({"startTime": start, "timeoutSeconds": 300}),
    )
    .await;
    running(&app, "waiting", json!({"taskType": "WAIT", "responseTimeoutSeconds": 1, "waitUntil": taskpulse::now_ms() + 3_600_000})).await;
    app.ingest(&json!({"taskId": "queued", "workflowId": "wf", "taskType": "encode", "status": "SCHEDULED", "responseTimeoutSeconds": 1}))
        .await;
    app.settle().await;
    let (r, _) = pass(
        &app,
        default_rules(),
        settings(false),
        Duration::from_secs(60),
    )
    .await;
    let ids: Vec<&str> = only(&r, "lease_expired")
        .iter()
        .map(|v| v.task_id.as_str())
        .collect();
    assert_eq!(ids, ["late"], "{:?}", r.violations);
    assert_eq!(
        only(&r, "lease_expired")[0].evidence["limit"],
        "timeoutSeconds"
    );
}
store_test!(lease_expired_deadline_and_exemptions);

/// Another writer changes the row between the check and the repair: the version guard turns the
/// repair into an audited `conflict` and the newer row stays.
struct WriteBetweenCheckAndRepair;

impl Rule for WriteBetweenCheckAndRepair {
    fn name(&self) -> &'static str {
        "lease_expired"
    }
    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, taskpulse::Result<Vec<Violation>>> {
        async move {
            let found = LeaseExpired.check(ctx).await?;
            exec(
                &ctx.store,
                "UPDATE tasks SET version = version + 1, progress = 77 WHERE task_id = 'raced'",
            )
            .await;
            Ok(found)
        }
        .boxed()
    }
}

async fn a_repair_that_loses_the_race_is_a_conflict(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    running(&app, "raced", json!({"responseTimeoutSeconds": 1})).await;
    app.settle().await;
    let (r, m) = pass(
        &app,
        vec![Box::new(WriteBetweenCheckAndRepair)],
        settings(true),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.repairs.len(), 1);
    assert_eq!(r.repairs[0].outcome, "conflict");
    assert_eq!(repairs_counted(&m, "lease_expired", "conflict"), 1);
    let stored = app.stored("raced").await.unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.progress),
        ("IN_PROGRESS", Some(77.0))
    );
    let audit = app.store.list_repairs(10, None).await.unwrap();
    assert_eq!(audit[0].outcome, "conflict");
    // one task's lines, as the status page's task view asks for them
    let (of_task, of_other) = (
        app.store.list_repairs(10, Some("raced")).await.unwrap(),
        app.store.list_repairs(10, Some("another")).await.unwrap(),
    );
    assert_eq!(of_task, audit);
    assert!(of_other.is_empty());
    let api: serde_json::Value = app
        .get("/api/v1/repairs?taskId=raced")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(api["count"], 1, "{api}");
}
store_test!(a_repair_that_loses_the_race_is_a_conflict);

/// A pass repairs at most --max-repairs-per-run; the rest are skipped and counted.
async fn repairs_per_run_are_capped(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    for i in 0..5 {
        running(
            &app,
            &format!("cap-{i}"),
            json!({"responseTimeoutSeconds": 1}),
        )
        .await;
    }
    app.settle().await;
    let mut cs = settings(true);
    cs.max_repairs_per_run = 2;
    let (r, m) = pass(&app, default_rules(), cs, Duration::from_secs(60)).await;
    assert_eq!(only(&r, "lease_expired").len(), 5);
    assert_eq!(r.repairs.len(), 2);
    assert_eq!(r.skipped, 3);
    assert_eq!(repairs_counted(&m, "lease_expired", "skipped"), 3);
}
store_test!(repairs_per_run_are_capped);

/// conductor-oss#176: a task still IN_PROGRESS while its successor (higher seq, same workflow
/// and iteration, scheduled after the task's last update) has finished. Reported with both
/// tasks as evidence, never repaired. Parallel fork branches and other iterations are not.
async fn successor_finished_is_reported_not_repaired(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    let task = |id: &str, seq: i32, iteration: i32, status: &str| {
        json!({"taskId": id, "workflowId": "wf-176", "taskType": "upload", "status": status,
               "seq": seq, "iteration": iteration})
    };
    // a fork branch: started before `start` stopped reporting, finished early
    app.ingest(&task("fork_branch", 3, 135, "IN_PROGRESS"))
        .await;
    app.ingest(&task("Upload_item_start__135", 2, 135, "IN_PROGRESS"))
        .await;
    app.ingest(&task("fork_branch", 3, 135, "COMPLETED")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // the completion of Upload_item_start__135 is lost; its successor runs and completes
    app.ingest(&task("Upload__135", 4, 135, "IN_PROGRESS"))
        .await;
    app.ingest(&task("Upload__135", 4, 135, "COMPLETED")).await;
    // another iteration's finished task is no evidence
    app.ingest(&task("Upload_item_start__136", 2, 136, "IN_PROGRESS"))
        .await;
    app.settle().await;

    let (r, m) = pass(&app, default_rules(), settings(true), Duration::ZERO).await;
    let found = only(&r, "successor_finished");
    assert_eq!(found.len(), 1, "{:?}", r.violations);
    assert_eq!(found[0].task_id, "Upload_item_start__135");
    assert_eq!(found[0].evidence["task"]["status"], "IN_PROGRESS");
    assert_eq!(found[0].evidence["successor"]["taskId"], "Upload__135");
    assert_eq!(found[0].evidence["successor"]["status"], "COMPLETED");
    assert!(found[0].repair.is_none());
    assert!(r.repairs.is_empty());
    assert_eq!(repairs_counted(&m, "successor_finished", "repaired"), 0);
    assert_eq!(
        m.violations
            .with_label_values(&["successor_finished"])
            .get(),
        1
    );
    assert_eq!(
        app.stored("Upload_item_start__135")
            .await
            .unwrap()
            .status
            .as_str(),
        "IN_PROGRESS"
    );
}
store_test!(successor_finished_is_reported_not_repaired);

/// A WAIT task overdue by more than the grace is reported, not repaired.
async fn wait_overdue_is_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    let now = taskpulse::now_ms();
    for (id, wake) in [
        ("overdue", now - 120_000),
        ("in_grace", now - 10_000),
        ("future", now + 60_000),
    ] {
        app.ingest(&json!({"taskId": id, "workflowId": "wf", "taskType": "WAIT", "status": "IN_PROGRESS", "waitUntil": wake}))
            .await;
    }
    app.ingest(&json!({"taskId": "woke", "workflowId": "wf", "taskType": "WAIT", "status": "IN_PROGRESS", "waitUntil": now - 120_000}))
        .await;
    app.ingest(&json!({"taskId": "woke", "workflowId": "wf", "status": "COMPLETED"}))
        .await;
    app.settle().await;
    let (r, _) = pass(&app, default_rules(), settings(true), Duration::ZERO).await;
    let found = only(&r, "wait_overdue");
    assert_eq!(
        found.iter().map(|v| v.task_id.as_str()).collect::<Vec<_>>(),
        ["overdue"]
    );
    let overdue = found[0].evidence["overdueSeconds"].as_f64().unwrap();
    assert!((115.0..130.0).contains(&overdue), "{overdue}");
    assert!(found[0].repair.is_none() && r.repairs.is_empty());
}
store_test!(wait_overdue_is_reported);

/// Memory and store disagree: the newer side (by updateTime; terminal beats non-terminal) wins.
async fn store_divergence_repairs_toward_the_newer_side(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    for id in ["mem-newer", "store-newer", "lost-row", "busy"] {
        running(&app, id, json!({"updateTime": 1000})).await;
    }
    // a coalesced value waiting for its write is not a divergence
    app.ingest(&json!({"taskId": "busy", "workflowId": "wf-busy", "status": "IN_PROGRESS", "progressPercent": 60, "updateTime": 1001}))
        .await;
    app.settle().await;
    exec(&app.store, "UPDATE tasks SET progress = 3, update_time = 900, version = version + 1 WHERE task_id = 'mem-newer'").await;
    exec(&app.store, "UPDATE tasks SET status = 'COMPLETED', terminal_at = 5, update_time = 2000, version = version + 1 WHERE task_id = 'store-newer'").await;
    exec(&app.store, "DELETE FROM tasks WHERE task_id = 'lost-row'").await;
    // give the pass's "updated since" cut-off a clear gap
    tokio::time::sleep(Duration::from_millis(5)).await;

    let (r, m) = pass(&app, default_rules(), settings(false), Duration::ZERO).await;
    let mut ids: Vec<&str> = only(&r, "store_divergence")
        .iter()
        .map(|v| v.task_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["lost-row", "mem-newer", "store-newer"],
        "{:?}",
        r.violations
    );
    assert_eq!(repairs_counted(&m, "store_divergence", "skipped"), 3);
    assert_eq!(
        app.stored("mem-newer").await.unwrap().progress,
        Some(3.0),
        "dry run changed nothing"
    );

    let (r, m) = pass(&app, default_rules(), settings(true), Duration::ZERO).await;
    assert_eq!(
        repairs_counted(&m, "store_divergence", "repaired"),
        3,
        "{:?}",
        r.repairs
    );
    let fixed = app.stored("mem-newer").await.unwrap();
    assert_eq!(
        (fixed.progress, fixed.update_time),
        (Some(10.0), Some(1000))
    );
    assert!(
        app.stored("lost-row").await.is_some(),
        "the lost row is written back"
    );
    assert_eq!(
        app.task("store-newer").await["status"],
        "COMPLETED",
        "memory follows the store"
    );
    let audit = r
        .repairs
        .iter()
        .find(|a| a.task_id == "store-newer")
        .unwrap();
    assert!(
        audit.detail.contains("memory was reloaded"),
        "{}",
        audit.detail
    );

    let (r, _) = pass(&app, default_rules(), settings(true), Duration::ZERO).await;
    assert!(
        only(&r, "store_divergence").is_empty(),
        "{:?}",
        r.violations
    );
}
store_test!(store_divergence_repairs_toward_the_newer_side);

/// The pass compares memory with the store a chunk of tasks at a time (so it never holds
/// every row at once): with every one of more tasks than two chunks hold diverging, each is
/// found once, none left out or compared twice.
async fn store_divergence_finds_every_chunk(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    let n = 2 * taskpulse::store::VERSIONED_LIST + 100;
    let all: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for ids in all.chunks(1000) {
        let body: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                json!({"taskId": id, "workflowId": "wf-chunks", "taskType": "encode",
                             "status": "IN_PROGRESS", "progressPercent": 10, "updateTime": 1000})
            })
            .collect();
        assert_eq!(app.ingest(&json!(body)).await["accepted"], ids.len());
    }
    app.settle().await;
    exec(&app.store, "UPDATE tasks SET progress = 3, update_time = 900, version = version + 1 WHERE workflow_id = 'wf-chunks'").await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let (r, _) = pass_of(&app, StoreDivergence, false).await;
    let mut found: Vec<String> = only(&r, "store_divergence")
        .iter()
        .map(|v| v.task_id.clone())
        .collect();
    found.sort();
    let mut all = all;
    all.sort();
    assert_eq!(found, all, "every task once");
}
store_test!(store_divergence_finds_every_chunk);

/// Updates that land while a pass reads the store are no divergence: the store then holds a
/// write newer than the pass's snapshot of memory, and memory holds it too. (Under load the
/// pass used to report and "repair" thousands of such tasks per run.)
async fn store_divergence_ignores_updates_racing_the_pass(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop) = (app.url("/api/v1/updates"), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // 200 tasks start, then the same 200 finish: each a write racing the pass
                for status in ["IN_PROGRESS", "COMPLETED"] {
                    let batch: Vec<_> = (n..n + 200)
                        .map(|i| {
                            json!({"taskId": format!("race-{i}"), "workflowId": "wf-race",
                                        "taskType": "race", "status": status})
                        })
                        .collect();
                    let r = http.post(&url).json(&batch).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                }
                n += 200;
            }
            n
        })
    };
    let mut found = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let (r, _) = pass_of(&app, StoreDivergence, false).await;
        found.extend(r.violations.into_iter().map(|v| v.evidence));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tasks = load.await.unwrap();
    assert!(tasks >= 2000, "the load ran: {tasks} tasks");
    assert!(
        found.is_empty(),
        "{} false divergences over {tasks} tasks, first: {:#}",
        found.len(),
        found[0]
    );
}
store_test!(store_divergence_ignores_updates_racing_the_pass);

/// The serving process runs the checker by itself every --check-interval and exports it.
async fn serve_runs_the_checker_periodically(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.check_loop.check_interval = Duration::from_millis(300);
        s.checker.lease_grace = Duration::ZERO;
        s.throttle.progress_min_interval = Duration::from_millis(100);
    })
    .await;
    running(&app, "expires", json!({"responseTimeoutSeconds": 1})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        if app.stored("expires").await.unwrap().status.as_str() == "TIMED_OUT" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the periodic checker never repaired the expired task"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scrape = app.scrape().await;
    let v =
        |name: &str, labels: &[(&str, &str)]| crate::helpers::metric_value(&scrape, name, labels);
    assert_eq!(v("taskpulse_checker_leader", &[]), Some(1.0));
    assert!(v("taskpulse_checker_runs_total", &[("outcome", "ok")]).unwrap() >= 1.0);
    assert_eq!(
        v(
            "taskpulse_checker_repairs_total",
            &[("rule", "lease_expired"), ("outcome", "repaired")]
        ),
        Some(1.0)
    );
    assert!(v("taskpulse_checker_last_run_timestamp_seconds", &[]).unwrap() > 1.7e9);
    assert_eq!(
        v(
            "taskpulse_checker_violations",
            &[("rule", "successor_finished")]
        ),
        Some(0.0)
    );
    assert_eq!(
        v("taskpulse_store_writes_total", &[("kind", "repair")]),
        Some(1.0)
    );
}
store_test!(serve_runs_the_checker_periodically);

/// store_divergence's rewrite is version-guarded too: a write between its check and its repair
/// makes it a conflict, and the newer row stays.
struct DivergenceRaced;

impl Rule for DivergenceRaced {
    fn name(&self) -> &'static str {
        "store_divergence"
    }
    fn check<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, taskpulse::Result<Vec<Violation>>> {
        async move {
            let found = taskpulse::checker::StoreDivergence.check(ctx).await?;
            exec(
                &ctx.store,
                "UPDATE tasks SET version = version + 1, progress = 55 WHERE task_id = 'div'",
            )
            .await;
            Ok(found)
        }
        .boxed()
    }
}

async fn a_divergence_repair_that_loses_the_race_is_a_conflict(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app(&db).await;
    running(&app, "div", json!({"updateTime": 1000})).await;
    app.settle().await;
    exec(
        &app.store,
        "UPDATE tasks SET progress = 3, update_time = 900, version = version + 1 WHERE task_id = 'div'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (r, m) = pass_of(&app, DivergenceRaced, true).await;
    assert_eq!(r.repairs.len(), 1, "{:?}", r.violations);
    assert_eq!(r.repairs[0].outcome, "conflict");
    assert_eq!(repairs_counted(&m, "store_divergence", "conflict"), 1);
    assert_eq!(app.stored("div").await.unwrap().progress, Some(55.0));
}
store_test!(a_divergence_repair_that_loses_the_race_is_a_conflict);
