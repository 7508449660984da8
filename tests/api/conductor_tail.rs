//! Conductor's `task` table followed (`--conductor-db`, `src/engines/conductor/task_tail.rs`):
//! a real PostgreSQL holding Conductor's tables (`conductor_db.rs`), written the way
//! Conductor's `PostgresExecutionDAO` writes them (`INSERT ... ON CONFLICT (task_id) DO UPDATE
//! SET json_data, modified_on = CURRENT_TIMESTAMP`), with TaskModel JSON as Conductor writes it
//! (`docs/engines/conductor-redis.md` §4): the engine's own transitions, which no webhook
//! reports, reach taskpulse once each, and taskpulse never writes to the engine's store.

use std::time::Duration;

use serde_json::{json, Value};

use crate::conductor_db::Conductor;
use crate::helpers::{Backend, TestApp, TestDb};

/// TaskModel JSON as Conductor stores it: every primitive present (0 = unset), nulls left out.
pub(crate) fn task_model(id: &str, task_type: &str, status: &str, update_time: i64) -> Value {
    json!({
        "taskType": task_type, "taskDefName": task_type, "status": status,
        "referenceTaskName": format!("{task_type}_ref"), "retryCount": 0, "seq": 1,
        "pollCount": 0, "scheduledTime": update_time, "startTime": 0, "endTime": 0,
        "updateTime": update_time, "startDelayInSeconds": 0, "retried": false,
        "executed": false, "callbackFromWorker": true, "responseTimeoutSeconds": 600,
        "workflowInstanceId": format!("wf-{id}"), "workflowType": "media", "taskId": id,
        "callbackAfterSeconds": 0, "callbackAfterMs": 0, "firstScheduledTime": update_time,
        "inputData": {}, "outputData": {},
        "workflowTask": {"name": task_type, "taskReferenceName": format!("{task_type}_ref"), "type": "SIMPLE"},
        "rateLimitPerFrequency": 0, "rateLimitFrequencyInSeconds": 0, "workflowPriority": 0,
        "iteration": 0, "subworkflowChanged": false, "waitTimeout": 0, "idempotent": false,
        "cachedOutput": false, "notifications": {}, "nonWorkflowEventTask": false,
        "loopOverTask": false, "queueWaitTime": 0, "idempotentExecution": false,
        "asyncComplete": false
    })
}

