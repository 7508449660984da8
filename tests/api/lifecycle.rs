//! The task lifecycle over HTTP (contract 3), on both stores.

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
    let history = app.task("upload-135").await["history"].clone();
    assert_eq!(history[0]["outcome"], "rejected", "{history}");
    assert_eq!(history[0]["reason"], "terminal");
}
store_test!(late_in_progress_after_completed_is_rejected);
