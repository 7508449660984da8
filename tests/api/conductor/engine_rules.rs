//! The checker rules that ask the engine (with `--conductor-url`), against the emulator:
//! `wait_overdue` asks the engine to re-decide (at most once per workflow per grace period),
//! `successor_finished` syncs taskpulse to the engine's terminal status or only reports.

use std::time::Duration;

use serde_json::json;
use taskpulse::checker::{
    compose, default_rules, CheckSettings, Checker, CheckerMetrics, Context, PassReport,
};
use taskpulse::engines::conductor::{Conductor, ConductorSettings};
use taskpulse::engines::Engine;
use taskpulse::store::StoreMetrics;

use super::{Emulator, TaskSpec};
use crate::helpers::{Backend, TestApp, TestDb};

/// The checker with the engine rules, kept across passes as the serving process keeps it.
fn engine_checker(engine: &Conductor) -> Checker {
    Checker::new(
        compose(default_rules(), engine.rules()),
        CheckerMetrics::unregistered(),
        StoreMetrics::unregistered(),
    )
}

async fn pass(app: &TestApp, checker: &Checker) -> PassReport {
    let ctx = Context {
        store: app.store.clone(),
        tracker: Some(app.tracker.clone()),
        now: taskpulse::now_ms(),
        settings: CheckSettings {
            repair: true,
            max_repairs_per_run: 100,
            lease_grace: Duration::from_secs(3600),
            wait_grace: Duration::from_secs(30),
            retention: Duration::ZERO,
        },
    };
    checker.run_pass(&ctx).await.expect("pass runs")
}

async fn setup(backend: Backend) -> (Emulator, TestDb, TestApp, Conductor) {
    let emu = Emulator::start().await;
    let db = TestDb::new(backend).await;
    let url = emu.url();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.url = Some(url);
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let engine = Conductor::new(
        &ConductorSettings {
            url: Some(emu.url()),
            ..Default::default()
        },
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    (emu, db, app, engine)
}

async fn wait_overdue_asks_the_engine_to_decide_once_per_grace(backend: Backend) {
    let (emu, _db, app, px) = setup(backend).await;
    let now = taskpulse::now_ms();
    for id in ["wait-a", "wait-b"] {
        app.ingest(
            &json!({"taskId": id, "workflowId": "wf-waiting", "taskType": "WAIT",
                           "status": "IN_PROGRESS", "waitUntil": now - 600_000}),
        )
        .await;
    }
    app.settle().await;
    let checker = engine_checker(&px);
    let r = pass(&app, &checker).await;
    let found = r
        .violations
        .iter()
        .filter(|v| v.rule == "wait_overdue")
        .count();
    assert_eq!(found, 2, "{:?}", r.violations);
    assert_eq!(
        r.repairs.len(),
        1,
        "one decide per workflow: {:?}",
        r.repairs
    );
    assert_eq!(
        (r.repairs[0].rule.as_str(), r.repairs[0].outcome.as_str()),
        ("wait_overdue", "repaired")
    );
    assert_eq!(emu.decides(), ["wf-waiting"]);

    // within the grace period the engine is left to it
    let r = pass(&app, &checker).await;
    assert!(r.repairs.is_empty(), "{:?}", r.repairs);
    assert_eq!(emu.decides().len(), 1);
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == "wait_overdue")
        .unwrap();
    assert!(
        v.evidence["decideRequestedSecondsAgo"].as_f64().is_some(),
        "{}",
        v.evidence
    );

    // an engine that can't be reached makes the repair `failed`, audited (a later pass retries)
    let dead = Conductor::new(
        &ConductorSettings {
            url: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        },
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let r = pass(&app, &engine_checker(&dead)).await;
    assert!(!r.repairs.is_empty());
    assert!(
        r.repairs.iter().all(|a| a.outcome == "failed"),
        "{:?}",
        r.repairs
    );
    assert!(
        r.repairs[0].detail.contains("refused"),
        "{}",
        r.repairs[0].detail
    );
    assert_eq!(
        app.store.list_repairs(10, None).await.unwrap()[0].outcome,
        "failed"
    );
}
crate::store_test!(wait_overdue_asks_the_engine_to_decide_once_per_grace);

async fn successor_finished_syncs_to_the_engine_or_only_reports(backend: Backend) {
    let (emu, _db, app, px) = setup(backend).await;
    let done = emu.start_task(
        TaskSpec::new("upload_start")
            .workflow("wf-176", "upload")
            .reference("start", 1, 135),
    );
    let running = emu.start_task(
        TaskSpec::new("upload_check")
            .workflow("wf-177", "upload")
            .reference("check", 1, 135),
    );
    // the engine completed `done`; taskpulse never heard
    let resp = reqwest::Client::new()
        .post(format!("{}/tasks", emu.api_url()))
        .json(&json!({"taskId": done, "workflowInstanceId": "wf-176", "status": "COMPLETED", "outputData": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for (id, wf) in [(&done, "wf-176"), (&running, "wf-177")] {
        app.ingest(
            &json!({"taskId": id, "workflowId": wf, "taskType": "upload",
                           "status": "IN_PROGRESS", "seq": 1, "iteration": 135}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (id, wf) in [("next-176", "wf-176"), ("next-177", "wf-177")] {
        app.ingest(
            &json!({"taskId": id, "workflowId": wf, "taskType": "upload",
                           "status": "COMPLETED", "seq": 2, "iteration": 135}),
        )
        .await;
    }
    app.settle().await;
    let checker = engine_checker(&px);
    let r = pass(&app, &checker).await;
    let found: Vec<_> = r
        .violations
        .iter()
        .filter(|v| v.rule == "successor_finished")
        .collect();
    assert_eq!(found.len(), 2, "{:?}", r.violations);
    let synced = found.iter().find(|v| v.task_id == done).unwrap();
    assert_eq!(synced.evidence["engine"]["status"], "COMPLETED");
    let reported = found.iter().find(|v| v.task_id == running).unwrap();
    assert_eq!(reported.evidence["engine"]["status"], "SCHEDULED");
    assert_eq!(r.repairs.len(), 1, "{:?}", r.repairs);
    assert_eq!(
        (r.repairs[0].task_id.as_str(), r.repairs[0].outcome.as_str()),
        (done.as_str(), "repaired")
    );
    assert_eq!(
        app.stored(&done).await.unwrap().status.as_str(),
        "COMPLETED"
    );
    assert_eq!(app.task(&done).await["status"], "COMPLETED");
    assert_eq!(
        app.stored(&running).await.unwrap().status.as_str(),
        "IN_PROGRESS"
    );
    let r = pass(&app, &checker).await;
    let still = r
        .violations
        .iter()
        .filter(|v| v.rule == "successor_finished")
        .count();
    assert_eq!(still, 1, "the synced task is no longer flagged");
}
crate::store_test!(successor_finished_syncs_to_the_engine_or_only_reports);
