//! Stale and duplicate updates, and the counters of every outcome.

use super::*;

async fn an_update_older_than_the_stored_one_is_stale(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(200);
    })
    .await;
    let at = |t: i64, extra: Value| {
        with(
            update("stale-1", "IN_PROGRESS"),
            with(json!({"updateTime": t}), extra),
        )
    };
    assert_counts(
        &app.ingest(&at(2_000, json!({"progressPercent": 10}))).await,
        1,
        0,
        0,
    );

    let r = app.ingest(&at(1_000, json!({"progressPercent": 20}))).await;
    assert_counts(&r, 0, 0, 1);
    assert_eq!(rejection(&r, 0)["reason"], "stale", "{r}");
    assert_eq!(rejection(&r, 0)["taskId"], "stale-1", "{r}");
    let r = app
        .ingest(&at(
            1_500,
            json!({"status": "COMPLETED", "progressPercent": 100}),
        ))
        .await;
    assert_counts(&r, 0, 0, 1);
    assert_eq!(rejection(&r, 0)["reason"], "stale", "{r}");
    let t = app.task("stale-1").await;
    assert_eq!(t["status"], "IN_PROGRESS", "{t}");
    assert_eq!(t["progressPercent"], 10.0, "{t}");
    assert_eq!(t["updateTime"], 2_000, "{t}");

    // an equal updateTime is not stale: progress, then a status change
    let r = app.ingest(&at(2_000, json!({"progressPercent": 30}))).await;
    assert_counts(&r, 1, 0, 0);
    assert_eq!(app.task("stale-1").await["progressPercent"], 30.0);
    let r = app.ingest(&at(2_000, json!({"status": "SCHEDULED"}))).await;
    assert_counts(&r, 1, 0, 0);
    assert_eq!(app.task("stale-1").await["status"], "SCHEDULED");

    // the status change is written like progress: within one throttle interval
    app.settle_throttled().await;
    let rec = app.stored("stale-1").await.expect("stored");
    assert_eq!(rec.status.as_str(), "SCHEDULED");
    assert_eq!(rec.update_time, Some(2_000));
    assert_eq!(rec.progress, Some(30.0));
    let history = app.task("stale-1").await["history"].clone();
    let stale: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "rejected")
        .collect();
    // rejections within one interval share a history line that counts them
    let counted: u64 = stale.iter().map(|e| e["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(counted, 2, "{history}");
    assert!(stale.iter().all(|e| e["reason"] == "stale"), "{history}");
}
store_test!(an_update_older_than_the_stored_one_is_stale);

async fn identical_repeats_are_duplicates_not_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let running = with(
        update("dup-1", "IN_PROGRESS"),
        json!({"progressPercent": 50, "progressMessage": "half", "workerId": "w-1",
               "updateTime": 1_000, "retryCount": 0}),
    );
    assert_counts(&app.ingest(&running).await, 1, 0, 0);
    assert_counts(&app.ingest(&running).await, 0, 1, 0);
    assert_counts(
        &app.ingest(&json!([running.clone(), running.clone()])).await,
        0,
        2,
        0,
    );
    app.settle().await;
    let version = app.stored_version("dup-1").await;

    let done = with(
        update("dup-1", "COMPLETED"),
        json!({"progressPercent": 100, "updateTime": 2_000, "workerId": "w-1"}),
    );
    assert_counts(&app.ingest(&done).await, 1, 0, 0);
    app.settle().await;
    let done_version = app.stored_version("dup-1").await;
    assert!(done_version > version);
    for _ in 0..3 {
        assert_counts(&app.ingest(&done).await, 0, 1, 0);
    }
    app.settle().await;
    assert_eq!(
        app.stored_version("dup-1").await,
        done_version,
        "duplicates are not written"
    );
    let rec = app.stored("dup-1").await.expect("stored");
    assert_eq!(rec.status.as_str(), "COMPLETED");
    assert_eq!(rec.progress, Some(100.0));
    let rejected = app
        .metric_value(
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "COMPLETED")],
        )
        .await;
    assert!(
        rejected.is_none() || rejected == Some(0.0),
        "a duplicate is not a rejected transition: {rejected:?}"
    );
    let history = app.task("dup-1").await["history"].clone();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "accepted"),
        "{history}"
    );
}
store_test!(identical_repeats_are_duplicates_not_errors);

async fn updates_total_counts_every_outcome(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let counts = |scrape: &prometheus_parse::Scrape| -> [Option<f64>; 3] {
        ["accepted", "duplicate", "rejected"].map(|outcome| {
            crate::helpers::metric_value(
                scrape,
                "taskpulse_updates_total",
                &[("source", "api"), ("outcome", outcome)],
            )
        })
    };
    // the series exist before anything is sent
    assert_eq!(counts(&app.scrape().await), [Some(0.0); 3]);

    let a = with(update("cnt-a", "IN_PROGRESS"), json!({"updateTime": 1_000}));
    // 2 accepted, 1 duplicate, 2 rejected
    let r = app
        .ingest(&json!([
            a.clone(),
            update("cnt-b", "IN_PROGRESS"),
            a.clone(),
            with(
                update("cnt-c", "IN_PROGRESS"),
                json!({"progressPercent": 101})
            ),
            without(update("cnt-d", "IN_PROGRESS"), "taskType"),
        ]))
        .await;
    assert_counts(&r, 2, 1, 2);
    // NDJSON: 1 accepted, 2 rejected (stale, broken line)
    let body = format!(
        "{}\n{}\n{{broken\n",
        with(a.clone(), json!({"updateTime": 500, "progressPercent": 5})),
        update("cnt-b", "COMPLETED"),
    );
    let (status, r) = send(&app, body.into_bytes(), "application/x-ndjson").await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 1, 0, 2);
    // 1 rejected (terminal), 1 duplicate
    let r = app
        .ingest(&json!([
            update("cnt-b", "IN_PROGRESS"),
            update("cnt-b", "COMPLETED"),
        ]))
        .await;
    assert_counts(&r, 0, 1, 1);
    // a body that is not JSON carries no updates to count
    let (status, _) = send(&app, b"{nope".to_vec(), "application/json").await;
    assert_eq!(status, 400);

    let scrape = app.scrape().await;
    assert_eq!(counts(&scrape), [Some(3.0), Some(2.0), Some(5.0)]);
    assert_eq!(
        crate::helpers::metric_value(
            &scrape,
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")],
        ),
        Some(1.0)
    );
}
store_test!(updates_total_counts_every_outcome);
