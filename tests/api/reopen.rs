//! Tasks the engine itself puts back to work under the same id (`docs/contract.md` §3,
//! "Reopened by the engine"), replayed as the engines write them: Conductor's rerun on its
//! `task` table (`WorkflowExecutorOps.rerunWF`), Kestra's in-place retry and its restart on
//! `executions` (`ExecutorService` around `handleRetryTask`, `ExecutionService.retryTask`,
//! `ExecutionService.restart`). Next to each, the conductor-oss#176 shape (a late write of the
//! run that ended) must still be refused, counted and reported.

use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::engines::conductor::{Conductor, ConductorSettings};

use crate::conductor_db::Conductor as ConductorDb;
use crate::conductor_store_rules::{checker, ids, lost, pass_at, PAST_GRACE};
use crate::conductor_tail::{eventually, task_model};
use crate::helpers::{Backend, TestApp, TestDb};
use crate::kestra::{app_on, at, attempt, execution, state, task_run, Kestra, WORKER_A, WORKER_B};

/// A worker task of a workflow `wf-{id}` as Conductor stores it once it ended: scheduled at
/// `t - 3 s`, polled by `worker` at `t - 2 s`, last updated at `t - 1 s`, ended at `t`
/// (`ExecutionDAOFacade.updateTask` sets `endTime` on the terminal write and leaves
/// `updateTime`).
fn ended(id: &str, status: &str, t: i64, worker: &str) -> Value {
    let mut doc = task_model(id, "encode", status, t - 1000);
    doc["scheduledTime"] = json!(t - 3000);
    doc["startTime"] = json!(t - 2000);
    doc["endTime"] = json!(t);
    doc["pollCount"] = json!(1);
    doc["workerId"] = json!(worker);
    doc["outputData"] = json!({"progress": 60});
    doc
}

/// The task's history lines, oldest first: (outcome, from, to, reason).
fn history(view: &Value) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut lines: Vec<_> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                s(&h["outcome"]),
                s(&h["from"]),
                s(&h["to"]),
                s(&h["reason"]),
            )
        })
        .collect();
    lines.reverse();
    lines
}

/// The task's view once memory's writes are committed (store readers are acknowledged from
/// memory; the history and attempts are read from the store).
async fn settled(app: &TestApp, id: &str) -> Value {
    app.settle().await;
    app.task(id).await
}

fn reopened(from: &str, to: &str, how: &str) -> (String, String, String, String) {
    (
        "reopened".into(),
        from.into(),
        to.into(),
        format!("reopened by the engine ({how})"),
    )
}

/// Conductor reruns a FAILED task (`rerunWF`, a direct rerun of a worker task): the early
/// write that only flips the status, the reset (scheduledTime now, startTime, endTime and
/// updateTime 0, output cleared, pollCount 0), a worker's poll, the completion. Beside it a
/// COMPLETED task is overwritten by a late IN_PROGRESS written from a copy read before it
/// completed (conductor-oss#176).
async fn a_conductor_rerun_is_followed_and_a_late_write_is_not(backend: Backend) {
    let c = ConductorDb::new().await;
    let db = TestDb::new(backend).await;
    let url = c.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.db = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
    })
    .await;
    // engine times a minute back, so none is ahead of taskpulse's clock
    let t0 = c.now().await - 60_000;
    let failed = ended("rerun-1", "FAILED", t0, "w-1");
    c.write_task(&failed).await;
    let completed = ended("late-1", "COMPLETED", t0, "w-1");
    c.write_task(&completed).await;
    eventually(&app, "rerun-1", "failed", |v| v["status"] == "FAILED").await;
    eventually(&app, "late-1", "completed", |v| v["status"] == "COMPLETED").await;

    // conductor-oss#176: the stale copy still says IN_PROGRESS, with its run's times
    let mut late = completed.clone();
    late["status"] = json!("IN_PROGRESS");
    late["endTime"] = json!(0);
    late["updateTime"] = json!(t0 + 500);
    c.write_task(&late).await;

    // rerunWF: the first write flips the status only (ExecutionDAOFacade moves updateTime)
    let mut early = failed.clone();
    early["status"] = json!("SCHEDULED");
    early["updateTime"] = json!(t0 + 1000);
    c.write_task(&early).await;
    // the reset
    let mut reset = early.clone();
    for (k, v) in [
        ("scheduledTime", json!(t0 + 1001)),
        ("startTime", json!(0)),
        ("endTime", json!(0)),
        ("updateTime", json!(t0 + 1001)),
        ("pollCount", json!(0)),
        ("outputData", json!({})),
    ] {
        reset[k] = v;
    }
    c.write_task(&reset).await;
    let view = eventually(&app, "rerun-1", "reopened", |v| v["status"] == "SCHEDULED").await;
    // from the first write, or from the reset when one poll saw both
    assert!(
        [json!(t0 + 1000), json!(t0 + 1001)].contains(&view["reopenedAt"]),
        "{view}"
    );
    assert!(
        view["progressPercent"].is_null(),
        "the ended run's progress: {view}"
    );
    assert!(view["endTime"].is_null(), "{view}");
    // a worker polls it, and completes it
    let mut polled = reset.clone();
    for (k, v) in [
        ("status", json!("IN_PROGRESS")),
        ("startTime", json!(t0 + 2000)),
        ("updateTime", json!(t0 + 2000)),
        ("pollCount", json!(1)),
        ("workerId", json!("w-2")),
    ] {
        polled[k] = v;
    }
    c.write_task(&polled).await;
    let mut done = polled.clone();
    done["status"] = json!("COMPLETED");
    done["endTime"] = json!(t0 + 5000);
    c.write_task(&done).await;

    eventually(&app, "rerun-1", "the rerun completed", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    let view = settled(&app, "rerun-1").await;
    assert_eq!(view["endTime"], json!(t0 + 5000), "{view}");
    assert_eq!(view["workerId"], "w-2");
    let lines = history(&view);
    assert!(
        lines.contains(&reopened("FAILED", "SCHEDULED", "rerun")),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap().2, "COMPLETED", "{lines:?}");

    let view = eventually(&app, "late-1", "the late write refused", |v| {
        history(v)
            .iter()
            .any(|l| l.0 == "rejected" && l.2 == "IN_PROGRESS")
    })
    .await;
    assert_eq!(view["endTime"], json!(t0));
    assert_eq!(view["status"], "COMPLETED");
    assert!(!history(&view).iter().any(|l| l.0 == "reopened"));
    let metric = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move { app.metric_value(name, labels).await.unwrap_or(0.0) }
    };
    assert_eq!(
        metric("taskpulse_task_reopens_total", &[("kind", "rerun")]).await,
        1.0
    );
    assert!(
        metric(
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")]
        )
        .await
            >= 1.0
    );
    // the store agrees with memory: the reopened row overwrote the terminal one
    app.settle().await;
    let stored = app.stored("rerun-1").await.unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.end_time),
        ("COMPLETED", Some(t0 + 5000))
    );
    assert!(stored.reopened_at.is_some_and(|at| at > t0));
}
crate::store_test!(a_conductor_rerun_is_followed_and_a_late_write_is_not);

