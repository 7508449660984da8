//! Timeout prediction end to end: progress samples in, predicted completion and predicted
//! timeouts out of `/metrics` and the read API.

use serde_json::json;

use crate::helpers::{metric_value, Backend, TestApp, TestDb};
use crate::store_test;

/// Reports progress at engine times start, start+50s, start+100s.
async fn report(app: &TestApp, id: &str, start: i64, progress: [f64; 3]) {
    for (i, p) in progress.iter().enumerate() {
        let r = app
            .ingest(&json!({"taskId": id, "workflowId": "wf-p", "taskType": "render", "workflowType": "video",
                            "status": "IN_PROGRESS", "startTime": start, "timeoutSeconds": 300,
                            "updateTime": start + i as i64 * 50_000, "progressPercent": p}))
            .await;
        assert_eq!(r["accepted"], 1, "{r}");
    }
}

/// The case: a task at 10% after 100 s with a 300 s timeout is predicted to time out,
/// while one at 90% is not.
async fn ten_percent_after_100s_of_300s_times_out_ninety_does_not(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let start = taskpulse::now_ms() - 100_000;
    report(&app, "slow", start, [0.0, 5.0, 10.0]).await;
    report(&app, "fast", start, [0.0, 45.0, 90.0]).await;
    app.ingest(&json!({"taskId": "one-sample", "workflowId": "wf-p", "taskType": "render", "workflowType": "video",
                       "status": "IN_PROGRESS", "progressPercent": 50}))
        .await;

    let scrape = app.scrape().await;
    let predicted = |id: &str| {
        metric_value(
            &scrape,
            "taskpulse_task_predicted_completion_timestamp_seconds",
            &[("task_id", id)],
        )
    };
    let deadline = (start as f64 / 1000.0) + 300.0;
    let slow = predicted("slow").expect("a prediction for the slow task");
    assert!(
        (slow - (start as f64 / 1000.0 + 1000.0)).abs() < 5.0,
        "slow finishes ~1000 s after start, got {}",
        slow - start as f64 / 1000.0
    );
    assert!(slow > deadline);
    let fast = predicted("fast").expect("a prediction for the fast task");
    assert!(
        (fast - (start as f64 / 1000.0 + 111.1)).abs() < 2.0,
        "fast finishes ~111 s after start, got {}",
        fast - start as f64 / 1000.0
    );
    assert!(fast < deadline);
    assert_eq!(predicted("one-sample"), None, "one sample shows no rate");
    assert_eq!(
        metric_value(
            &scrape,
            "taskpulse_tasks_predicted_timeout",
            &[("workflow_type", "video"), ("task_type", "render")]
        ),
        Some(1.0)
    );
    let deadline_series = metric_value(
        &scrape,
        "taskpulse_task_deadline_timestamp_seconds",
        &[("task_id", "slow")],
    );
    assert_eq!(deadline_series, Some(deadline));

    let view = app.task("slow").await;
    assert_eq!(
        view["predictedCompletion"]
            .as_i64()
            .map(|p| (p - start) / 1000),
        Some(1000),
        "{view}"
    );
    assert_eq!(view["deadline"], json!(start + 300_000));

    // once the slow task ends, its series and its count go away
    app.ingest(&json!({"taskId": "slow", "workflowId": "wf-p", "status": "TIMED_OUT"}))
        .await;
    let scrape = app.scrape().await;
    assert_eq!(
        metric_value(
            &scrape,
            "taskpulse_task_predicted_completion_timestamp_seconds",
            &[("task_id", "slow")]
        ),
        None
    );
    assert_eq!(
        metric_value(
            &scrape,
            "taskpulse_tasks_predicted_timeout",
            &[("workflow_type", "video"), ("task_type", "render")]
        ),
        Some(0.0)
    );
}
store_test!(ten_percent_after_100s_of_300s_times_out_ninety_does_not);

/// A stalled task's old rate is stale: no prediction for it.
async fn stalled_tasks_get_no_prediction(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.metrics.stall_after = std::time::Duration::from_millis(200)
    })
    .await;
    let start = taskpulse::now_ms() - 100_000;
    report(&app, "stuck", start, [0.0, 5.0, 10.0]).await;
    assert!(app
        .metric_value(
            "taskpulse_task_predicted_completion_timestamp_seconds",
            &[("task_id", "stuck")]
        )
        .await
        .is_some());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let scrape = app.scrape().await;
    assert_eq!(
        metric_value(
            &scrape,
            "taskpulse_task_predicted_completion_timestamp_seconds",
            &[("task_id", "stuck")]
        ),
        None
    );
    assert_eq!(
        metric_value(
            &scrape,
            "taskpulse_tasks_stalled",
            &[("task_type", "render")]
        ),
        Some(1.0)
    );
}
store_test!(stalled_tasks_get_no_prediction);
