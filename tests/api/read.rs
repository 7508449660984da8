//! Reading state (`docs/contract.md` §5): health, readiness, the task list and one task with its history
//! and attempts, on both stores.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::store::Store;

use crate::helpers::{update, Backend, TestApp, TestDb};
use crate::store_test;

/// `base` with the fields of `extra` set.
fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("extra is an object") {
        base[k] = v.clone();
    }
    base
}

/// Runs one statement on the app's own store.
async fn exec(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// GET returning status and JSON body.
async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = app.get(path).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The task ids of a `GET /api/v1/tasks` answer, checking `count` agrees.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let (status, body) = get_json(app, &format!("/api/v1/tasks{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    let tasks = body["tasks"].as_array().expect("tasks array");
    assert_eq!(body["count"], tasks.len(), "{query}: {body}");
    tasks
        .iter()
        .map(|t| t["taskId"].as_str().expect("taskId").to_string())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn health_and_readiness(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let (status, body) = get_json(&app, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");

    // a migration that is no longer recorded as applied
    exec(
        &app.store,
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .await;
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(msg.contains("migrat"), "the answer says why: {body}");

    // no migrations table at all
    exec(&app.store, "DROP TABLE _sqlx_migrations").await;
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("_sqlx_migrations") || msg.contains("migrat"),
        "the answer says why: {body}"
    );

    // alive all the same
    let (status, _) = get_json(&app, "/healthz").await;
    assert_eq!(status, 200);
}
store_test!(health_and_readiness);

async fn the_task_list_filters_and_limits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let now = taskpulse::now_ms();
    let tasks = [
        ("l-a1", "encode", "wf-A", "IN_PROGRESS"),
        ("l-a2", "encode", "wf-A", "SCHEDULED"),
        ("l-b1", "thumbnail", "wf-B", "IN_PROGRESS"),
        ("l-b2", "thumbnail", "wf-B", "COMPLETED"),
        ("l-c1", "encode", "wf-C", "IN_PROGRESS"),
    ];
    for (id, task_type, wf, status) in tasks {
        let u = with(
            update(id, status),
            json!({"taskType": task_type, "workflowId": wf}),
        );
        assert_eq!(app.ingest(&u).await["accepted"], 1);
        // distinct last-seen times, so "most recently updated first" is one order
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // one task with every field the list shows
    let full = with(
        update("l-full", "IN_PROGRESS"),
        json!({"taskType": "render", "workflowId": "wf-F", "progressPercent": 12.5,
               "progressMessage": "frame 125/1000", "workerId": "render-7", "retryCount": 2,
               "startTime": now - 1_000, "timeoutSeconds": 90, "waitUntil": now + 5_000}),
    );
    assert_eq!(app.ingest(&full).await["accepted"], 1);

    let all: BTreeSet<_> = listed(&app, "").await.into_iter().collect();
    assert_eq!(
        all,
        set(&["l-a1", "l-a2", "l-b1", "l-b2", "l-c1", "l-full"])
    );
    let ids = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        ids(listed(&app, "?status=IN_PROGRESS").await),
        set(&["l-a1", "l-b1", "l-c1", "l-full"])
    );
    assert_eq!(ids(listed(&app, "?status=COMPLETED").await), set(&["l-b2"]));
    assert_eq!(
        ids(listed(&app, "?taskType=encode").await),
        set(&["l-a1", "l-a2", "l-c1"])
    );
    assert_eq!(
        ids(listed(&app, "?workflowId=wf-B").await),
        set(&["l-b1", "l-b2"])
    );
    assert_eq!(
        ids(listed(&app, "?status=IN_PROGRESS&taskType=encode&workflowId=wf-A").await),
        set(&["l-a1"])
    );
    assert!(listed(&app, "?taskType=nothing-like-it").await.is_empty());
    // limit keeps the most recently updated
    assert_eq!(listed(&app, "?limit=2").await, ["l-full", "l-c1"]);
    assert_eq!(listed(&app, "?taskType=encode&limit=1").await, ["l-c1"]);
    assert_eq!(listed(&app, "?limit=1000").await.len(), 6);
    // pages: each `next` cursor gives the following page, in the same order, until none
    let everything = listed(&app, "?limit=1000").await;
    let mut paged = Vec::new();
    let mut query = "?limit=4".to_string();
    loop {
        let (status, body) = get_json(&app, &format!("/api/v1/tasks{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        let page = body["tasks"].as_array().unwrap();
        assert!(page.len() <= 4, "{body}");
        paged.extend(
            page.iter()
                .map(|t| t["taskId"].as_str().unwrap().to_string()),
        );
        match body["next"].as_str() {
            Some(next) => query = format!("?limit=4&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(
        paged, everything,
        "the pages together are the whole list, once"
    );

    // the fields of one listed task
    let (_, body) = get_json(&app, "/api/v1/tasks?workflowId=wf-F").await;
    let t = &body["tasks"][0];
    assert_eq!(t["taskId"], "l-full", "{body}");
    assert_eq!(t["progressPercent"], 12.5, "{t}");
    assert_eq!(t["progressMessage"], "frame 125/1000", "{t}");
    assert_eq!(t["workerId"], "render-7", "{t}");
    assert_eq!(t["attempt"], 2, "{t}");
    assert_eq!(t["deadline"], now - 1_000 + 90_000, "{t}");
    assert_eq!(t["waitUntil"], now + 5_000, "{t}");
    assert!(
        t.as_object().unwrap().contains_key("predictedCompletion"),
        "{t}"
    );

    // bad parameters: 400 with a message
    for query in [
        "?status=RUNNING",
        "?status=in_progress",
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?limit=10001",
        "?limit=1001",
        "?cursor=not-a-cursor",
        "?limit=1.5",
    ] {
        let (status, body) = get_json(&app, &format!("/api/v1/tasks{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        let param = if query.contains("status") {
            "status"
        } else if query.contains("cursor") {
            "cursor"
        } else {
            "limit"
        };
        assert!(
            msg.contains(param),
            "{query}: the message names {param}: {body}"
        );
    }
}
store_test!(the_task_list_filters_and_limits);

async fn one_task_with_history_and_attempts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(200);
    })
    .await;
    let start = taskpulse::now_ms() - 60_000;
    let step = |status: &str, extra: Value| with(update("det-1", status), extra);
    let steps = [
        step(
            "SCHEDULED",
            json!({"retryCount": 0, "updateTime": 1_000, "timeoutSeconds": 600,
                   "referenceTaskName": "encode_ref", "seq": 3}),
        ),
        step(
            "IN_PROGRESS",
            json!({"workerId": "worker-a", "retryCount": 0, "startTime": start,
                   "updateTime": 2_000, "progressPercent": 25, "progressMessage": "chunk 1/4"}),
        ),
        // Conductor requeues the task; worker-b takes it over
        step("SCHEDULED", json!({"updateTime": 3_000})),
        step(
            "IN_PROGRESS",
            json!({"workerId": "worker-b", "retryCount": 0, "updateTime": 4_000,
                   "progressPercent": 50, "progressMessage": "chunk 2/4"}),
        ),
    ];
    // each step a throttle interval after the last, so each is written with its history line
    // and its attempt (inside one interval they would share a write)
    for s in &steps {
        assert_eq!(app.ingest(s).await["accepted"], 1, "{s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // a late update from a worker that lost the task
    let r = app
        .ingest(&step(
            "IN_PROGRESS",
            json!({"workerId": "worker-x", "updateTime": 3_500, "progressPercent": 99}),
        ))
        .await;
    assert_eq!(r["rejected"][0]["reason"], "stale", "{r}");
    // the retry, run by worker-c
    let r = app
        .ingest(&step(
            "IN_PROGRESS",
            json!({"workerId": "worker-c", "retryCount": 1, "updateTime": 5_000,
                   "progressPercent": 10, "progressMessage": "retry: chunk 1/4"}),
        ))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");

    let t = app.task("det-1").await;
    assert_eq!(t["status"], "IN_PROGRESS", "{t}");
    assert_eq!(t["progressPercent"], 10.0, "{t}");
    assert_eq!(t["progressMessage"], "retry: chunk 1/4", "{t}");
    assert_eq!(t["workerId"], "worker-c", "{t}");
    assert_eq!(t["attempt"], 1, "{t}");
    assert_eq!(t["retryCount"], 1, "{t}");
    assert_eq!(t["startTime"], start, "{t}");
    assert_eq!(t["timeoutSeconds"], 600, "{t}");
    assert_eq!(t["deadline"], start + 600 * 1000, "{t}");
    assert_eq!(t["updateTime"], 5_000, "{t}");
    assert_eq!(t["referenceTaskName"], "encode_ref", "{t}");
    assert_eq!(t["seq"], 3, "{t}");
    assert!(t["waitUntil"].is_null(), "{t}");

    // the retry's worker reaches the store with the throttled write
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let attempts = loop {
        let t = app.task("det-1").await;
        if t["attempts"].as_array().map(Vec::len) == Some(3) {
            break t["attempts"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts never reached 3: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let runs: Vec<(i64, String)> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["workerId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected_runs: Vec<(i64, String)> = vec![
        (0, "worker-a".into()),
        (0, "worker-b".into()),
        (1, "worker-c".into()),
    ];
    assert_eq!(runs, expected_runs, "{attempts}");

    app.settle().await;
    let history = app.task("det-1").await["history"].clone();
    let events: Vec<(String, Value, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap().to_string(),
                e["from"].clone(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ev = |o: &str, from: Value, to: &str| (o.to_string(), from, to.to_string());
    assert_eq!(
        events,
        vec![
            ev("rejected", json!("IN_PROGRESS"), "IN_PROGRESS"),
            ev("accepted", json!("SCHEDULED"), "IN_PROGRESS"),
            ev("accepted", json!("IN_PROGRESS"), "SCHEDULED"),
            ev("accepted", json!("SCHEDULED"), "IN_PROGRESS"),
            ev("accepted", Value::Null, "SCHEDULED"),
        ],
        "newest first: {history}"
    );
    assert_eq!(history[0]["reason"], "stale", "{history}");
    assert_eq!(history[0]["workerId"], "worker-x", "{history}");
    assert_eq!(history[1]["workerId"], "worker-b", "{history}");
    assert_eq!(history[3]["workerId"], "worker-a", "{history}");

    // a WAIT task's wake-up time; a deadline counted from first sight without startTime
    let wake = taskpulse::now_ms() + 30_000;
    let r = app
        .ingest(&json!([
            with(
                update("det-wait", "IN_PROGRESS"),
                json!({"taskType": "WAIT", "waitUntil": wake})
            ),
            with(
                update("det-nostart", "IN_PROGRESS"),
                json!({"timeoutSeconds": 60})
            ),
        ]))
        .await;
    assert_eq!(r["accepted"], 2, "{r}");
    let t = app.task("det-wait").await;
    assert_eq!(t["waitUntil"], wake, "{t}");
    assert!(t["deadline"].is_null(), "no timeout, no deadline: {t}");
    let t = app.task("det-nostart").await;
    assert_eq!(
        t["deadline"].as_i64(),
        t["firstSeen"].as_i64().map(|f| f + 60_000),
        "{t}"
    );

    // the task finishes; every worker goes away, and so does the process
    let r = app
        .ingest(&step(
            "COMPLETED",
            json!({"updateTime": 6_000, "progressPercent": 100}),
        ))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");
    let settings = app.settings.clone();
    app.shutdown().await;
    let app = TestApp::start(settings).await;
    let t = app.task("det-1").await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(t["attempts"], attempts, "attempts are kept: {t}");
    assert_eq!(t["history"].as_array().map(Vec::len), Some(6), "{t}");
    assert_eq!(t["history"][0]["to"], "COMPLETED", "{t}");
    let scrape = app.scrape().await;
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "taskpulse_worker_tasks"
                && s.labels.get("worker_id") == Some("worker-a")),
        "worker-a, with nothing in flight, is gone from the worker gauges"
    );

    // unknown id
    let (status, body) = get_json(&app, "/api/v1/tasks/no-such-task").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-task"),
        "{body}"
    );
}
store_test!(one_task_with_history_and_attempts);

async fn finished_tasks_past_retention_are_served_from_the_store(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let r = app
        .ingest(&json!([
            with(
                update("ret-done", "IN_PROGRESS"),
                json!({"workerId": "w-ret", "updateTime": 1_000, "progressPercent": 90})
            ),
            with(
                update("ret-live", "IN_PROGRESS"),
                json!({"progressPercent": 5})
            ),
        ]))
        .await;
    assert_eq!(r["accepted"], 2, "{r}");
    let r = app
        .ingest(&with(
            update("ret-done", "COMPLETED"),
            json!({"updateTime": 2_000, "progressPercent": 100}),
        ))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");

    // a restart within the retention (default 10 minutes) reloads the finished task
    let settings = app.settings.clone();
    app.shutdown().await;
    let app = TestApp::start(settings.clone()).await;
    let listed_ids: BTreeSet<_> = listed(&app, "").await.into_iter().collect();
    assert_eq!(listed_ids, set(&["ret-done", "ret-live"]));

    // past the retention it stays in the store only
    tokio::time::sleep(Duration::from_millis(30)).await;
    app.shutdown().await;
    let mut short = settings;
    short.pipeline.terminal_retention = Duration::from_millis(10);
    let app = TestApp::start(short).await;
    assert_eq!(listed(&app, "").await, ["ret-live"]);
    assert!(listed(&app, "?status=COMPLETED").await.is_empty());
    let t = app.task("ret-done").await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(t["progressPercent"], 100.0, "{t}");
    assert_eq!(t["updateTime"], 2_000, "{t}");
    assert_eq!(t["workerId"], "w-ret", "{t}");
    assert_eq!(t["history"].as_array().map(Vec::len), Some(2), "{t}");
    assert_eq!(t["history"][0]["to"], "COMPLETED", "{t}");
    assert_eq!(t["attempts"][0]["workerId"], "w-ret", "{t}");
    assert_eq!(app.task("ret-live").await["progressPercent"], 5.0);
}
store_test!(finished_tasks_past_retention_are_served_from_the_store);

/// Contract 3.1: every accepted update is visible in the read API at once. A new attempt that
/// arrives as a progress update (same status, new retryCount and worker) must be listed right
/// away, not only once its throttled store write happens.
async fn a_new_attempt_is_listed_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_secs(2);
    })
    .await;
    let run = |retry: i64, worker: &str, t: i64| {
        with(
            update("att-1", "IN_PROGRESS"),
            json!({"retryCount": retry, "workerId": worker, "updateTime": t, "progressPercent": 1}),
        )
    };
    assert_eq!(app.ingest(&run(0, "worker-a", 1_000)).await["accepted"], 1);
    assert_eq!(app.ingest(&run(1, "worker-b", 2_000)).await["accepted"], 1);
    let t = app.task("att-1").await;
    assert_eq!(t["workerId"], "worker-b", "{t}");
    assert_eq!(t["attempt"], 1, "{t}");
    let runs: Vec<(Value, Value)> = t["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].clone(), a["workerId"].clone()))
        .collect();
    assert_eq!(
        runs,
        vec![(json!(0), json!("worker-a")), (json!(1), json!("worker-b"))],
        "the accepted attempt 1 by worker-b is listed at once: {t}"
    );
}
store_test!(a_new_attempt_is_listed_at_once);

/// A rejected update is in the task's history at once, though its line waits in memory for
/// the task's write slot (one history write per task per interval): the conductor-oss#176
/// evidence must not lag by a throttle interval. Later rejections fold into the same line.
async fn a_rejected_update_is_in_the_history_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_secs(3600);
    })
    .await;
    let done = with(update("rej-1", "COMPLETED"), json!({"updateTime": 2_000}));
    assert_eq!(app.ingest(&done).await["accepted"], 1);
    let late = with(update("rej-1", "IN_PROGRESS"), json!({"updateTime": 3_000}));
    for _ in 0..3 {
        let r = app.ingest(&late).await;
        assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");
    }
    let t = app.task("rej-1").await;
    let history = t["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{t}");
    assert_eq!(history[0]["outcome"], "rejected", "{t}");
    assert_eq!(history[0]["to"], "IN_PROGRESS", "{t}");
    assert_eq!(history[0]["count"], 3, "{t}");
    assert_eq!(history[1]["outcome"], "accepted", "{t}");
    assert_eq!(history[1]["to"], "COMPLETED", "{t}");
}
store_test!(a_rejected_update_is_in_the_history_at_once);

/// Restarts `app` with a very short terminal retention, after its finished tasks are past it,
/// so they are in the store only.
async fn restart_past_retention(app: TestApp) -> TestApp {
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut settings = app.settings.clone();
    app.shutdown().await;
    settings.pipeline.terminal_retention = Duration::from_millis(10);
    let app = TestApp::start(settings).await;
    assert!(listed(&app, "?status=COMPLETED").await.is_empty());
    app
}

/// Contract 3: terminal statuses are final, however long ago the task finished. A late update
/// for a task that is only in the store is rejected as `terminal`, and it is recorded and
/// counted as a rejection, not as an accepted transition.
async fn a_late_update_for_a_task_past_retention_is_recorded_as_rejected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let done = with(update("old-1", "COMPLETED"), json!({"updateTime": 2_000}));
    assert_eq!(app.ingest(&done).await["accepted"], 1);
    let app = restart_past_retention(app).await;
    app.settle().await;
    let version = app.stored_version("old-1").await;

    let late = with(
        update("old-1", "IN_PROGRESS"),
        json!({"updateTime": 3_000, "progressPercent": 50}),
    );
    let r = app.ingest(&late).await;
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");
    app.settle().await;
    let rec = app.stored("old-1").await.expect("stored");
    assert_eq!(rec.status.as_str(), "COMPLETED");
    assert_eq!(app.stored_version("old-1").await, version);

    let t = app.task("old-1").await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let history = t["history"].as_array().unwrap();
    assert!(
        !history
            .iter()
            .any(|e| e["outcome"] == "accepted" && e["to"] == "IN_PROGRESS"),
        "the rejected IN_PROGRESS must not show up as an accepted transition: {t}"
    );
    assert_eq!(history[0]["outcome"], "rejected", "{t}");
    assert_eq!(history[0]["reason"], "terminal", "{t}");
    assert_eq!(
        app.metric_value(
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")],
        )
        .await,
        Some(1.0),
        "the rejection is counted"
    );
}
store_test!(a_late_update_for_a_task_past_retention_is_recorded_as_rejected);

/// Contract 3: an identical repeat of a terminal update is a duplicate, also when the task has
/// left memory (the SDK retries completions).
async fn an_identical_repeat_for_a_task_past_retention_is_a_duplicate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let done = with(
        update("old-2", "COMPLETED"),
        json!({"updateTime": 2_000, "startTime": 1_000}),
    );
    assert_eq!(app.ingest(&done).await["accepted"], 1);
    let app = restart_past_retention(app).await;

    let r = app.ingest(&done).await;
    assert_eq!(r["duplicates"], 1, "{r}");
    assert_eq!(r["accepted"], 0, "{r}");
    app.settle().await;
    let t = app.task("old-2").await;
    assert_eq!(
        t["history"].as_array().map(Vec::len),
        Some(1),
        "a duplicate adds no transition: {t}"
    );
    assert_eq!(
        app.metric_value(
            "taskpulse_task_duration_seconds_count",
            &[("task_type", "encode"), ("status", "COMPLETED")],
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "a duplicate completion is not observed again"
    );
}
store_test!(an_identical_repeat_for_a_task_past_retention_is_a_duplicate);

/// A browser resolves `.` and `..` path segments (`%2E%2E` too) before it sends a URL, so
/// `GET /api/v1/tasks/..` can never reach such a task from the status page. The query form
/// `GET /api/v1/task?taskId=ID` answers as the path form does, for every id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_id_can_be_read_by_query() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let ids = [".", "..", "a/b", "x?y=1#z", "%2E%2E", " spaced ", "ünï"];
    for id in ids {
        let r = app
            .ingest(&with(
                update(id, "IN_PROGRESS"),
                json!({"workerId": "w-dots", "progressPercent": 30}),
            ))
            .await;
        assert_eq!(r["accepted"], 1, "{id}: {r}");
    }
    app.settle().await;
    for id in ids {
        let query = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        let (status, t) = get_json(&app, &format!("/api/v1/task?taskId={query}")).await;
        assert_eq!(status, 200, "{id}: {t}");
        assert_eq!(t["taskId"], id, "{t}");
        assert_eq!(t["workflowId"], format!("wf-{id}"), "{t}");
        assert_eq!(t["attempts"][0]["workerId"], "w-dots", "{t}");
        assert_eq!(t["history"][0]["to"], "IN_PROGRESS", "{t}");
    }
    // the same answer as the path form, where a path can carry the id
    let (_, by_path) = get_json(&app, "/api/v1/tasks/a%2Fb").await;
    let (_, by_query) = get_json(&app, "/api/v1/task?taskId=a%2Fb").await;
    assert_eq!(by_path["taskId"], by_query["taskId"]);
    assert_eq!(by_path["history"], by_query["history"]);
    let (status, b) = get_json(&app, "/api/v1/task?taskId=nobody").await;
    assert_eq!(status, 404, "{b}");
    for missing in ["/api/v1/task", "/api/v1/task?taskId="] {
        let (status, b) = get_json(&app, missing).await;
        assert_eq!(status, 400, "{missing}: {b}");
        assert!(b["error"].as_str().unwrap().contains("taskId"), "{b}");
    }
}
