//! Throttled progress writes (`docs/contract.md` §3.1), on both stores. The `version` column counts how
//! many times a task's row was written, so "stored writes" is read from the store itself.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestDb};
use crate::store_test;

fn progress(id: &str, p: f64) -> serde_json::Value {
    json!({"taskId": id, "workflowId": "wf", "status": "IN_PROGRESS", "progressPercent": p})
}

fn new_task(id: &str) -> serde_json::Value {
    json!({"taskId": id, "workflowId": "wf", "taskType": "encode", "workflowType": "media",
           "status": "IN_PROGRESS", "progressPercent": 0})
}

/// Waits until the stored progress of `id` is `want`, or panics after `within`.
async fn wait_for_stored_progress(app: &TestApp, id: &str, want: f32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = app.stored(id).await.and_then(|r| r.progress);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored progress of {id} is {got:?}, expected {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A burst of 100 progress updates inside one interval: at most 2 stored writes, and the value
/// stored afterwards is the last one sent.
async fn burst_of_100_gives_at_most_two_writes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_secs(2)
    })
    .await;
    app.ingest(&new_task("burst")).await; // write 1: the task is new
    let sent_at = tokio::time::Instant::now();
    for i in 1..=100 {
        let r = app.ingest(&progress("burst", i as f64 * 0.9)).await;
        assert_eq!(r["accepted"], 1, "{r}");
    }
    assert!(
        sent_at.elapsed() < Duration::from_secs(2),
        "the burst must fit in one interval for this test to mean anything"
    );
    // memory is current at once
    assert_eq!(app.task("burst").await["progressPercent"], json!(90.0));
    wait_for_stored_progress(&app, "burst", 90.0, Duration::from_secs(5)).await;
    app.settle().await;
    let writes = app.stored_version("burst").await;
    assert!(
        writes <= 2,
        "{writes} stored writes for a burst inside one interval"
    );
    let coalesced = app
        .metric_value(
            "taskpulse_progress_updates_total",
            &[("outcome", "coalesced")],
        )
        .await
        .unwrap();
    assert!(coalesced >= 99.0, "coalesced = {coalesced}");
}
store_test!(burst_of_100_gives_at_most_two_writes);

/// Once a task has been quiet for an interval, its next progress update is written at once;
/// the rest of the interval coalesces.
async fn first_progress_after_quiet_is_written_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(400)
    })
    .await;
    app.ingest(&new_task("q")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.ingest(&progress("q", 10.0)).await;
    app.settle().await;
    assert_eq!(app.stored("q").await.unwrap().progress, Some(10.0));
    assert_eq!(app.stored_version("q").await, 2);
    for p in [11.0, 12.0, 13.0] {
        app.ingest(&progress("q", p)).await;
    }
    app.settle().await;
    assert_eq!(
        app.stored("q").await.unwrap().progress,
        Some(10.0),
        "inside the interval nothing more is written"
    );
    wait_for_stored_progress(&app, "q", 13.0, Duration::from_secs(3)).await;
    assert_eq!(app.stored_version("q").await, 3);
}
store_test!(first_progress_after_quiet_is_written_at_once);

/// Progress still waiting when COMPLETED arrives goes out with the completion, and nothing is
/// written for the task after it.
async fn waiting_progress_is_never_written_after_completion(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(600)
    })
    .await;
    app.ingest(&new_task("o")).await;
    for p in [10.0, 20.0, 30.0] {
        app.ingest(&progress("o", p)).await;
    }
    let r = app
        .ingest(&json!({"taskId": "o", "workflowId": "wf", "status": "COMPLETED"}))
        .await;
    assert_eq!(r["accepted"], 1);
    // the 200 for a terminal update comes after its commit
    let stored = app.stored("o").await.unwrap();
    assert_eq!(stored.status.as_str(), "COMPLETED");
    assert_eq!(
        stored.progress,
        Some(30.0),
        "the waiting progress rides along"
    );
    let version = app.stored_version("o").await;
    // past the moment the coalesced write would have fired
    tokio::time::sleep(Duration::from_millis(900)).await;
    app.settle().await;
    let after = app.stored("o").await.unwrap();
    assert_eq!(after.status.as_str(), "COMPLETED");
    assert_eq!(after.progress, Some(30.0));
    assert_eq!(
        app.stored_version("o").await,
        version,
        "a write happened after the terminal write"
    );
}
store_test!(waiting_progress_is_never_written_after_completion);

