//! The checker against Conductor's own store (`src/engines/conductor/rules/lost_terminal.rs`,
//! `lookup.rs`): with `--conductor-db` or `--conductor-redis`, `lost_terminal_update` compares
//! every task taskpulse accepted as terminal with the engine's store (no REST round trip), and
//! `successor_finished` looks tasks up there. The stores are the real PostgreSQL and Redis of
//! `conductor_tail.rs` and `conductor_redis.rs`, written the way Conductor writes them.

use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::checker::{
    compose, default_rules, CheckSettings, Checker, CheckerMetrics, Context, PassReport, Violation,
};
use taskpulse::engines::conductor::{Conductor, ConductorSettings};
use taskpulse::engines::Engine;
use taskpulse::store::StoreMetrics;

use crate::conductor::{Emulator, TaskSpec};
use crate::conductor_db::Conductor as ConductorDb;
use crate::conductor_redis::{self as redis_store, Conductor as ConductorRedis};
use crate::conductor_tail::{eventually, task_model};
use crate::helpers::{Backend, TestApp, TestDb};

/// The grace after which a finished task is compared, and a little more.
pub(crate) const PAST_GRACE: i64 = 11_000;

pub(crate) fn checker(engine: &Conductor) -> Checker {
    Checker::new(
        compose(default_rules(), engine.rules()),
        CheckerMetrics::unregistered(),
        StoreMetrics::unregistered(),
    )
}

/// One pass as if it ran `ahead` ms from now (the rule's grace without the wait).
pub(crate) async fn pass_at(app: &TestApp, checker: &Checker, ahead: i64) -> PassReport {
    let ctx = Context {
        store: app.store.clone(),
        tracker: Some(app.tracker.clone()),
        now: taskpulse::now_ms() + ahead,
        settings: CheckSettings {
            repair: true,
            max_repairs_per_run: 100,
            lease_grace: Duration::from_secs(3600),
            wait_grace: Duration::from_secs(3600),
            retention: Duration::ZERO,
        },
    };
    checker.run_pass(&ctx).await.expect("pass runs")
}

pub(crate) fn lost(r: &PassReport) -> Vec<&Violation> {
    let mut v: Vec<&Violation> = r
        .violations
        .iter()
        .filter(|v| v.rule == "lost_terminal_update")
        .collect();
    v.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    v
}

pub(crate) fn ids(found: &[&Violation]) -> Vec<String> {
    found.iter().map(|v| v.task_id.clone()).collect()
}

/// A worker task as Conductor stores it: `worker` set, and `endTime` on a terminal write.
fn stored(id: &str, status: &str, at: i64, worker: &str) -> Value {
    let mut doc = task_model(id, "encode", status, at);
    doc["workerId"] = json!(worker);
    doc["startTime"] = json!(at - 1000);
    if !matches!(status, "SCHEDULED" | "IN_PROGRESS") {
        doc["endTime"] = json!(at);
    }
    doc
}

/// What a worker reports (through the webhook, the proxy or the API): the task finished.
fn finished(id: &str, status: &str, worker: &str) -> Value {
    json!({"taskId": id, "workflowId": format!("wf-{id}"), "taskType": "encode",
           "status": status, "workerId": worker})
}

fn has_rejected(view: &Value, to: &str) -> bool {
    view["history"].as_array().is_some_and(|h| {
        h.iter()
            .any(|l| l["outcome"] == "rejected" && l["to"] == to)
    })
}

