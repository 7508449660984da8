//! What an ingest body may hold: the formats, Conductor's aliases, per-item rejections and the
//! fields kept.

use super::*;

async fn object_array_and_ndjson_bodies_are_accepted_and_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let r = app.ingest(&update("fmt-obj", "IN_PROGRESS")).await;
    assert_counts(&r, 1, 0, 0);

    // an array; its third item repeats the first one exactly
    let r = app
        .ingest(&json!([
            update("fmt-arr-1", "SCHEDULED"),
            update("fmt-arr-2", "IN_PROGRESS"),
            update("fmt-arr-1", "SCHEDULED"),
        ]))
        .await;
    assert_counts(&r, 2, 1, 0);

    // NDJSON, with a CRLF line end and a blank line
    let body = format!(
        "{}\n{}\r\n\n{}\n",
        update("fmt-nd-1", "SCHEDULED"),
        update("fmt-nd-2", "IN_PROGRESS"),
        update("fmt-nd-3", "COMPLETED"),
    );
    let (status, r) = send(&app, body.into_bytes(), "application/x-ndjson").await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 3, 0, 0);

    // NDJSON with a charset parameter
    let body = format!("{}\n", update("fmt-nd-4", "IN_PROGRESS"));
    let (status, r) = send(
        &app,
        body.into_bytes(),
        "application/x-ndjson; charset=utf-8",
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 1, 0, 0);

    // the same object again is a duplicate
    let r = app.ingest(&update("fmt-obj", "IN_PROGRESS")).await;
    assert_counts(&r, 0, 1, 0);

    app.settle().await;
    for (id, status) in [
        ("fmt-obj", "IN_PROGRESS"),
        ("fmt-arr-1", "SCHEDULED"),
        ("fmt-arr-2", "IN_PROGRESS"),
        ("fmt-nd-1", "SCHEDULED"),
        ("fmt-nd-2", "IN_PROGRESS"),
        ("fmt-nd-3", "COMPLETED"),
        ("fmt-nd-4", "IN_PROGRESS"),
    ] {
        let rec = app
            .stored(id)
            .await
            .unwrap_or_else(|| panic!("{id} is stored"));
        assert_eq!(rec.status.as_str(), status, "{id}");
        assert_eq!(&*rec.workflow_id, format!("wf-{id}"), "{id}");
        assert_eq!(&*rec.task_type, "encode", "{id}");
        assert_eq!(rec.workflow_type.as_deref(), Some("media"), "{id}");
        assert_eq!(app.task(id).await["status"], status, "{id} in memory");
    }
}
store_test!(object_array_and_ndjson_bodies_are_accepted_and_stored);