/// A non-terminal status change (IN_PROGRESS -> SCHEDULED, as Conductor requeues a worker's
/// task on every update) is written like progress: shown at once, stored within the interval;
/// a terminal update is written at once and carries everything waiting.
async fn status_flaps_are_throttled_and_terminal_updates_written_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_secs(60)
    })
    .await;
    app.ingest(&new_task("s")).await;
    app.settle().await;
    let first = app.stored_version("s").await;
    app.ingest(&progress("s", 40.0)).await;
    let r = app
        .ingest(&json!({"taskId": "s", "workflowId": "wf", "status": "SCHEDULED"}))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");
    assert_eq!(app.task("s").await["status"], "SCHEDULED", "shown at once");
    app.settle().await;
    assert_eq!(
        app.stored_version("s").await,
        first,
        "inside the interval neither the progress nor the flap is written"
    );
    app.ingest(&json!({"taskId": "s", "workflowId": "wf", "status": "COMPLETED"}))
        .await;
    let stored = app.stored("s").await.unwrap();
    assert_eq!(
        stored.status.as_str(),
        "COMPLETED",
        "written before the answer"
    );
    assert_eq!(stored.progress, Some(40.0), "carrying the waiting progress");
    assert_eq!(app.stored_version("s").await, first + 1, "in one write");
}
store_test!(status_flaps_are_throttled_and_terminal_updates_written_at_once);

/// `--progress-min-delta`: a change smaller than the delta is not worth a write of its own,
/// but it is kept and rides along with the task's next write.
async fn small_changes_ride_along_with_the_next_write(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(200);
        s.pipeline.progress_min_delta = 5.0;
    })
    .await;
    app.ingest(&new_task("d")).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    app.ingest(&progress("d", 3.0)).await; // below the delta from 0
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.settle().await;
    assert_eq!(app.stored("d").await.unwrap().progress, Some(0.0));
    assert_eq!(
        app.task("d").await["progressPercent"],
        json!(3.0),
        "memory is current"
    );
    app.ingest(&progress("d", 9.0)).await; // moves 9 points: written
    app.settle().await;
    assert_eq!(app.stored("d").await.unwrap().progress, Some(9.0));
    tokio::time::sleep(Duration::from_millis(250)).await;
    app.ingest(&progress("d", 10.0)).await; // below the delta again
    app.ingest(&json!({"taskId": "d", "workflowId": "wf", "status": "COMPLETED"}))
        .await;
    assert_eq!(app.stored("d").await.unwrap().progress, Some(10.0));
}
store_test!(small_changes_ride_along_with_the_next_write);

/// A graceful shutdown writes every coalesced value; a restart rebuilds memory from the store.
async fn shutdown_flushes_and_restart_rebuilds(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_secs(3600)
    })
    .await;
    for id in ["a", "b", "c"] {
        app.ingest(&new_task(id)).await;
        for p in [5.0, 15.0, 25.0] {
            app.ingest(&progress(id, p)).await;
        }
    }
    app.ingest(&json!({"taskId": "c", "workflowId": "wf", "status": "FAILED"}))
        .await;
    let store = db.store().await;
    assert_eq!(
        store.get_task("a").await.unwrap().unwrap().progress,
        Some(0.0)
    );
    let settings = app.settings.clone();
    app.shutdown().await;
    for id in ["a", "b"] {
        assert_eq!(
            store.get_task(id).await.unwrap().unwrap().progress,
            Some(25.0),
            "{id}"
        );
    }

    let app = TestApp::start(settings).await;
    let a = app.task("a").await;
    assert_eq!(a["status"], "IN_PROGRESS");
    assert_eq!(a["progressPercent"], json!(25.0));
    assert_eq!(app.task("c").await["status"], "FAILED");
    let ratio = app
        .metric_value("taskpulse_task_progress_ratio", &[("task_id", "b")])
        .await;
    assert_eq!(ratio, Some(0.25));
    // the rebuilt task keeps obeying the lifecycle
    let r = app
        .ingest(&json!({"taskId": "c", "workflowId": "wf", "status": "IN_PROGRESS"}))
        .await;
    assert_eq!(r["rejected"][0]["reason"], "terminal");
}
store_test!(shutdown_flushes_and_restart_rebuilds);

/// Many tasks in one NDJSON body are batched into few transactions and all stored.
async fn many_new_tasks_in_one_body_are_all_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let body: String = (0..3000)
        .map(|i| {
            format!(
                "{{\"taskId\":\"bulk-{i}\",\"workflowId\":\"wf-{}\",\"taskType\":\"t\",\"status\":\"SCHEDULED\"}}\n",
                i / 10
            )
        })
        .collect();
    let resp = app
        .post_raw(body.into_bytes(), "application/x-ndjson")
        .await;
    assert_eq!(resp.status(), 200);
    let r: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(r["accepted"], 3000, "{r}");
    for i in [0, 1499, 2999] {
        let stored = app.stored(&format!("bulk-{i}")).await;
        assert!(stored.is_some(), "bulk-{i} acknowledged but not stored");
    }
    let status_writes = app
        .metric_value("taskpulse_store_writes_total", &[("kind", "status")])
        .await;
    assert_eq!(status_writes, Some(3000.0));
}
store_test!(many_new_tasks_in_one_body_are_all_stored);