/// The checker against a store that taskpulse does not follow (the proxy or the API told it
/// the tasks finished): `lost_terminal_update` reports the conductor-oss#176 shape, and not a
/// task the engine reran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_terminal_update_reports_the_late_write_and_not_the_rerun() {
    let c = ConductorDb::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let t0 = c.now().await - 60_000;
    let (failed, completed) = (
        ended("rerun-2", "FAILED", t0, "w-1"),
        ended("late-2", "COMPLETED", t0, "w-1"),
    );
    for doc in [&failed, &completed] {
        let mut told = json!({"taskId": doc["taskId"], "workflowId": doc["workflowInstanceId"],
            "taskType": "encode", "status": doc["status"], "updateTime": t0, "workerId": "w-1"});
        told["startTime"] = json!(t0 - 2000);
        app.ingest(&told).await;
    }
    app.settle().await;
    let mut late = completed.clone();
    late["status"] = json!("IN_PROGRESS");
    late["endTime"] = json!(0);
    late["updateTime"] = json!(t0 + 500);
    c.write_task(&late).await;
    let mut rerun = failed.clone();
    for (k, v) in [
        ("status", json!("SCHEDULED")),
        ("scheduledTime", json!(t0 + 1001)),
        ("startTime", json!(0)),
        ("endTime", json!(0)),
        ("updateTime", json!(t0 + 1001)),
    ] {
        rerun[k] = v;
    }
    c.write_task(&rerun).await;

    let engine = Conductor::new(
        &ConductorSettings {
            db: Some(c.url.clone()),
            ..Default::default()
        },
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let r = pass_at(&app, &checker(&engine), PAST_GRACE).await;
    assert_eq!(ids(&lost(&r)), ["late-2"], "{:?}", r.violations);
}

