//! Conductor's `task_index` followed instead of sweeping `task` (`--conductor-db`, issue 24,
//! `docs/engines/conductor.md` "What a poll costs"). With `conductor.indexing.type=postgres`,
//! `ExecutionDAOFacade.updateTask` (b54f0d4e, `core/.../dal/ExecutionDAOFacade.java:552-585`)
//! writes the task (`PostgresExecutionDAO.updateTask`, one transaction) and then, in a
//! transaction of its own, `PostgresIndexDAO.indexTask` (`PostgresIndexDAO.java:167-201`):
//! an upsert of `task_index` with `update_time` = the task's `updateTime`. `createTasks`
//! indexes nothing (`ExecutionDAOFacade.java:491`). Replayed here in that order.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::conductor_db::Conductor;
use crate::conductor_pg_cost::{app_polling, history_and_work, polls_later, task_of};
use crate::conductor_tail::eventually;
use crate::helpers::{Backend, TestApp, TestDb};

/// `task_index` as `V8__indexing.sql`, `V12__task_index_columns.sql` and
/// `V18__index_end_time.sql` leave it (b54f0d4e, `db/migration_postgres`).
const TASK_INDEX: &str = r#"
CREATE TABLE task_index (
  task_id VARCHAR(255) NOT NULL,
  task_type VARCHAR(32) NOT NULL,
  task_def_name VARCHAR(255) NOT NULL,
  status VARCHAR(32) NOT NULL,
  start_time TIMESTAMP WITH TIME ZONE NOT NULL,
  update_time TIMESTAMP WITH TIME ZONE NOT NULL,
  workflow_type VARCHAR(128) NOT NULL,
  json_data JSONB NOT NULL,
  PRIMARY KEY (task_id)
);
CREATE INDEX task_index_task_id_idx ON task_index (task_id);
CREATE INDEX task_index_task_type_idx ON task_index (task_type);
CREATE INDEX task_index_task_def_name_idx ON task_index (task_def_name);
CREATE INDEX task_index_status_idx ON task_index (status);
CREATE INDEX task_index_update_time_idx ON task_index (update_time);
CREATE INDEX task_index_workflow_type_idx ON task_index (workflow_type);
ALTER TABLE task_index ALTER COLUMN task_type TYPE TEXT;
ALTER TABLE task_index ALTER COLUMN task_def_name TYPE TEXT;
ALTER TABLE task_index
    ADD COLUMN IF NOT EXISTS end_time TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT TIMESTAMP WITH TIME ZONE 'epoch';
CREATE INDEX IF NOT EXISTS task_index_end_time_idx ON task_index (end_time);
"#;

/// `PostgresIndexDAO.indexTask`'s statement (`onlyIndexOnStatusChange` off, the default).
const INDEX_TASK: &str = "INSERT INTO task_index (task_id, task_type, task_def_name, status, start_time, end_time, update_time, workflow_type, json_data)\
VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz, $7::timestamptz, $8, $9::JSONB) ON CONFLICT (task_id) \
DO UPDATE SET task_type = EXCLUDED.task_type, task_def_name = EXCLUDED.task_def_name, \
status = EXCLUDED.status, end_time = EXCLUDED.end_time, update_time = EXCLUDED.update_time, json_data = EXCLUDED.json_data \
WHERE EXCLUDED.update_time >= task_index.update_time";