async fn conductor_aliases_are_read(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let now = taskpulse::now_ms();
    let r = app
        .ingest(&json!([
            {"taskId": "alias-1", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "workflowType": "media", "status": "IN_PROGRESS", "updateTime": now,
             "outputData": {"progressPercent": 42.5, "progressMessage": "chunk 3/7",
                            "unrelated": {"deep": [1, 2, {"x": null}]}}},
            {"taskId": "alias-2", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "status": "IN_PROGRESS", "outputData": {"progress": 37}},
            {"taskId": "alias-3", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "status": "IN_PROGRESS", "outputData": {"progress": "n/a"}},
            {"taskId": "alias-4", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "status": "IN_PROGRESS", "outputData": {"progress": {"done": 3, "of": 7}}},
            // a full Conductor Task JSON: many fields taskpulse doesn't use
            {"taskType": "transcode", "status": "IN_PROGRESS", "inputData": {"file": "a.mov"},
             "referenceTaskName": "transcode_ref", "retryCount": 0, "seq": 2, "pollCount": 1,
             "taskDefName": "transcode", "scheduledTime": now - 5_000, "startTime": now - 4_000,
             "endTime": 0, "updateTime": now, "startDelayInSeconds": 0, "retried": false,
             "executed": false, "callbackFromWorker": true, "responseTimeoutSeconds": 3600,
             "workflowInstanceId": "wf-alias", "workflowType": "media", "taskId": "alias-full",
             "callbackAfterSeconds": 0, "workerId": "host-2", "outputData": {"progress": 12},
             "taskDefinition": {"name": "transcode", "timeoutSeconds": 7200, "retryCount": 3},
             "workflowPriority": 0, "iteration": 0, "subworkflowChanged": false,
             "loopOverTask": false, "queueWaitTime": 1000, "taskStatus": "IN_PROGRESS",
             "domain": null, "reasonForIncompletion": null, "externalInputPayloadStoragePath": null},
            // Conductor's own Task JSON: taskType and taskDefName, workflowInstanceId only
            {"taskId": "alias-wait", "workflowInstanceId": "wf-alias", "taskType": "WAIT",
             "taskDefName": "wait_ref", "status": "IN_PROGRESS", "waitTimeout": now + 60_000},
        ]))
        .await;
    assert_counts(&r, 6, 0, 0);

    let t = app.task("alias-full").await;
    assert_eq!(t["workflowId"], "wf-alias", "{t}");
    assert_eq!(t["taskType"], "transcode", "{t}");
    assert_eq!(t["progressPercent"], 12.0, "{t}");
    assert_eq!(t["workerId"], "host-2", "{t}");
    assert_eq!(t["referenceTaskName"], "transcode_ref", "{t}");
    assert_eq!(t["seq"], 2, "{t}");
    assert_eq!(t["startTime"], now - 4_000, "{t}");
    assert_eq!(t["responseTimeoutSeconds"], 3600, "{t}");
    let t = app.task("alias-1").await;
    assert_eq!(t["workflowId"], "wf-alias", "{t}");
    assert_eq!(t["taskType"], "transcode", "{t}");
    assert_eq!(t["progressPercent"], 42.5, "{t}");
    assert_eq!(t["progressMessage"], "chunk 3/7", "{t}");
    let t = app.task("alias-2").await;
    assert_eq!(
        t["progressPercent"], 37.0,
        "outputData.progress as a number: {t}"
    );
    for id in ["alias-3", "alias-4"] {
        let t = app.task(id).await;
        assert!(
            t["progressPercent"].is_null(),
            "a non-number outputData.progress is ignored: {t}"
        );
    }
    let t = app.task("alias-wait").await;
    assert_eq!(t["taskType"], "WAIT", "{t}");
    assert_eq!(
        t["waitUntil"],
        now + 60_000,
        "waitTimeout is waitUntil: {t}"
    );

    app.settle().await;
    let rec = app.stored("alias-1").await.expect("stored");
    assert_eq!(&*rec.workflow_id, "wf-alias");
    assert_eq!(&*rec.task_type, "transcode");
    assert_eq!(rec.progress, Some(42.5));
    assert_eq!(rec.progress_message.as_deref(), Some("chunk 3/7"));
    assert_eq!(rec.update_time, Some(now));
    assert_eq!(app.stored("alias-2").await.unwrap().progress, Some(37.0));
    assert_eq!(app.stored("alias-3").await.unwrap().progress, None);
    let rec = app.stored("alias-wait").await.expect("stored");
    assert_eq!(&*rec.task_type, "WAIT");
    assert_eq!(rec.wait_until, Some(now + 60_000));
}
store_test!(conductor_aliases_are_read);