async fn lost_terminal_update_against_the_task_table(backend: Backend) {
    let c = ConductorDb::new().await;
    let db = TestDb::new(backend).await;
    let url = c.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.db = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let t0 = c.now().await;
    // `lost`: the worker's completion reached taskpulse, the engine's store still has the task
    // IN_PROGRESS (conductor-oss#176). `agreed`: both sides COMPLETED. `flip`: both COMPLETED,
    // until a late IN_PROGRESS overwrites it in the engine.
    c.write_task(&stored("lost", "IN_PROGRESS", t0, "w-1"))
        .await;
    c.write_task(&stored("agreed", "COMPLETED", t0, "w-2"))
        .await;
    c.write_task(&stored("flip", "COMPLETED", t0, "w-3")).await;
    eventually(&app, "lost", "followed", |v| v["status"] == "IN_PROGRESS").await;
    eventually(&app, "flip", "followed", |v| v["status"] == "COMPLETED").await;
    eventually(&app, "agreed", "followed", |v| v["status"] == "COMPLETED").await;
    app.ingest(&finished("lost", "COMPLETED", "w-1")).await;
    app.settle().await;

    let engine = Conductor::new(
        &ConductorSettings {
            db: Some(c.url.clone()),
            ..Default::default()
        },
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let checker = checker(&engine);
    let before = c.checksum().await;

    // within the grace the engine may still be writing: nothing is compared yet
    let r = pass_at(&app, &checker, 0).await;
    assert!(lost(&r).is_empty(), "{:?}", r.violations);

    let r = pass_at(&app, &checker, PAST_GRACE).await;
    let found = lost(&r);
    assert_eq!(ids(&found), ["lost"], "{:?}", r.violations);
    let e = &found[0].evidence;
    assert_eq!(e["accepted"], "COMPLETED", "{e}");
    assert_eq!(e["engineStatus"], "IN_PROGRESS", "{e}");
    assert_eq!(e["engineWorkerId"], "w-1", "{e}");
    assert_eq!(e["engineUpdateTime"], t0, "{e}");
    assert_eq!(e["workerId"], "w-1", "{e}");
    assert_eq!(e["via"], "conductor_db", "{e}");
    assert_eq!(e["taskResultKept"], false, "{e}");
    assert_eq!(found[0].workflow_id, "wf-lost");
    assert!(found[0].repair.is_none(), "no TaskResult held: report only");
    assert!(r.repairs.is_empty(), "{:?}", r.repairs);

    // still diverging: reported again, though nothing new finished
    let r = pass_at(&app, &checker, PAST_GRACE + 1000).await;
    assert_eq!(ids(&lost(&r)), ["lost"], "{:?}", r.violations);

    // the late IN_PROGRESS lands in the engine after the two sides were compared and agreed:
    // written from a copy of the task read before it completed (conductor-oss#176), so with
    // that run's scheduledTime and startTime, no endTime, and updateTime now
    let mut late = stored("flip", "IN_PROGRESS", t0 + 5000, "w-3");
    late["scheduledTime"] = json!(t0);
    late["startTime"] = json!(t0 - 1000);
    c.write_task(&late).await;
    eventually(&app, "flip", "the tail's rejected update", |v| {
        has_rejected(v, "IN_PROGRESS")
    })
    .await;
    app.settle_throttled().await; // the rejection line is written at the task's next slot
    let r = pass_at(&app, &checker, PAST_GRACE + 2000).await;
    let found = lost(&r);
    assert_eq!(ids(&found), ["flip", "lost"], "{:?}", r.violations);
    assert_eq!(found[0].evidence["engineStatus"], "IN_PROGRESS");
    assert_eq!(found[0].evidence["engineUpdateTime"], t0 + 5000);

    // the engine puts `lost` right: no longer reported; `flip` still is
    c.write_task(&stored("lost", "COMPLETED", t0 + 6000, "w-1"))
        .await;
    let r = pass_at(&app, &checker, PAST_GRACE + 3000).await;
    assert_eq!(ids(&lost(&r)), ["flip"], "{:?}", r.violations);

    // a fresh `taskpulse check`-like run (no memory of earlier passes) finds `flip` by looking
    // back over the last hour
    let r = pass_at(&app, &self::checker(&engine), PAST_GRACE).await;
    assert_eq!(ids(&lost(&r)), ["flip"], "{:?}", r.violations);

    // the passes read the engine's store and never wrote to it
    let after_writes = c.checksum().await;
    assert_ne!(before, after_writes, "the test's own writes changed it");
    pass_at(&app, &checker, PAST_GRACE + 4000).await;
    assert_eq!(c.checksum().await, after_writes);
}
crate::store_test!(lost_terminal_update_against_the_task_table);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_terminal_update_and_successor_finished_against_redis() {
    let Some(mut c) = ConductorRedis::on(redis_store::REDIS, 12).await else {
        return;
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let url = c.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.redis = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let t0 = taskpulse::now_ms();
    c.write_task(&redis_store::task_model(
        "lost",
        "encode",
        "IN_PROGRESS",
        t0,
    ))
    .await;
    c.write_task(&redis_store::task_model(
        "agreed",
        "encode",
        "IN_PROGRESS",
        t0,
    ))
    .await;
    eventually(&app, "lost", "followed", |v| v["status"] == "IN_PROGRESS").await;
    eventually(&app, "agreed", "followed", |v| v["status"] == "IN_PROGRESS").await;
    let mut done = redis_store::task_model("agreed", "encode", "COMPLETED", t0 + 500);
    done["endTime"] = json!(t0 + 500);
    c.write_task(&done).await;
    eventually(&app, "agreed", "followed", |v| v["status"] == "COMPLETED").await;
    app.ingest(
        &json!({"taskId": "lost", "workflowId": "wf-lost", "taskType": "encode",
                       "status": "COMPLETED"}),
    )
    .await;
    // `behind`: taskpulse missed its completion (the engine has it COMPLETED) while its
    // successor finished: `successor_finished` syncs it from the store, not from REST
    let mut behind = redis_store::task_model("behind", "encode", "COMPLETED", t0);
    behind["endTime"] = json!(t0);
    behind["workflowInstanceId"] = json!("wf-seq");
    c.write_task(&behind).await;
    app.ingest(
        &json!({"taskId": "behind", "workflowId": "wf-seq", "taskType": "encode",
                       "status": "IN_PROGRESS", "seq": 1}),
    )
    .await;
    app.settle().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.ingest(
        &json!({"taskId": "next", "workflowId": "wf-seq", "taskType": "encode",
                       "status": "COMPLETED", "seq": 2}),
    )
    .await;
    app.settle().await;

    let mut settings = ConductorSettings {
        redis: Some(c.url.clone()),
        ..Default::default()
    };
    settings.redis_namespace = "conductor".into();
    let engine = Conductor::new(&settings, Duration::from_secs(5), None).unwrap();
    let checker = checker(&engine);
    let before = c.dump().await;
    let r = pass_at(&app, &checker, PAST_GRACE).await;
    let found = lost(&r);
    assert_eq!(ids(&found), ["lost"], "{:?}", r.violations);
    let e = &found[0].evidence;
    assert_eq!(
        (
            e["accepted"].as_str(),
            e["engineStatus"].as_str(),
            e["via"].as_str()
        ),
        (
            Some("COMPLETED"),
            Some("IN_PROGRESS"),
            Some("conductor_redis")
        ),
        "{e}"
    );
    let succ: Vec<_> = r
        .violations
        .iter()
        .filter(|v| v.rule == "successor_finished")
        .collect();
    assert_eq!(succ.len(), 1, "{:?}", r.violations);
    assert_eq!(succ[0].task_id, "behind");
    assert_eq!(succ[0].evidence["engine"]["status"], "COMPLETED");
    assert_eq!(succ[0].evidence["engine"]["via"], "conductor_redis");
    assert!(
        r.repairs
            .iter()
            .any(|a| a.task_id == "behind" && a.outcome == "repaired"),
        "{:?}",
        r.repairs
    );
    assert_eq!(
        app.stored("behind").await.unwrap().status.as_str(),
        "COMPLETED"
    );

    // the engine completes `lost`: the two sides agree
    let mut fixed = redis_store::task_model("lost", "encode", "COMPLETED", t0 + 1000);
    fixed["endTime"] = json!(t0 + 1000);
    c.write_task(&fixed).await;
    let after = c.dump().await;
    let r = pass_at(&app, &checker, PAST_GRACE + 1000).await;
    assert!(lost(&r).is_empty(), "{:?}", r.violations);
    assert_ne!(before, after, "the test's own write");
    assert_eq!(c.dump().await, after, "taskpulse never writes to Redis");
}

/// With the proxy and a store, a forwarded completion the engine's store doesn't hold is found
/// from the store (no `GET /api/tasks/{id}`) and posted again through the REST API.
async fn a_forwarded_completion_lost_in_the_store_is_reposted(backend: Backend) {
    let emu = Emulator::start().await;
    let c = ConductorDb::new().await;
    let db = TestDb::new(backend).await;
    let (engine_url, store_url) = (emu.url(), c.url.clone());
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.url = Some(engine_url);
        s.engines.conductor.db = Some(store_url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
    })
    .await;
    let id = emu.start_task(TaskSpec::new("encode").workflow("wf-lost", "media"));
    let t0 = c.now().await;
    let mut row = stored(&id, "IN_PROGRESS", t0, "w-1");
    row["workflowInstanceId"] = json!("wf-lost");
    c.write_task(&row).await;
    emu.lose_next_completion();
    let result = json!({"taskId": id, "workflowInstanceId": "wf-lost", "status": "COMPLETED",
                        "workerId": "w-1", "outputData": {"frames": 7}});
    let resp = reqwest::Client::new()
        .post(app.url("/api/tasks"))
        .json(&result)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    // the engine's store still shows IN_PROGRESS: the TaskResult is posted again
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reposts = loop {
        let posts: Vec<_> = emu
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/tasks" && r.body["taskId"] == json!(id))
            .collect();
        if posts.len() >= 2 {
            break posts; // the worker's, forwarded (and lost), and taskpulse's
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reposted: {:#?}",
            emu.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reposts.len(), 2, "{reposts:#?}");
    assert_eq!(reposts[1].body, reposts[0].body, "the same TaskResult");
    assert_eq!(emu.task(&id).unwrap().status, "COMPLETED");
    let lookups: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == format!("/api/tasks/{id}"))
        .collect();
    assert!(
        lookups.is_empty(),
        "read from the store, not REST: {lookups:#?}"
    );
    let audit = loop {
        let audit = app.store.list_repairs(10, None).await.unwrap();
        if !audit.is_empty() || tokio::time::Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].rule, "lost_terminal_update");
    assert_eq!(audit[0].evidence["via"], "conductor_db");
    assert_eq!(audit[0].evidence["engineStatus"], "IN_PROGRESS");
}
crate::store_test!(a_forwarded_completion_lost_in_the_store_is_reposted);