/// Kestra retries a failed task run in place: the worker's FAILED result is saved in its own
/// transaction and read by one poll, then the executor marks the task run RETRYING, then
/// CREATED (`retryTask`), and the second attempt runs on another worker and succeeds. A
/// restarted execution keeps its task run ids and moves its KILLED task run to RESTARTED.
async fn kestra_retries_in_place_and_restarts_are_followed(backend: Backend) {
    let k = Kestra::new().await;
    let db = TestDb::new(backend).await;
    let app = app_on(&k, &db).await;
    let t = taskpulse::now_ms() - 30_000;
    let running = state(&[("CREATED", &at(t, 0.0)), ("RUNNING", &at(t, 0.1))]);
    let first = attempt(
        &[("RUNNING", &at(t, 0.2)), ("FAILED", &at(t, 3.0))],
        WORKER_A,
    );
    let mut hist = vec![
        ("CREATED", at(t, 0.1)),
        ("RUNNING", at(t, 0.2)),
        ("FAILED", at(t, 3.01)),
    ];
    let run = |hist: &[(&str, String)], attempts: Vec<Value>| {
        let h: Vec<(&str, &str)> = hist.iter().map(|(s, d)| (*s, d.as_str())).collect();
        task_run("tr-retry", "ex-retry", "load", attempts, state(&h))
    };
    k.persist(&execution(
        "ex-retry",
        vec![run(&hist, vec![first.clone()])],
        running.clone(),
    ))
    .await;
    eventually(&app, "tr-retry", "FAILED, seen by one poll", |v| {
        v["status"] == "FAILED"
    })
    .await;

    // ExecutorService: RETRYING (the execution too), then retryTask: CREATED
    hist.push(("RETRYING", at(t, 3.2)));
    let ex_retrying = state(&[
        ("CREATED", &at(t, 0.0)),
        ("RUNNING", &at(t, 0.1)),
        ("RETRYING", &at(t, 3.2)),
    ]);
    k.persist(&execution(
        "ex-retry",
        vec![run(&hist, vec![first.clone()])],
        ex_retrying,
    ))
    .await;
    hist.push(("CREATED", at(t, 8.0)));
    hist.push(("RUNNING", at(t, 8.1)));
    let second = attempt(&[("RUNNING", &at(t, 8.1))], WORKER_B);
    k.persist(&execution(
        "ex-retry",
        vec![run(&hist, vec![first.clone(), second])],
        running.clone(),
    ))
    .await;
    eventually(&app, "tr-retry", "its second attempt running", |v| {
        v["status"] == "IN_PROGRESS" && v["retryCount"] == 1
    })
    .await;
    hist.push(("SUCCESS", at(t, 12.0)));
    let second = attempt(
        &[("RUNNING", &at(t, 8.1)), ("SUCCESS", &at(t, 12.0))],
        WORKER_B,
    );
    k.persist(&execution(
        "ex-retry",
        vec![run(&hist, vec![first, second])],
        running,
    ))
    .await;
    eventually(&app, "tr-retry", "succeeded", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    let view = settled(&app, "tr-retry").await;
    assert_eq!(view["workerId"], WORKER_B);
    let lines = history(&view);
    assert!(
        lines.contains(&reopened("FAILED", "IN_PROGRESS", "retry")),
        "{lines:?}"
    );
    let attempts: Vec<(i64, String)> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert!(attempts.contains(&(0, "FAILED".into())), "{attempts:?}");
    assert!(attempts.contains(&(1, "COMPLETED".into())), "{attempts:?}");

    // a KILLED execution, then restarted: same ids, the task run RESTARTED, then run again
    let killed = [
        ("CREATED", at(t, 0.0)),
        ("RUNNING", at(t, 0.1)),
        ("KILLED", at(t, 2.0)),
    ];
    let h = |v: &[(&str, String)]| -> Vec<(String, String)> {
        v.iter().map(|(s, d)| (s.to_string(), d.clone())).collect()
    };
    let as_state = |v: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = v.iter().map(|(s, d)| (s.as_str(), d.as_str())).collect();
        state(&refs)
    };
    let mut run_hist = h(&killed);
    let mut ex_hist = h(&killed);
    let persist_restart = |run_hist: Vec<(String, String)>, ex_hist: Vec<(String, String)>| {
        let k = &k;
        let run = task_run(
            "tr-restart",
            "ex-restart",
            "load",
            vec![attempt(&[("RUNNING", &at(t, 0.2))], WORKER_A)],
            as_state(&run_hist),
        );
        let ex = execution("ex-restart", vec![run], as_state(&ex_hist));
        async move { k.persist(&ex).await }
    };
    persist_restart(run_hist.clone(), ex_hist.clone()).await;
    eventually(&app, "tr-restart", "killed", |v| v["status"] == "CANCELED").await;
    run_hist.push(("RESTARTED".into(), at(t, 20.0)));
    ex_hist.push(("RESTARTED".into(), at(t, 20.0)));
    persist_restart(run_hist.clone(), ex_hist.clone()).await;
    eventually(&app, "tr-restart", "restarted", |v| {
        v["status"] == "SCHEDULED"
    })
    .await;
    let view = settled(&app, "tr-restart").await;
    assert!(
        history(&view).contains(&reopened("CANCELED", "SCHEDULED", "restart")),
        "{:?}",
        history(&view)
    );
    assert_eq!(
        app.metric_value("taskpulse_task_reopens_total", &[("kind", "restart")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        app.metric_value("taskpulse_task_reopens_total", &[("kind", "retry")])
            .await,
        Some(1.0)
    );
}
crate::store_test!(kestra_retries_in_place_and_restarts_are_followed);