/// `TaskSummary`'s time format (`TaskSummary.java:98-111`: `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`,
/// GMT); pgjdbc sends the `Timestamp` it becomes as an untyped literal, cast here.
fn iso(ms: &Value) -> String {
    let ms = ms.as_i64().unwrap_or(0).max(0) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Conductor {
    /// Conductor's tables with the bookkeeping tables and `task_index`.
    async fn with_task_index() -> Conductor {
        let c = Conductor::with_in_flight_tables().await;
        sqlx::raw_sql(TASK_INDEX)
            .execute(&c.pool)
            .await
            .expect("create task_index");
        c
    }

    /// `indexTask(new TaskSummary(task))`, in its own transaction.
    async fn index_task(&self, doc: &Value) {
        let summary = json!({"taskId": doc["taskId"], "workflowId": doc["workflowInstanceId"],
            "workflowType": doc["workflowType"], "taskType": doc["taskType"],
            "taskDefName": doc["taskDefName"], "status": doc["status"],
            "scheduledTime": iso(&doc["scheduledTime"]), "startTime": iso(&doc["startTime"]),
            "updateTime": iso(&doc["updateTime"]), "endTime": iso(&doc["endTime"])});
        let mut q = sqlx::query(INDEX_TASK);
        for key in ["taskId", "taskType", "taskDefName", "status"] {
            q = q.bind(doc[key].as_str().unwrap().to_string());
        }
        for key in ["startTime", "endTime", "updateTime"] {
            q = q.bind(iso(&doc[key]));
        }
        q = q.bind(doc["workflowType"].as_str().unwrap().to_string());
        q.bind(summary.to_string())
            .execute(&self.pool)
            .await
            .expect("index the task");
    }

    /// The facade's `updateTask`: the task's transaction, then its index row.
    async fn update_and_index(&self, doc: &Value) {
        self.update_task(doc).await;
        self.index_task(doc).await;
    }

    /// Sequential scans of `task` so far.
    async fn task_seq_scans(&self) -> i64 {
        self.task_reads().await.0
    }
}

async fn index_used(app: &TestApp) -> f64 {
    app.metric_value("taskpulse_conductor_db_task_index_used", &[])
        .await
        .expect("taskpulse_conductor_db_task_index_used")
}

/// Waits (at most `limit`) until the gauge says `want`.
async fn index_used_becomes(app: &TestApp, want: f64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while index_used(app).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "taskpulse_conductor_db_task_index_used not {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A workflow that starts and ends between two polls is in none of the in-flight tables;
/// `task_index` shows it at the next poll (1 s here), where the sweep of `task` would take
/// 30 polls (the bound of `eventually` is 10 s).
#[tokio::test]
async fn a_workflow_that_starts_and_ends_between_polls_is_found_through_task_index() {
    let conductor = Conductor::with_task_index().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_secs(1)).await;
    assert_eq!(index_used(&app).await, 1.0, "task_index is there");
    let now = conductor.now().await;
    conductor.create_workflow("wf-blink").await;
    conductor
        .create_task(&task_of("wf-blink", "blink-1", "SCHEDULED", now))
        .await;
    conductor
        .update_and_index(&task_of("wf-blink", "blink-1", "COMPLETED", now))
        .await;
    conductor.finish_workflow("wf-blink").await;
    eventually(&app, "blink-1", "completed, through task_index", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    app.shutdown().await;
}

/// Idle polls on 1,000 and 10,000 finished (and indexed) tasks, once the index has shown it
/// follows `task`: (rows of the last poll, seq scans of `task` over 40 polls of 200 ms,
/// which holds what was a sweep).
async fn idle_cost_with_index(history: i64) -> (f64, i64) {
    let conductor = Conductor::with_task_index().await;
    history_and_work(&conductor, history).await;
    sqlx::query(
        "INSERT INTO task_index (task_id, task_type, task_def_name, status, start_time, \
         update_time, workflow_type, json_data) SELECT task_id, 'SIMPLE', 'encode', \
         'COMPLETED', now() - interval '1 day', now() - interval '1 day', 'media', '{}' \
         FROM task WHERE task_id LIKE 'old-%'",
    )
    .execute(&conductor.pool)
    .await
    .unwrap();
    let now = conductor.now().await;
    conductor
        .index_task(&task_of("wf-live", "live-1", "IN_PROGRESS", now))
        .await;
    sqlx::raw_sql("ANALYZE")
        .execute(&conductor.pool)
        .await
        .unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_millis(200)).await;
    eventually(&app, "live-1", "read", |v| v["status"] == "IN_PROGRESS").await;
    // the start's check of live-1 against the index is due 2 s after it was read
    index_used_becomes(&app, 1.0, Duration::from_secs(5)).await;
    // start-up's pass over `task` reaches the statistics within PostgreSQL's 10 s idle flush
    polls_later(&app, 60.0).await;
    let before = conductor.task_seq_scans().await;
    polls_later(&app, 40.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = app
        .metric_value("taskpulse_conductor_db_poll_rows", &[])
        .await
        .expect("taskpulse_conductor_db_poll_rows");
    let scans = conductor.task_seq_scans().await - before;
    assert_eq!(
        index_used(&app).await,
        1.0,
        "history {history}: index still used"
    );
    app.shutdown().await;
    (rows, scans)
}

/// With `task_index` kept, no poll scans `task`, not even the 30th (the sweep), and an idle
/// poll reads the same rows on 1,000 and 10,000 finished tasks. (Fails on a reader that
/// sweeps `task` every 30 polls.)
#[tokio::test]
async fn with_task_index_kept_no_poll_scans_task() {
    let small = idle_cost_with_index(1_000).await;
    let large = idle_cost_with_index(10_000).await;
    for (history, (rows, scans)) in [(1_000, small), (10_000, large)] {
        assert_eq!(scans, 0, "history {history}: sequential scans of task");
        // 3 ids in task_in_progress, their modified_on by primary key, no workflow_to_task;
        // the index rows within the overlap of the newest one (live-1's) listed again
        assert_eq!(rows, 7.0, "history {history}: rows of the last poll");
    }
    eprintln!("idle polls with task_index: 1,000 finished tasks {small:?}; 10,000 {large:?}");
}

/// A task put back to work by a rerun is never in `task_in_progress` again
/// (`PostgresExecutionDAO.updateTask` only removes it, `:641`); its terminal write keeps the
/// `updateTime` of its last non-terminal write (`ExecutionDAOFacade.java:553-557`), so its
/// index row does not move past the overlap either. It is followed to its end because the
/// reader keeps reading what it last saw non-terminal.
#[tokio::test]
async fn a_rerun_task_is_followed_to_its_end_with_the_index_in_use() {
    let conductor = Conductor::with_task_index().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_millis(200)).await;
    let t0 = conductor.now().await;
    conductor.create_workflow("wf-re").await;
    conductor
        .create_task(&task_of("wf-re", "re-1", "SCHEDULED", t0))
        .await;
    let mut started = task_of("wf-re", "re-1", "IN_PROGRESS", t0);
    started["startTime"] = json!(t0);
    conductor.update_and_index(&started).await;
    let mut done = started.clone();
    done["status"] = json!("COMPLETED");
    done["endTime"] = json!(t0 + 5);
    conductor.update_and_index(&done).await;
    conductor.finish_workflow("wf-re").await;
    eventually(&app, "re-1", "completed", |v| v["status"] == "COMPLETED").await;
    index_used_becomes(&app, 1.0, Duration::from_secs(5)).await;
    // rerunWF's reset (WorkflowExecutorOps.rerunWF): scheduledTime now, start/end 0
    let t1 = conductor.now().await;
    let mut reset = task_of("wf-re", "re-1", "SCHEDULED", t1);
    reset["retryCount"] = json!(0);
    conductor.update_and_index(&reset).await;
    let mut again = reset.clone();
    again["status"] = json!("IN_PROGRESS");
    again["startTime"] = json!(t1);
    conductor.update_and_index(&again).await;
    eventually(&app, "re-1", "running again", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    // the worker takes longer than the overlap (10 s): the index row's update_time is old
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut finished = again.clone();
    finished["status"] = json!("COMPLETED");
    finished["endTime"] = json!(conductor.now().await);
    conductor.update_and_index(&finished).await;
    eventually(&app, "re-1", "completed again", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    assert_eq!(index_used(&app).await, 1.0, "the index stayed in use");
    app.shutdown().await;
}

/// A `task_index` table Conductor does not keep (indexing off, asynchronous, or on
/// Elasticsearch: a table left from an earlier configuration) is found out at the first
/// status change it misses, given up, and the sweep finds what it would have missed.
#[tokio::test]
async fn a_task_index_not_kept_is_given_up_and_the_sweep_finds_what_it_missed() {
    let conductor = Conductor::with_task_index().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_millis(200)).await;
    let now = conductor.now().await;
    conductor.create_workflow("wf-run").await;
    conductor
        .create_task(&task_of("wf-run", "run-1", "SCHEDULED", now))
        .await;
    // written without its index row: the index is not kept
    conductor
        .update_task(&task_of("wf-run", "run-1", "IN_PROGRESS", now))
        .await;
    eventually(&app, "run-1", "running", |v| v["status"] == "IN_PROGRESS").await;
    index_used_becomes(&app, 0.0, Duration::from_secs(5)).await;
    conductor.blink_workflow("wf-gone", "gone-1", now).await;
    eventually(&app, "gone-1", "completed, by the sweep", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    app.shutdown().await;
}

/// With the in-flight tables and `task_index`, start-up reads where the work is, not the
/// whole `task` table: no sequential scan of `task` (the time zone check takes the newest
/// rows through the index, the first pass the in-flight ids), on 10,000 finished tasks. A task
/// a late write put back to IN_PROGRESS after its workflow ended (conductor-oss#176: in
/// neither `task_in_progress` nor a running workflow) is still loaded, through the index's
/// status. (Fails on a start that scans `task`.)
#[tokio::test]
async fn start_up_reads_what_is_in_flight_without_scanning_task() {
    let conductor = Conductor::with_task_index().await;
    history_and_work(&conductor, 10_000).await;
    let now = conductor.now().await;
    conductor
        .index_task(&task_of("wf-live", "live-1", "IN_PROGRESS", now))
        .await;
    // conductor-oss#176: COMPLETED (task_in_progress row removed), then a worker's stale
    // IN_PROGRESS written over it, after the workflow ended
    conductor.create_workflow("wf-late").await;
    conductor
        .create_task(&task_of("wf-late", "late-1", "SCHEDULED", now))
        .await;
    let mut done = task_of("wf-late", "late-1", "COMPLETED", now);
    done["startTime"] = json!(now);
    conductor.update_and_index(&done).await;
    conductor.finish_workflow("wf-late").await;
    let late = task_of("wf-late", "late-1", "IN_PROGRESS", now + 10);
    conductor.update_and_index(&late).await;
    sqlx::raw_sql("ANALYZE")
        .execute(&conductor.pool)
        .await
        .unwrap();
    // the writes' own statistics reach the view within PostgreSQL's 10 s idle flush
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = conductor.task_seq_scans().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_secs(1)).await;
    eventually(&app, "live-1", "loaded", |v| v["status"] == "IN_PROGRESS").await;
    let v = eventually(&app, "late-1", "loaded", |v| !v.is_null()).await;
    assert_eq!(v["status"], "IN_PROGRESS", "{v}");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let scans = conductor.task_seq_scans().await - before;
    app.shutdown().await;
    assert_eq!(scans, 0, "sequential scans of task at start-up");
}
