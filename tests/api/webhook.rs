//! Conductor's task status webhook over HTTP, on both stores.

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestDb};
use crate::store_test;

fn notification(task_id: &str, status: &str, update_time: &str, output: &str) -> serde_json::Value {
    json!({
        "workflowId": "wf-hook", "workflowType": "media", "correlationId": "c-1",
        "scheduledTime": "2026-11-21T10:00:00.000Z", "startTime": "2026-11-21T10:00:01.000Z",
        "updateTime": update_time, "endTime": "1970-01-01T00:00:00.000Z",
        "status": status, "executionTime": 0, "queueWaitTime": 1000,
        "taskDefName": "transcode", "taskType": "transcode",
        "input": "{\"file\":\"a.mp4\"}", "output": output,
        "taskId": task_id, "workflowPriority": 0,
        "workflowTaskType": "SIMPLE", "referenceTaskName": "transcode_ref",
        "retryCount": 0, "taskDescription": "transcode the upload"
    })
}

/// Notifications go through the same lifecycle and throttle as everything else, with
/// source="conductor_webhook"; progress is read from inside the output string.
async fn notifications_are_ingested_with_their_progress(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let post = |body: serde_json::Value| {
        let app = &app;
        async move {
            let resp = app
                .client
                .post(app.url("/api/v1/conductor/task-status"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let r = post(notification(
        "hook-1",
        "IN_PROGRESS",
        "2026-11-21T10:00:05.000Z",
        "{\"progress\":30,\"progressMessage\":\"3 of 10 segments\"}",
    ))
    .await;
    assert_eq!(r["accepted"], 1, "{r}");
    let task = app.task("hook-1").await;
    assert_eq!(task["progressPercent"], json!(30.0));
    assert_eq!(task["progressMessage"], "3 of 10 segments");
    assert_eq!(task["taskType"], "transcode");
    assert_eq!(task["workflowType"], "media");
    assert_eq!(task["referenceTaskName"], "transcode_ref");
    assert_eq!(task["startTime"], json!(1_795_255_201_000i64));

    let r = post(notification(
        "hook-1",
        "COMPLETED",
        "2026-11-21T10:00:09.000Z",
        "{\"progress\":100}",
    ))
    .await;
    assert_eq!(r["accepted"], 1, "{r}");
    assert_eq!(
        app.stored("hook-1").await.unwrap().status.as_str(),
        "COMPLETED"
    );
    // a late, older IN_PROGRESS notification (the #176 shape) does not win
    let r = post(notification(
        "hook-1",
        "IN_PROGRESS",
        "2026-11-21T10:00:07.000Z",
        "{}",
    ))
    .await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");
    // a batch with a bad notification keeps the good one
    let r = post(json!([
        notification("hook-2", "SCHEDULED", "2026-11-21T10:01:00.000Z", ""),
        notification("hook-3", "SCHEDULED", "not a time", ""),
    ]))
    .await;
    assert_eq!(r["accepted"], 1, "{r}");
    assert!(
        r["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("updateTime"),
        "{r}"
    );

    let scrape = app.scrape().await;
    let count = |outcome: &str| {
        crate::helpers::metric_value(
            &scrape,
            "taskpulse_updates_total",
            &[("source", "conductor_webhook"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("accepted"), Some(3.0));
    assert_eq!(count("rejected"), Some(2.0));
}
store_test!(notifications_are_ingested_with_their_progress);

/// The webhook is part of taskpulse's own API: it needs the bearer token when one is set, and
/// a body that isn't JSON gets 400 with the position.
#[tokio::test]
async fn the_webhook_obeys_auth_and_reports_bad_bodies() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.auth_token = Some(taskpulse::settings::Secret("s3cret".into()))
    })
    .await;
    let url = app.url("/api/v1/conductor/task-status");
    let body = notification("h", "SCHEDULED", "2026-11-21T10:00:00.000Z", "");
    let resp = app.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .client
        .post(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .post(&url)
        .bearer_auth("s3cret")
        .body("{\"taskId\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["line"], 1, "{err}");
}
