//! taskpulse's worker proxy against what the engine does with a lease heartbeat: Conductor
//! reads nothing of an `extendLease: true` result but its `taskId`
//! (`WorkflowExecutorOps.java:924-927,1139-1165` @ b54f0d4e), whatever status it carries.

use serde_json::{json, Value};

use super::{Emulator, TaskSpec};
use crate::helpers::{Backend, TestApp, TestDb};

async fn post(app: &TestApp, path: &str, body: &Value) -> u16 {
    reqwest::Client::new()
        .post(app.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_says_completed_is_not_taken_as_a_completion() {
    let emu = Emulator::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let url = emu.url();
    let app = TestApp::spawn_with(&db, move |s| s.engines.conductor.url = Some(url)).await;
    let id = emu.start_task(TaskSpec::new("encode"));
    let polled: Vec<Value> = reqwest::get(app.url("/api/tasks/poll/batch/encode?workerid=w1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled.len(), 1);
    let wf = polled[0]["workflowInstanceId"].clone();

    // e.g. a worker that reuses the TaskResult it heartbeated with for its outcome
    let beat = json!({"taskId": id, "workflowInstanceId": wf, "workerId": "w1",
                      "status": "COMPLETED", "extendLease": true,
                      "outputData": {"progress": 100}});
    assert_eq!(post(&app, "/api/tasks", &beat).await, 200);
    assert_eq!(emu.task(&id).unwrap().status, "IN_PROGRESS", "the engine");
    app.settle().await;
    let view = app.task(&id).await;
    assert_ne!(view["status"], "COMPLETED", "{view:#}");

    // so the task's later updates still reach the engine
    let yielded = json!({"taskId": id, "workflowInstanceId": wf, "workerId": "w1",
                         "status": "IN_PROGRESS", "callbackAfterSeconds": 0,
                         "outputData": {"progress": 50}});
    assert_eq!(post(&app, "/api/tasks", &yielded).await, 200);
    assert_eq!(emu.task(&id).unwrap().status, "SCHEDULED");
    let done = json!({"taskId": id, "workflowInstanceId": wf, "workerId": "w1",
                      "status": "COMPLETED", "outputData": {"progress": 100}});
    assert_eq!(post(&app, "/api/tasks", &done).await, 200);
    assert_eq!(emu.task(&id).unwrap().status, "COMPLETED");
    assert_eq!(
        emu.updates_for(&id).len(),
        3,
        "every update reached the engine"
    );
    app.settle().await;
    assert_eq!(app.task(&id).await["status"], "COMPLETED");
}
