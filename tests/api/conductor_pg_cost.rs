//! What an idle poll of Conductor's PostgreSQL costs (`--conductor-db`, issue 24,
//! `docs/engines/conductor-redis.md` §7.6): with Conductor's bookkeeping tables the task tail
//! reads what is in flight, not the `task` table's history. Conductor's writes are replayed
//! as `PostgresExecutionDAO` (b54f0d4e) makes them, one transaction each: `createTasks`
//! (`:143-176`: `task_scheduled`, `task`, `workflow_to_task`, `task_in_progress`, then the
//! private `updateTask`), `updateTask` (`:182`, `:626-646`: `task`, `task_in_progress` removed
//! when terminal, `workflow_to_task`), and the workflow writes (`:599-622`: `workflow`,
//! `workflow_def_to_workflow` on create, `workflow_pending` added or removed).

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};

use crate::conductor_db::{Conductor, CONDUCTOR_IN_FLIGHT_TABLES};
use crate::conductor_tail::{eventually, task_model};
use crate::helpers::{Backend, TestApp, TestDb};

impl Conductor {
    /// Conductor's tables, bookkeeping included.
    pub(crate) async fn with_in_flight_tables() -> Conductor {
        let c = Conductor::new().await;
        sqlx::raw_sql(CONDUCTOR_IN_FLIGHT_TABLES)
            .execute(&c.pool)
            .await
            .expect("create Conductor's bookkeeping tables");
        c
    }

    /// `createWorkflow` (`insertOrUpdateWorkflow(.., false)`, `:599-622`, `addWorkflow` `:659`).
    pub(crate) async fn create_workflow(&self, wf: &str) {
        let mut tx = self.pool.begin().await.unwrap();
        let doc = json!({"workflowId": wf, "workflowName": "media", "status": "RUNNING"});
        exec(
            &mut tx,
            "INSERT INTO workflow (workflow_id, correlation_id, json_data) VALUES ($1, NULL, $2)",
            &[wf, &doc.to_string()],
        )
        .await;
        exec(&mut tx, "INSERT INTO workflow_def_to_workflow (workflow_def, date_str, workflow_id) VALUES ('media', '20261207', $1)", &[wf]).await;
        exec(&mut tx, "INSERT INTO workflow_pending (workflow_type, workflow_id) VALUES ('media', $1) ON CONFLICT (workflow_type,workflow_id) DO NOTHING", &[wf]).await;
        tx.commit().await.unwrap();
    }

    /// `updateWorkflow` of a finished workflow (`updateWorkflow` `:673`, `removePendingWorkflow` `:714`).
    pub(crate) async fn finish_workflow(&self, wf: &str) {
        let mut tx = self.pool.begin().await.unwrap();
        let doc = json!({"workflowId": wf, "workflowName": "media", "status": "COMPLETED"});
        exec(&mut tx, "UPDATE workflow SET json_data = $2, modified_on = CURRENT_TIMESTAMP WHERE workflow_id = $1", &[wf, &doc.to_string()]).await;
        exec(
            &mut tx,
            "DELETE FROM workflow_pending WHERE workflow_type = 'media' AND workflow_id = $1",
            &[wf],
        )
        .await;
        tx.commit().await.unwrap();
    }

    /// `createTasks` for one task: `addScheduledTask`, `insertOrUpdateTaskData`,
    /// `addWorkflowToTaskMapping`, `addTaskInProgress`, then the private `updateTask`.
    pub(crate) async fn create_task(&self, doc: &Value) {
        let mut tx = self.pool.begin().await.unwrap();
        let (id, wf) = ids(doc);
        let key = format!("{}_0", doc["referenceTaskName"].as_str().unwrap());
        exec(&mut tx, "INSERT INTO task_scheduled (workflow_id, task_key, task_id) VALUES ($1, $2, $3) ON CONFLICT (workflow_id,task_key) DO NOTHING", &[&wf, &key, &id]).await;
        upsert_task(&mut tx, doc).await;
        exec(&mut tx, "INSERT INTO workflow_to_task (workflow_id, task_id) VALUES ($1, $2) ON CONFLICT (workflow_id,task_id) DO NOTHING", &[&wf, &id]).await;
        exec(&mut tx, "INSERT INTO task_in_progress (task_def_name, task_id, workflow_id) SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM task_in_progress WHERE task_def_name = $1 AND task_id = $2)", &[doc["taskDefName"].as_str().unwrap(), &id, &wf]).await;
        task_written(&mut tx, doc).await;
        tx.commit().await.unwrap();
    }

    /// The public `updateTask`: one transaction of the private one.
    pub(crate) async fn update_task(&self, doc: &Value) {
        let mut tx = self.pool.begin().await.unwrap();
        task_written(&mut tx, doc).await;
        tx.commit().await.unwrap();
    }