async fn bad_items_are_rejected_one_by_one_and_good_ones_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let r = app
        .ingest(&json!([
            update("rej-good-1", "IN_PROGRESS"),
            with(
                update("rej-type", "IN_PROGRESS"),
                json!({"progressPercent": "50"})
            ),
            with(update("rej-worker", "IN_PROGRESS"), json!({"workerId": 7})),
            with(
                update("rej-time", "IN_PROGRESS"),
                json!({"updateTime": "yesterday"})
            ),
            with(
                update("rej-high", "IN_PROGRESS"),
                json!({"progressPercent": 150})
            ),
            with(
                update("rej-low", "IN_PROGRESS"),
                json!({"outputData": {"progressPercent": -1}})
            ),
            without(update("rej-noid", "IN_PROGRESS"), "taskId"),
            without(update("rej-nowf", "IN_PROGRESS"), "workflowId"),
            with(
                update("rej-status", "IN_PROGRESS"),
                json!({"status": "RUNNING"})
            ),
            without(update("rej-notype", "IN_PROGRESS"), "taskType"),
            update("rej-good-2", "SCHEDULED"),
        ]))
        .await;
    assert_counts(&r, 2, 0, 9);
    let expect: &[(usize, Option<&str>, &[&str])] = &[
        (1, Some("rej-type"), &["progressPercent"]),
        (2, Some("rej-worker"), &["workerId"]),
        (3, Some("rej-time"), &["updateTime"]),
        (4, Some("rej-high"), &["progressPercent", "150"]),
        (5, Some("rej-low"), &["progressPercent", "-1"]),
        (6, None, &["taskId"]),
        (7, Some("rej-nowf"), &["workflowId"]),
        (8, Some("rej-status"), &["status", "RUNNING"]),
        (9, Some("rej-notype"), &["taskType"]),
    ];
    for (index, task_id, words) in expect {
        let rej = rejection(&r, *index);
        match task_id {
            Some(id) => assert_eq!(rej["taskId"], *id, "{rej}"),
            None => assert!(rej["taskId"].is_null(), "{rej}"),
        }
        let reason = rej["reason"].as_str().expect("reason is a string");
        for w in *words {
            assert!(
                reason.contains(w),
                "item {index}: reason {reason:?} names {w}"
            );
        }
    }

    app.settle().await;
    assert_eq!(
        app.stored("rej-good-1")
            .await
            .expect("stored")
            .status
            .as_str(),
        "IN_PROGRESS"
    );
    assert_eq!(
        app.stored("rej-good-2")
            .await
            .expect("stored")
            .status
            .as_str(),
        "SCHEDULED"
    );
    for id in [
        "rej-type",
        "rej-worker",
        "rej-time",
        "rej-high",
        "rej-low",
        "rej-nowf",
        "rej-status",
        "rej-notype",
    ] {
        assert!(app.stored(id).await.is_none(), "{id} must not be stored");
        let resp = app.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(resp.status(), 404, "{id} must not be tracked");
    }

    // taskType is only needed the first time a task is seen
    let r = app
        .ingest(&json!([
            update("rej-notype", "IN_PROGRESS"),
            with(
                without(update("rej-good-1", "IN_PROGRESS"), "taskType"),
                json!({"progressPercent": 10})
            ),
        ]))
        .await;
    assert_counts(&r, 2, 0, 0);
    assert_eq!(app.task("rej-good-1").await["progressPercent"], 10.0);
    assert_eq!(app.task("rej-good-1").await["taskType"], "encode");
}
store_test!(bad_items_are_rejected_one_by_one_and_good_ones_stored);

/// An engine that reports each attempt with its own state (Kestra's `attempts[]`), and the
/// task's parent and loop value: kept and shown; a wrong attempt names its field.
#[tokio::test]
async fn reported_attempts_and_loop_fields_are_kept() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let mut u = update("looped", "IN_PROGRESS");
    u["retryCount"] = json!(1);
    u["workerId"] = json!("w-b");
    u["parentTaskId"] = json!("each-region");
    u["iterationValue"] = json!("eu-west\u{7}");
    u["attempts"] = json!([
        {"attempt": 0, "workerId": "w-a", "status": "FAILED", "startTime": 1000, "endTime": 2000},
        {"attempt": 1, "workerId": "w-b", "status": "IN_PROGRESS", "startTime": 3000}
    ]);
    let r = app.ingest(&u).await;
    assert_eq!(r["accepted"], 1, "{r}");
    app.settle().await;
    let v = app.task("looped").await;
    assert_eq!(v["parentTaskId"], "each-region");
    assert_eq!(v["iterationValue"], "eu-west", "control characters dropped");
    let a = v["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{v:#}");
    assert_eq!(
        (
            &a[0]["workerId"],
            &a[0]["status"],
            &a[0]["startTime"],
            &a[0]["endTime"]
        ),
        (&json!("w-a"), &json!("FAILED"), &json!(1000), &json!(2000))
    );
    assert_eq!(
        (&a[1]["workerId"], &a[1]["status"]),
        (&json!("w-b"), &json!("IN_PROGRESS"))
    );
    assert!(a[1].get("endTime").is_none());
    // kept in the store: a restart shows the same
    let stored = app.stored("looped").await.unwrap();
    assert_eq!(stored.parent_task_id.as_deref(), Some("each-region"));

    for (attempts, named) in [
        (
            json!([{"attempt": 0, "status": "FAILED"}]),
            "attempts[0].workerId",
        ),
        (
            json!([{"attempt": 0, "workerId": "w", "status": "BROKEN"}]),
            "attempts[0].status",
        ),
        (
            json!([{"attempt": -1, "workerId": "w"}]),
            "attempts[0].attempt",
        ),
    ] {
        let mut bad = update("bad-attempt", "IN_PROGRESS");
        bad["attempts"] = attempts;
        let resp = app.post_updates(&bad).await;
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body.to_string().contains(named), "{named}: {body}");
    }
    app.shutdown().await;
}