impl Conductor {
    /// Conductor's `insertOrUpdateTaskData`.
    pub(crate) async fn write_task(&self, doc: &Value) {
        sqlx::query(
            "INSERT INTO task (task_id, json_data, modified_on) VALUES ($1, $2, CURRENT_TIMESTAMP) \
             ON CONFLICT (task_id) DO UPDATE SET json_data = excluded.json_data, \
             modified_on = CURRENT_TIMESTAMP",
        )
        .bind(doc["taskId"].as_str().unwrap())
        .bind(doc.to_string())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A write whose `modified_on` is `ago` before now: what a transaction that started then
    /// and commits now leaves behind (or a row from long ago).
    async fn write_task_modified_ago(&self, doc: &Value, ago: Duration) {
        sqlx::query(
            "INSERT INTO task (task_id, json_data, modified_on) \
             VALUES ($1, $2, CURRENT_TIMESTAMP - make_interval(secs => $3)) \
             ON CONFLICT (task_id) DO UPDATE SET json_data = excluded.json_data, \
             modified_on = excluded.modified_on",
        )
        .bind(doc["taskId"].as_str().unwrap())
        .bind(doc.to_string())
        .bind(ago.as_secs_f64())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Everything in Conductor's tables, as one checksum.
    pub(crate) async fn checksum(&self) -> String {
        sqlx::query_scalar(
            "SELECT md5(COALESCE((SELECT string_agg(t::text, '|' ORDER BY task_id) FROM task t), '') \
             || COALESCE((SELECT string_agg(q::text, '|' ORDER BY message_id) FROM queue_message q), ''))",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

async fn app_on(conductor: &Conductor, db: &TestDb) -> TestApp {
    let url = conductor.url.clone();
    TestApp::spawn_with(db, move |s| {
        s.engines.conductor.db = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
    })
    .await
}

/// The task's view once `pred` holds (at most 10 s).
pub(crate) async fn eventually(
    app: &TestApp,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get(&format!("/api/v1/tasks/{id}")).await;
        let v: Value = if r.status() == 200 {
            r.json().await.unwrap()
        } else {
            Value::Null
        };
        if pred(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: {what} not within 10 s; last {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (to, outcome) of each history line, oldest first.
fn transitions(view: &Value) -> Vec<(String, String)> {
    let mut lines: Vec<(String, String)> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["to"].as_str().unwrap().to_string(),
                h["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lines.reverse();
    lines
}

#[tokio::test]
async fn the_engines_own_transitions_reach_taskpulse_once_each() {
    let conductor = Conductor::new().await;
    let now = conductor.now().await;
    // Before taskpulse starts: a worker task running, a WAIT waiting, and a task that finished
    // an hour ago (history, not to be replayed).
    let mut running = task_model("run-1", "encode", "IN_PROGRESS", now - 5_000);
    running["workerId"] = json!("worker-7");
    running["startTime"] = json!(now - 5_000);
    running["pollCount"] = json!(1);
    conductor.write_task(&running).await;
    let mut wait = task_model("wait-1", "WAIT", "IN_PROGRESS", now - 1_000);
    wait["waitTimeout"] = json!(now + 2_000);
    conductor.write_task(&wait).await;
    let mut old = task_model("old-1", "encode", "COMPLETED", now - 3_600_000);
    old["endTime"] = json!(now - 3_600_000);
    conductor
        .write_task_modified_ago(&old, Duration::from_secs(3600))
        .await;

    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&conductor, &db).await;
    let t = eventually(&app, "run-1", "running", |v| v["status"] == "IN_PROGRESS").await;
    assert_eq!(t["workerId"], "worker-7", "{t}");
    assert_eq!(t["workflowType"], "media", "{t}");
    assert_eq!(t["responseTimeoutSeconds"], 600, "{t}");
    let w = eventually(&app, "wait-1", "waiting", |v| v["status"] == "IN_PROGRESS").await;
    assert_eq!(w["waitUntil"], now + 2_000, "{w}");
    assert_eq!(
        app.get("/api/v1/tasks/old-1").await.status(),
        404,
        "a task that finished before taskpulse started is not replayed"
    );

    // The async system task executor completes the WAIT: endTime moves, updateTime does not.
    let mut done = wait.clone();
    done["status"] = json!("COMPLETED");
    done["endTime"] = json!(now + 2_100);
    conductor.write_task(&done).await;
    // The decider times the worker task out.
    let mut timed_out = running.clone();
    timed_out["status"] = json!("TIMED_OUT");
    timed_out["endTime"] = json!(now + 2_200);
    timed_out["reasonForIncompletion"] = json!("responseTimeout: 600 exceeded");
    conductor.write_task(&timed_out).await;
    // A new task is scheduled, then cancelled with its workflow.
    let fresh = task_model("new-1", "upload", "SCHEDULED", now + 2_300);
    conductor.write_task(&fresh).await;
    let w = eventually(&app, "wait-1", "completed", |v| v["status"] == "COMPLETED").await;
    let t = eventually(&app, "run-1", "timed out", |v| v["status"] == "TIMED_OUT").await;
    eventually(&app, "new-1", "scheduled", |v| v["status"] == "SCHEDULED").await;
    let mut cancelled = fresh.clone();
    cancelled["status"] = json!("CANCELED");
    cancelled["endTime"] = json!(now + 2_400);
    conductor.write_task(&cancelled).await;
    let n = eventually(&app, "new-1", "cancelled", |v| v["status"] == "CANCELED").await;

    // Conductor rewrites a row with nothing taskpulse looks at changed (a later write of the
    // same state): modified_on moves, the row is read again, nothing is submitted.
    let mut again = done.clone();
    again["queueWaitTime"] = json!(17);
    conductor.write_task(&again).await;
    // Several polls later (the overlap re-reads every row), each transition is there once.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let w2 = app.task("wait-1").await;
    let t2 = app.task("run-1").await;
    let n2 = app.task("new-1").await;
    let accepted = |to: &str| (to.to_string(), "accepted".to_string());
    assert_eq!(
        transitions(&w2),
        vec![accepted("IN_PROGRESS"), accepted("COMPLETED")],
        "{w} / {w2}"
    );
    assert_eq!(
        transitions(&t2),
        vec![accepted("IN_PROGRESS"), accepted("TIMED_OUT")],
        "{t} / {t2}"
    );
    assert_eq!(
        transitions(&n2),
        vec![accepted("SCHEDULED"), accepted("CANCELED")],
        "{n} / {n2}"
    );
    let from_db = app
        .metric_value(
            "taskpulse_updates_total",
            &[("source", "conductor_db"), ("outcome", "accepted")],
        )
        .await;
    assert_eq!(from_db, Some(6.0), "six transitions, each submitted once");
    assert_eq!(
        app.metric_value(
            "taskpulse_updates_total",
            &[("source", "conductor_db"), ("outcome", "duplicate")],
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "nothing re-submitted"
    );

    let polls = app
        .metric_value("taskpulse_conductor_db_polls_total", &[("outcome", "ok")])
        .await
        .unwrap();
    assert!(polls >= 3.0, "{polls} polls");
    let lag_count = app
        .metric_value("taskpulse_conductor_db_lag_seconds_count", &[])
        .await
        .unwrap();
    // the five writes after start (the first pass reads current state, not changes)
    assert!(
        lag_count >= 5.0,
        "every changed row read observes its lag: {lag_count}"
    );
    // taskpulse writes nothing into Conductor's store: with the test's writes over, polls
    // leave every row as it was (its sessions are read-only, too: conductor_db.rs).
    let expect = conductor.checksum().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        conductor.checksum().await,
        expect,
        "polls leave Conductor's tables as they are"
    );
    app.shutdown().await;
}

/// A transaction that started before rows already read and commits after them carries the
/// earlier `modified_on`: the overlap still finds it.
#[tokio::test]
async fn a_late_commit_with_an_earlier_modified_on_is_not_missed() {
    let conductor = Conductor::new().await;
    let now = conductor.now().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&conductor, &db).await;
    conductor
        .write_task(&task_model("early-1", "encode", "SCHEDULED", now))
        .await;
    eventually(&app, "early-1", "read", |v| v["status"] == "SCHEDULED").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conductor
        .write_task_modified_ago(
            &task_model("late-1", "encode", "SCHEDULED", now - 5_000),
            Duration::from_secs(5),
        )
        .await;
    eventually(
        &app,
        "late-1",
        "read despite its earlier modified_on",
        |v| v["status"] == "SCHEDULED",
    )
    .await;
    app.shutdown().await;
}

/// A task taskpulse holds as in flight that finished while taskpulse was not running is
/// caught up at start, from its row.
#[tokio::test]
async fn a_transition_missed_while_stopped_is_seen_at_start() {
    let conductor = Conductor::new().await;
    let now = conductor.now().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    app.ingest(
        &json!({"taskId": "gap-1", "workflowId": "wf-gap-1", "taskType": "encode",
                       "status": "IN_PROGRESS", "updateTime": now - 60_000}),
    )
    .await;
    app.settle().await;
    app.shutdown().await;
    let mut done = task_model("gap-1", "encode", "FAILED", now - 60_000);
    done["endTime"] = json!(now - 30_000);
    conductor
        .write_task_modified_ago(&done, Duration::from_secs(30))
        .await;
    let app = app_on(&conductor, &db).await;
    eventually(&app, "gap-1", "failed", |v| v["status"] == "FAILED").await;
    app.shutdown().await;
}

/// Conductor's database gone at start is a start-up error naming the setting.
#[tokio::test]
async fn a_conductor_db_without_a_task_table_stops_start_up() {
    let empty = TestDb::new(Backend::Postgres).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut settings = db.settings();
    settings.engines.conductor.db = Some(empty.url.clone());
    let err = taskpulse::Application::build(settings)
        .await
        .err()
        .expect("start-up fails");
    let msg = err.to_string();
    assert!(
        msg.contains("--conductor-db") && msg.contains("task"),
        "{msg}"
    );
}
