//! Counters and the duration histogram: what is counted, and when a finish is timed.

use super::*;

async fn task_duration_histogram(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let s = 1_700_000_000_000i64;
    let run = |id: &str, tt: &str, status: &str, secs: f64| {
        with(
            update(id, status),
            json!({"taskType": tt, "startTime": s, "updateTime": s + (secs * 1000.0) as i64}),
        )
    };
    // d-1 goes through IN_PROGRESS first; the others are first seen finished
    accept_all(
        &app,
        with(
            update("d-1", "IN_PROGRESS"),
            json!({"startTime": s, "updateTime": s + 1}),
        ),
    )
    .await;
    accept_all(
        &app,
        json!([
            run("d-1", "encode", "COMPLETED", 7.0),
            run("d-2", "encode", "FAILED", 2.0),
            run("d-3", "thumbnail", "COMPLETED", 0.5),
            run("d-4", "encode", "COMPLETED", 3.0),
        ]),
    )
    .await;
    // an identical repeat and a late update change nothing
    let r = app.ingest(&run("d-1", "encode", "COMPLETED", 7.0)).await;
    assert_eq!(r["duplicates"], 1, "{r}");
    let r = app.ingest(&run("d-1", "encode", "FAILED", 9.0)).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");

    let scrape = app.scrape().await;
    let name = "taskpulse_task_duration_seconds";
    let v = |suffix: &str, tt: &str, st: &str| {
        metric_value(
            &scrape,
            &format!("{name}{suffix}"),
            &[("task_type", tt), ("status", st)],
        )
    };
    assert_eq!(v("_count", "encode", "COMPLETED"), Some(2.0));
    assert_close(v("_sum", "encode", "COMPLETED").unwrap(), 10.0, 1e-9, "sum");
    assert_eq!(v("_count", "encode", "FAILED"), Some(1.0));
    assert_close(v("_sum", "encode", "FAILED").unwrap(), 2.0, 1e-9, "sum");
    assert_eq!(v("_count", "thumbnail", "COMPLETED"), Some(1.0));
    assert_close(
        v("_sum", "thumbnail", "COMPLETED").unwrap(),
        0.5,
        1e-9,
        "sum",
    );
    let b = buckets(
        &scrape,
        name,
        &[("task_type", "encode"), ("status", "COMPLETED")],
    );
    assert_eq!(bucket(&b, 1.0), 0.0, "{b:?}");
    assert_eq!(bucket(&b, 5.0), 1.0, "{b:?}");
    assert_eq!(bucket(&b, 15.0), 2.0, "{b:?}");
    assert!(
        samples(&scrape, &format!("{name}_count"))
            .iter()
            .all(|s| s.labels.get("status") != Some("IN_PROGRESS")),
        "only finished tasks are observed"
    );
}
store_test!(task_duration_histogram);

async fn progress_updates_and_store_writes_are_counted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let interval = Duration::from_millis(500);
    let app = TestApp::spawn_with(&db, |s| s.throttle.progress_min_interval = interval).await;
    let counts = |scrape: &Scrape| {
        let v = |name: &str, label: &str, value: &str| {
            metric_value(scrape, name, &[(label, value)]).expect("series exists")
        };
        [
            v("taskpulse_progress_updates_total", "outcome", "written"),
            v("taskpulse_progress_updates_total", "outcome", "coalesced"),
            v("taskpulse_store_writes_total", "kind", "progress"),
            v("taskpulse_store_writes_total", "kind", "status"),
            v("taskpulse_store_writes_total", "kind", "repair"),
        ]
    };
    assert_eq!(counts(&app.scrape().await), [0.0; 5]);
    let progress =
        |id: &str, p: f64| with(update(id, "IN_PROGRESS"), json!({"progressPercent": p}));

    let t0 = Instant::now();
    accept_all(&app, json!([progress("pw-1", 0.0), progress("pw-2", 0.0)])).await;
    // three progress updates inside pw-1's interval: all coalesced
    for p in [10.0, 20.0, 30.0] {
        accept_all(&app, progress("pw-1", p)).await;
    }
    app.settle().await;
    let c = counts(&app.scrape().await);
    assert!(t0.elapsed() < interval, "too slow to test coalescing");
    assert_eq!(
        c,
        [0.0, 3.0, 0.0, 2.0, 0.0],
        "written, coalesced, progress, status, repair"
    );

    // the newest value is written when the interval ends
    let deadline = Instant::now() + Duration::from_secs(3);
    while app.stored("pw-1").await.and_then(|r| r.progress) != Some(30.0) {
        assert!(
            Instant::now() < deadline,
            "coalesced progress never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.settle().await;
    assert_eq!(counts(&app.scrape().await), [0.0, 3.0, 1.0, 2.0, 0.0]);

    // pw-2's interval has long ended: its progress is written at once, the next one coalesced
    let wait = (interval + Duration::from_millis(100)).saturating_sub(t0.elapsed());
    tokio::time::sleep(wait).await;
    accept_all(&app, progress("pw-2", 50.0)).await;
    accept_all(&app, progress("pw-2", 60.0)).await;
    app.settle().await;
    assert_eq!(counts(&app.scrape().await), [1.0, 4.0, 2.0, 2.0, 0.0]);
    assert_eq!(app.stored("pw-2").await.unwrap().progress, Some(50.0));

    // terminal writes are status writes and carry the waiting value
    accept_all(
        &app,
        json!([update("pw-1", "COMPLETED"), update("pw-2", "COMPLETED")]),
    )
    .await;
    app.settle().await;
    assert_eq!(counts(&app.scrape().await), [1.0, 4.0, 2.0, 4.0, 0.0]);
    assert_eq!(app.stored("pw-2").await.unwrap().progress, Some(60.0));
}
store_test!(progress_updates_and_store_writes_are_counted);

/// Contract 4.2/4.3: duration is start to terminal, lag is wake-up to finish. When the terminal
/// update carries no `updateTime`, it finished when it arrived, not at the `updateTime` of some
/// earlier update.
async fn a_finish_without_update_time_is_timed_at_arrival(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let now = taskpulse::now_ms();
    let start = now - 60_000;
    accept_all(
        &app,
        json!([
            with(
                update("fa-1", "IN_PROGRESS"),
                json!({"startTime": start, "updateTime": start + 1_000})
            ),
            with(
                update("fa-wait", "IN_PROGRESS"),
                json!({"taskType": "WAIT", "waitUntil": now - 30_000, "updateTime": now - 40_000})
            ),
        ]),
    )
    .await;
    accept_all(
        &app,
        json!([
            update("fa-1", "COMPLETED"),
            with(update("fa-wait", "COMPLETED"), json!({"taskType": "WAIT"})),
        ]),
    )
    .await;
    let scrape = app.scrape().await;
    let duration = metric_value(
        &scrape,
        "taskpulse_task_duration_seconds_sum",
        &[("task_type", "encode"), ("status", "COMPLETED")],
    )
    .expect("duration observed");
    assert!(
        (59.0..70.0).contains(&duration),
        "a task started 60 s ago and finishing now took about 60 s, not {duration}"
    );
    let lag = metric_value(
        &scrape,
        "taskpulse_wait_wakeup_lag_seconds_sum",
        &[("workflow_type", "media")],
    )
    .expect("lag observed");
    assert!(
        (29.0..40.0).contains(&lag),
        "a WAIT task due 30 s ago and finishing now is about 30 s late, not {lag}"
    );
}
store_test!(a_finish_without_update_time_is_timed_at_arrival);
