//! Rows of an engine's store shaped by its users (`docs/contract.md` §3, "Rows from an engine's
//! store"): a progress that is an item count, a progress of the wrong type, an empty worker,
//! names longer than a label may be. The engine's status is the truth: the odd field is
//! dropped or cut and counted, the transition is never lost.

use std::time::Duration;

use serde_json::{json, Value};

use crate::conductor_db::Conductor as ConductorDb;
use crate::conductor_tail::{eventually, task_model};
use crate::helpers::{Backend, TestApp, TestDb};
use crate::kestra::{app_on, at, attempt, execution, state, task_run, Kestra, WORKER_A};

async fn adjusted(app: &TestApp, source: &str, action: &str) -> f64 {
    let labels = [("source", source), ("action", action)];
    app.metric_value("taskpulse_engine_fields_adjusted_total", &labels)
        .await
        .unwrap_or(0.0)
}

/// Each odd row is a task's terminal write on Conductor's `task` table, after it ran normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_conductor_rows_keep_their_transition() {
    let c = ConductorDb::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let url = c.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.db = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
    })
    .await;
    let t0 = c.now().await - 60_000;
    let long_name = format!("{}_step", "generated_by_a_plugin".repeat(10));
    let rows: [(&str, &str, &str, Value); 4] = [
        (
            "items",
            "encode",
            "COMPLETED",
            json!({"outputData": {"progress": 250}}),
        ),
        (
            "typed",
            "encode",
            "COMPLETED",
            json!({"outputData": {"progressPercent": "ninety",
                   "progressMessage": {"step": 3, "of": 10}}}),
        ),
        ("no-worker", "encode", "FAILED", json!({"workerId": ""})),
        ("long-name", &long_name, "COMPLETED", json!({})),
    ];
    for (id, name, _, _) in &rows {
        let mut doc = task_model(id, name, "IN_PROGRESS", t0);
        doc["workerId"] = json!("w-1");
        c.write_task(&doc).await;
    }
    for (id, ..) in &rows {
        eventually(&app, id, "running", |v| v["status"] == "IN_PROGRESS").await;
    }
    for (id, name, status, extra) in &rows {
        let mut doc = task_model(id, name, status, t0);
        doc["endTime"] = json!(t0 + 1000);
        doc["workerId"] = json!("w-1");
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        c.write_task(&doc).await;
    }
    for (id, _, status, _) in &rows {
        let v = eventually(&app, id, "its terminal write", |v| v["status"] == *status).await;
        assert_eq!(v["endTime"], json!(t0 + 1000), "{id}: {v}");
    }
    let long = app.task("long-name").await;
    let kept = long["taskType"].as_str().unwrap();
    assert!(kept.len() <= 128 && kept.contains('~'), "{kept}");
    assert!(long_name.starts_with(kept.split('~').next().unwrap()));
    assert!(
        app.task("no-worker").await["workerId"] == "w-1",
        "the worker it had is kept"
    );
    // dropped: the item count, the two mistyped fields, the empty worker; cut: the long name,
    // in both of its task's rows
    assert_eq!(adjusted(&app, "conductor_db", "dropped").await, 4.0);
    assert_eq!(adjusted(&app, "conductor_db", "cut").await, 2.0);
}

/// Kestra widened task ids to 256 characters (`V1_57__widen_task_id`, plugin-generated ids);
/// a namespace and a flow id can each be 150 long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_kestra_ids_and_names_are_followed() {
    let k = Kestra::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&k, &db).await;
    let t = taskpulse::now_ms() - 30_000;
    let task_id = format!("io_kestra_plugin_{}", "x".repeat(239));
    assert_eq!(task_id.len(), 256);
    let mut run = task_run(
        "tr-long",
        "ex-long",
        &task_id,
        vec![attempt(
            &[("RUNNING", &at(t, 0.2)), ("SUCCESS", &at(t, 1.0))],
            WORKER_A,
        )],
        state(&[
            ("CREATED", &at(t, 0.1)),
            ("RUNNING", &at(t, 0.2)),
            ("SUCCESS", &at(t, 1.0)),
        ]),
    );
    let (namespace, flow) = ("company.".repeat(18), "f".repeat(150));
    run["namespace"] = json!(namespace);
    run["flowId"] = json!(flow);
    let mut ex = execution(
        "ex-long",
        vec![run],
        state(&[("CREATED", &at(t, 0.0)), ("RUNNING", &at(t, 0.1))]),
    );
    ex["namespace"] = json!(namespace);
    ex["flowId"] = json!(flow);
    k.persist(&ex).await;
    let v = eventually(&app, "tr-long", "followed", |v| v["status"] == "COMPLETED").await;
    let (kind, wf) = (
        v["taskType"].as_str().unwrap(),
        v["workflowType"].as_str().unwrap(),
    );
    assert!(
        kind.len() <= 128 && kind.starts_with("io_kestra_plugin_xx"),
        "{kind}"
    );
    assert!(wf.len() <= 128 && wf.starts_with("company."), "{wf}");
    // taskType and workflowType, counted each time the task run was submitted
    assert!(adjusted(&app, "kestra_db", "cut").await >= 2.0);
    assert_eq!(adjusted(&app, "kestra_db", "dropped").await, 0.0);
}