    /// A workflow of one task that starts and ends between two polls: `createWorkflow`,
    /// `createTasks`, the task's terminal `updateTask`, the workflow's terminal update.
    pub(crate) async fn blink_workflow(&self, wf: &str, task: &str, now: i64) {
        self.create_workflow(wf).await;
        self.create_task(&task_of(wf, task, "SCHEDULED", now)).await;
        self.update_task(&task_of(wf, task, "COMPLETED", now)).await;
        self.finish_workflow(wf).await;
    }

    /// Rows read from `task` so far: (seq_scan, seq_tup_read, idx_tup_fetch).
    pub(crate) async fn task_reads(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT COALESCE(seq_scan, 0), COALESCE(seq_tup_read, 0), COALESCE(idx_tup_fetch, 0) \
             FROM pg_stat_user_tables WHERE relname = 'task'",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

pub(crate) fn ids(doc: &Value) -> (String, String) {
    let id = doc["taskId"].as_str().unwrap().to_string();
    (id, doc["workflowInstanceId"].as_str().unwrap().to_string())
}

pub(crate) async fn exec(tx: &mut Transaction<'_, Postgres>, sql: &str, binds: &[&str]) {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.execute(&mut **tx).await.unwrap();
}

/// `insertOrUpdateTaskData` (`:722-745`): the UPDATE first, the INSERT when it hit nothing.
async fn upsert_task(tx: &mut Transaction<'_, Postgres>, doc: &Value) {
    let (id, _) = ids(doc);
    let json = doc.to_string();
    let hit = sqlx::query(
        "UPDATE task SET json_data = $1, modified_on = CURRENT_TIMESTAMP WHERE task_id = $2",
    )
    .bind(&json)
    .bind(&id)
    .execute(&mut **tx)
    .await
    .unwrap()
    .rows_affected();
    if hit == 0 {
        exec(tx, "INSERT INTO task (task_id, json_data, modified_on) VALUES ($1, $2, CURRENT_TIMESTAMP) ON CONFLICT (task_id) DO UPDATE SET json_data=excluded.json_data, modified_on=excluded.modified_on", &[&id, &json]).await;
    }
}

/// The private `updateTask(Connection, TaskModel)` (`:626-646`; no concurrency limit here).
async fn task_written(tx: &mut Transaction<'_, Postgres>, doc: &Value) {
    let (id, wf) = ids(doc);
    upsert_task(tx, doc).await;
    let terminal = !matches!(doc["status"].as_str(), Some("SCHEDULED" | "IN_PROGRESS"));
    if terminal {
        exec(
            tx,
            "DELETE FROM task_in_progress WHERE task_def_name = $1 AND task_id = $2",
            &[doc["taskDefName"].as_str().unwrap(), &id],
        )
        .await;
    }
    exec(tx, "INSERT INTO workflow_to_task (workflow_id, task_id) VALUES ($1, $2) ON CONFLICT (workflow_id,task_id) DO NOTHING", &[&wf, &id]).await;
}

/// A task of workflow `wf`.
pub(crate) fn task_of(wf: &str, id: &str, status: &str, now: i64) -> Value {
    let mut doc = task_model(id, "encode", status, now);
    doc["workflowInstanceId"] = json!(wf);
    if status == "COMPLETED" {
        doc["startTime"] = json!(now);
        doc["endTime"] = json!(now + 1);
    }
    doc
}

pub(crate) async fn app_polling(conductor: &Conductor, db: &TestDb, every: Duration) -> TestApp {
    let url = conductor.url.clone();
    TestApp::spawn_with(db, move |s| {
        s.engines.conductor.db = Some(url);
        s.engines.conductor.poll_interval = every;
    })
    .await
}

/// A task created and finished between two polls never shows in `task_in_progress`; its
/// running workflow's `workflow_to_task` rows find it, long before the first sweep (30 polls
/// of 1 s: the bound here is 10 s).
#[tokio::test]
async fn a_short_task_of_a_running_workflow_is_seen_without_a_sweep() {
    let conductor = Conductor::with_in_flight_tables().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_secs(1)).await;
    let now = conductor.now().await;
    conductor.create_workflow("wf-short").await;
    conductor
        .create_task(&task_of("wf-short", "short-1", "SCHEDULED", now))
        .await;
    conductor
        .update_task(&task_of("wf-short", "short-1", "COMPLETED", now))
        .await;
    eventually(&app, "short-1", "completed, through its workflow", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    app.shutdown().await;
}

/// A workflow that starts and ends between two polls is in none of the bookkeeping tables:
/// the sweep (every 30 polls of 200 ms here) lists it by `modified_on`.
#[tokio::test]
async fn a_workflow_that_starts_and_ends_between_polls_is_found_by_the_sweep() {
    let conductor = Conductor::with_in_flight_tables().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_millis(200)).await;
    let now = conductor.now().await;
    conductor.blink_workflow("wf-blink", "blink-1", now).await;
    eventually(&app, "blink-1", "completed, by the sweep", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    app.shutdown().await;
}

/// `history` finished workflows of one finished task each, as Conductor leaves them (task and
/// `workflow_to_task` rows; nothing pending, nothing in progress), written in one statement
/// each for speed; then one running workflow with three tasks, one of them started.
pub(crate) async fn history_and_work(conductor: &Conductor, history: i64) {
    let now = conductor.now().await;
    let done = task_of("WF", "ID", "COMPLETED", now).to_string();
    sqlx::query(
        "INSERT INTO task (task_id, json_data) SELECT 'old-' || i, \
         replace(replace($1, '\"ID\"', '\"old-' || i || '\"'), '\"WF\"', '\"wf-old-' || i || '\"') \
         FROM generate_series(1, $2) AS i",
    )
    .bind(&done)
    .bind(history)
    .execute(&conductor.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO workflow_to_task (workflow_id, task_id) \
         SELECT 'wf-old-' || i, 'old-' || i FROM generate_series(1, $1) AS i",
    )
    .bind(history)
    .execute(&conductor.pool)
    .await
    .unwrap();
    conductor.create_workflow("wf-live").await;
    for id in ["live-1", "live-2", "live-3"] {
        conductor
            .create_task(&task_of("wf-live", id, "SCHEDULED", now))
            .await;
    }
    conductor
        .update_task(&task_of("wf-live", "live-1", "IN_PROGRESS", now))
        .await;
    sqlx::raw_sql("ANALYZE")
        .execute(&conductor.pool)
        .await
        .unwrap();
}

/// Polls done so far.
pub(crate) async fn polls(app: &TestApp) -> f64 {
    app.metric_value("taskpulse_conductor_db_polls_total", &[("outcome", "ok")])
        .await
        .unwrap_or(0.0)
}

/// Waits until `n` more polls are done (each at most 3 s).
pub(crate) async fn polls_later(app: &TestApp, n: f64) -> f64 {
    let target = polls(app).await + n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(3.0 * n);
    loop {
        let p = polls(app).await;
        if p >= target {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} polls not done");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Idle polls on a history of `history` finished tasks: (rows of the last poll, seq scans of
/// `task`, rows those read, rows read by index, polls in the window).
async fn idle_cost(history: i64) -> (f64, i64, i64, i64, f64) {
    let conductor = Conductor::with_in_flight_tables().await;
    history_and_work(&conductor, history).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_polling(&conductor, &db, Duration::from_secs(1)).await;
    eventually(&app, "live-1", "read", |v| v["status"] == "IN_PROGRESS").await;
    // start-up's reads (one pass over `task`) reach the statistics within PostgreSQL's
    // 10 s idle flush; the first sweep is the 30th poll
    let p0 = polls_later(&app, 12.0).await;
    let before = conductor.task_reads().await;
    let p1 = polls_later(&app, 5.0).await;
    let rows = app
        .metric_value("taskpulse_conductor_db_poll_rows", &[])
        .await
        .expect("taskpulse_conductor_db_poll_rows");
    let after = conductor.task_reads().await;
    app.shutdown().await;
    (
        rows,
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        p1 - p0,
    )
}

/// The cost of an idle poll does not grow with the `task` table's history: no sequential
/// scan of `task`, and the same rows read on 1,000 and 10,000 finished tasks. (Fails on the
/// per-poll `modified_on` listing: one sequential scan of `task` per poll.)
#[tokio::test]
async fn an_idle_poll_reads_what_is_in_flight_whatever_the_history() {
    let small = idle_cost(1_000).await;
    let large = idle_cost(10_000).await;
    for (history, (rows, seq_scans, seq_rows, idx_rows, polls)) in [(1_000, small), (10_000, large)]
    {
        assert_eq!(
            (seq_scans, seq_rows),
            (0, 0),
            "history {history}: idle polls scanned task"
        );
        // 3 tasks in flight, all of the running workflow: 3 ids in task_in_progress, 1
        // workflow, 3 of its tasks, 3 modified_on read by primary key
        assert_eq!(rows, 10.0, "history {history}: rows of the last poll");
        // a backend flushes its statistics once a second, an idle one within 10 s: slack
        assert!(
            idx_rows as f64 <= 3.0 * (polls + 12.0),
            "history {history}: {idx_rows} task rows by index over {polls} polls"
        );
    }
    assert_eq!(small.0, large.0, "rows per idle poll, 1,000 vs 10,000");
    eprintln!("idle polls: 1,000 finished tasks {small:?}; 10,000 finished tasks {large:?}");
}
