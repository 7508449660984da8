//! The task lifecycle over HTTP (`docs/contract.md` §3), on both stores.

use serde_json::json;

use crate::helpers::{update, Backend, TestApp, TestDb};
use crate::store_test;

/// conductor-oss#176: COMPLETED, then a late IN_PROGRESS. The task stays COMPLETED in memory
/// and in the store, and the rejection is counted.
async fn late_in_progress_after_completed_is_rejected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut u = update("upload-135", "IN_PROGRESS");
    u["updateTime"] = json!(1_000);
    u["progressPercent"] = json!(50);
    app.ingest(&u).await;
    let mut done = update("upload-135", "COMPLETED");
    done["updateTime"] = json!(3_000);
    let r = app.ingest(&done).await;
    assert_eq!(r["accepted"], 1, "{r}");

    let mut late = update("upload-135", "IN_PROGRESS");
    late["updateTime"] = json!(2_000);
    let r = app.ingest(&late).await;
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");
    assert_eq!(r["rejected"][0]["taskId"], "upload-135");

    assert_eq!(app.task("upload-135").await["status"], "COMPLETED");
    app.settle().await;
    let stored = app.stored("upload-135").await.expect("stored");
    assert_eq!(stored.status.as_str(), "COMPLETED");
    let rejected = app
        .metric_value(
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")],
        )
        .await;
    assert_eq!(rejected, Some(1.0));
    // the completion's write used the task's slot: the rejection's line follows within one
    // throttle interval
    app.settle_throttled().await;
    let history = app.task("upload-135").await["history"].clone();
    assert_eq!(history[0]["outcome"], "rejected", "{history}");
    assert_eq!(history[0]["reason"], "terminal");
}
store_test!(late_in_progress_after_completed_is_rejected);

const TERMINAL: [&str; 7] = [
    "COMPLETED",
    "COMPLETED_WITH_ERRORS",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "TIMED_OUT",
    "CANCELED",
    "SKIPPED",
];
const ALL: [&str; 9] = [
    "SCHEDULED",
    "IN_PROGRESS",
    "COMPLETED",
    "COMPLETED_WITH_ERRORS",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "TIMED_OUT",
    "CANCELED",
    "SKIPPED",
];

/// Every terminal status is final: every other status after it is rejected as `terminal` and
/// counted by from/to; an identical repeat is a duplicate. Memory and store keep the terminal.
async fn terminal_statuses_are_final(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    for (n, from) in TERMINAL.iter().enumerate() {
        let id = format!("final-{n}");
        app.ingest(&update(&id, "IN_PROGRESS")).await;
        assert_eq!(app.ingest(&update(&id, from)).await["accepted"], 1);
        let r = app.ingest(&update(&id, from)).await;
        assert_eq!(r["duplicates"], 1, "identical repeat of {from}: {r}");
        let others: Vec<serde_json::Value> = ALL
            .iter()
            .filter(|to| *to != from)
            .map(|to| update(&id, to))
            .collect();
        let r = app.ingest(&json!(others)).await;
        assert_eq!(r["accepted"], 0, "{from}: {r}");
        let rejected = r["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), ALL.len() - 1);
        assert!(rejected.iter().all(|x| x["reason"] == "terminal"), "{r}");
        // a repeat of the same status that changes something is not identical either
        let mut changed = update(&id, from);
        changed["progressPercent"] = json!(12);
        assert_eq!(
            app.ingest(&changed).await["rejected"][0]["reason"],
            "terminal"
        );
        assert_eq!(app.task(&id).await["status"], *from);
        assert_eq!(app.stored(&id).await.unwrap().status.as_str(), *from);
    }
    let scrape = app.scrape().await;
    for from in TERMINAL {
        for to in ALL.iter().filter(|to| **to != from) {
            let v = crate::helpers::metric_value(
                &scrape,
                "taskpulse_transitions_rejected_total",
                &[("from", from), ("to", to)],
            );
            assert_eq!(v, Some(1.0), "{from} -> {to}");
        }
    }
}
store_test!(terminal_statuses_are_final);

/// Conductor stores a worker's IN_PROGRESS as SCHEDULED and requeues: the flapping is legal,
/// shown at once, each change written once the task's throttle interval allows (here the
/// changes come an interval apart, so each is), and the task can still finish.
async fn scheduled_in_progress_flapping_is_legal(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = std::time::Duration::from_millis(100)
    })
    .await;
    let mut t = 1_000;
    for status in [
        "SCHEDULED",
        "IN_PROGRESS",
        "SCHEDULED",
        "IN_PROGRESS",
        "SCHEDULED",
    ] {
        t += 10;
        let mut u = update("flap", status);
        u["updateTime"] = json!(t);
        assert_eq!(app.ingest(&u).await["accepted"], 1, "{status}");
        assert_eq!(app.task("flap").await["status"], status, "shown at once");
        app.settle_throttled().await;
        assert_eq!(app.stored("flap").await.unwrap().status.as_str(), status);
    }
    let mut u = update("flap", "COMPLETED");
    u["updateTime"] = json!(t + 10);
    assert_eq!(app.ingest(&u).await["accepted"], 1);
    let history = app.task("flap").await["history"].clone();
    assert_eq!(history.as_array().unwrap().len(), 6, "{history}");
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["outcome"] == "accepted"));
    assert_eq!(history[0]["from"], "SCHEDULED");
    assert_eq!(history[0]["to"], "COMPLETED");
}
store_test!(scheduled_in_progress_flapping_is_legal);

/// A task may be first seen in any status, terminal included.
async fn a_task_may_be_first_seen_finished(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    assert_eq!(
        app.ingest(&update("born-done", "COMPLETED")).await["accepted"],
        1
    );
    assert_eq!(
        app.stored("born-done").await.unwrap().status.as_str(),
        "COMPLETED"
    );
    let r = app.ingest(&update("born-done", "IN_PROGRESS")).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal");
}
store_test!(a_task_may_be_first_seen_finished);
