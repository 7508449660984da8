//! The per-task series: progress, deadline, worker info, and their cap.

use super::*;

async fn per_task_progress_and_deadline_series(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let start = taskpulse::now_ms() - 10_000;
    accept_all(
        &app,
        json!([
            with(
                update("m-1", "IN_PROGRESS"),
                json!({"progressPercent": 42.5, "startTime": start, "timeoutSeconds": 300})
            ),
            with(update("m-2", "IN_PROGRESS"), json!({"progressPercent": 0})),
            with(update("m-3", "IN_PROGRESS"), json!({"timeoutSeconds": 60})),
        ]),
    )
    .await;

    let scrape = app.scrape().await;
    let p = per_task(&scrape, "taskpulse_task_progress_ratio", "m-1").expect("m-1 progress");
    assert_eq!(p.labels.get("workflow_type"), Some("media"));
    assert_eq!(p.labels.get("task_type"), Some("encode"));
    assert_eq!(p.labels.get("workflow_id"), Some("wf-m-1"));
    assert_close(number(p), 0.425, 1e-9, "m-1 progress ratio");
    let d = per_task(&scrape, "taskpulse_task_deadline_timestamp_seconds", "m-1")
        .expect("m-1 deadline");
    assert_eq!(d.labels.get("workflow_id"), Some("wf-m-1"));
    assert_eq!(d.labels.get("task_type"), Some("encode"));
    assert_close(
        number(d),
        start as f64 / 1000.0 + 300.0,
        1e-3,
        "deadline = startTime/1000 + timeoutSeconds",
    );
    let p2 = per_task(&scrape, "taskpulse_task_progress_ratio", "m-2").expect("m-2 progress");
    assert_eq!(number(p2), 0.0);
    assert!(
        per_task(&scrape, "taskpulse_task_deadline_timestamp_seconds", "m-2").is_none(),
        "no timeout, no deadline series"
    );
    assert!(
        per_task(&scrape, "taskpulse_task_progress_ratio", "m-3").is_none(),
        "a task that never reported progress has no per-task series"
    );
    assert!(per_task(&scrape, "taskpulse_task_deadline_timestamp_seconds", "m-3").is_none());
    assert_eq!(
        metric_value(&scrape, "taskpulse_task_series_omitted", &[]),
        Some(0.0)
    );

    // new progress shows at once, whatever the store throttle does
    accept_all(
        &app,
        with(update("m-1", "IN_PROGRESS"), json!({"progressPercent": 60})),
    )
    .await;
    let scrape = app.scrape().await;
    let p = per_task(&scrape, "taskpulse_task_progress_ratio", "m-1").unwrap();
    assert_close(number(p), 0.6, 1e-6, "m-1 after 60%");

    // the series go when the tasks end
    accept_all(
        &app,
        json!([update("m-1", "COMPLETED"), update("m-2", "FAILED")]),
    )
    .await;
    let scrape = app.scrape().await;
    for id in ["m-1", "m-2"] {
        assert!(
            per_task(&scrape, "taskpulse_task_progress_ratio", id).is_none(),
            "{id}"
        );
        assert!(
            per_task(&scrape, "taskpulse_task_deadline_timestamp_seconds", id).is_none(),
            "{id}"
        );
    }
}
store_test!(per_task_progress_and_deadline_series);

async fn per_task_series_are_capped(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| s.metrics.max_task_series = 3).await;
    for i in 0..5 {
        accept_all(
            &app,
            with(
                update(&format!("cap-{i}"), "IN_PROGRESS"),
                json!({"progressPercent": 10 + i, "timeoutSeconds": 600}),
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // in flight but without progress: not a candidate, not omitted
    accept_all(&app, update("cap-noprogress", "IN_PROGRESS")).await;

    let scrape = app.scrape().await;
    let kept = task_ids(&scrape, "taskpulse_task_progress_ratio");
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(
        task_ids(&scrape, "taskpulse_task_deadline_timestamp_seconds"),
        kept,
        "both per-task families cover the same tasks"
    );
    assert_eq!(
        metric_value(&scrape, "taskpulse_task_series_omitted", &[]),
        Some(2.0)
    );
    for s in samples(&scrape, "taskpulse_task_progress_ratio") {
        let id = s.labels.get("task_id").unwrap();
        let i: f64 = id.trim_start_matches("cap-").parse().unwrap();
        assert_close(number(s), (10.0 + i) / 100.0, 1e-6, id);
    }
    // the same tasks on the next scrape: series don't flicker
    let again = task_ids(&app.scrape().await, "taskpulse_task_progress_ratio");
    assert_eq!(again, kept);

    // one kept task ends: one omitted task takes its place
    let gone = kept.iter().next().unwrap().clone();
    accept_all(&app, update(&gone, "COMPLETED")).await;
    let scrape = app.scrape().await;
    let now_kept = task_ids(&scrape, "taskpulse_task_progress_ratio");
    assert_eq!(now_kept.len(), 3, "{now_kept:?}");
    assert!(!now_kept.contains(&gone));
    assert!(kept
        .iter()
        .filter(|id| **id != gone)
        .all(|id| now_kept.contains(id)));
    assert_eq!(
        metric_value(&scrape, "taskpulse_task_series_omitted", &[]),
        Some(1.0)
    );

    // two more end: everything fits
    let rest: Vec<_> = now_kept.iter().take(2).cloned().collect();
    accept_all(
        &app,
        json!([update(&rest[0], "COMPLETED"), update(&rest[1], "CANCELED")]),
    )
    .await;
    let scrape = app.scrape().await;
    assert_eq!(task_ids(&scrape, "taskpulse_task_progress_ratio").len(), 2);
    assert_eq!(
        metric_value(&scrape, "taskpulse_task_series_omitted", &[]),
        Some(0.0)
    );
}
store_test!(per_task_series_are_capped);

/// `taskpulse_task_worker_info` names the worker of each in-flight task's current attempt, so
/// dashboards can join it on the task labels; it follows a new worker and ends with the task.
async fn worker_info_follows_the_current_attempt(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    accept_all(
        &app,
        with(
            update("wi", "IN_PROGRESS"),
            json!({"progressPercent": 5, "workerId": "worker-a"}),
        ),
    )
    .await;
    accept_all(
        &app,
        with(
            update("no-worker", "IN_PROGRESS"),
            json!({"progressPercent": 5}),
        ),
    )
    .await;
    let scrape = app.scrape().await;
    let info = samples(&scrape, "taskpulse_task_worker_info");
    assert_eq!(info.len(), 1, "only tasks with a worker have one");
    assert_eq!(info[0].labels.get("task_id"), Some("wi"));
    assert_eq!(info[0].labels.get("worker_id"), Some("worker-a"));
    assert_eq!(info[0].labels.get("workflow_id"), Some("wf-wi"));
    assert_eq!(number(info[0]), 1.0);

    accept_all(
        &app,
        with(
            update("wi", "IN_PROGRESS"),
            json!({"progressPercent": 6, "workerId": "worker-b", "retryCount": 1}),
        ),
    )
    .await;
    let scrape = app.scrape().await;
    let workers: Vec<_> = samples(&scrape, "taskpulse_task_worker_info")
        .iter()
        .map(|s| s.labels.get("worker_id").unwrap().to_string())
        .collect();
    assert_eq!(workers, ["worker-b"]);

    accept_all(&app, update("wi", "COMPLETED")).await;
    let scrape = app.scrape().await;
    assert!(samples(&scrape, "taskpulse_task_worker_info").is_empty());
}
store_test!(worker_info_follows_the_current_attempt);

/// The walk of a scrape read-locks the whole table while it picks the tasks it keeps: scrapes
/// and writers (new tasks, progress, tasks ending) must keep going side by side, and every
/// scrape is one consistent picture: the kept and the omitted tasks add up to the in-flight
/// tasks it counts, and the cap is filled whenever there are enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_and_writes_go_on_together_and_each_scrape_is_consistent() {
    const CAP: usize = 25;
    const WRITERS: usize = 3;
    const ROUNDS: usize = 120;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| s.metrics.max_task_series = CAP).await;
    let writing = std::sync::atomic::AtomicUsize::new(WRITERS);
    let writer = |w: usize| {
        let (app, writing) = (&app, &writing);
        async move {
            for round in 0..ROUNDS {
                // ten new tasks, and the ten of two rounds ago finish
                let mut body: Vec<Value> = (0..10)
                    .map(|i| {
                        with(
                            update(&format!("cw{w}-{round}-{i}"), "IN_PROGRESS"),
                            json!({"progressPercent": 10 + i}),
                        )
                    })
                    .collect();
                if round >= 2 {
                    body.extend(
                        (0..10).map(|i| update(&format!("cw{w}-{}-{i}", round - 2), "COMPLETED")),
                    );
                }
                accept_all(app, Value::Array(body)).await;
            }
            writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let scraper = async {
        let mut scrapes = 0;
        while writing.load(std::sync::atomic::Ordering::SeqCst) > 0 || scrapes == 0 {
            let scrape = app.scrape().await;
            let in_flight: f64 = samples(&scrape, "taskpulse_tasks")
                .iter()
                .filter(|s| s.labels.get("status") == Some("IN_PROGRESS"))
                .map(|s| number(s))
                .sum();
            let kept = task_ids(&scrape, "taskpulse_task_progress_ratio").len();
            let omitted = metric_value(&scrape, "taskpulse_task_series_omitted", &[]).unwrap();
            assert_eq!(
                kept as f64 + omitted,
                in_flight,
                "kept + omitted = in flight"
            );
            assert_eq!(kept, CAP.min(in_flight as usize), "the cap is filled");
            scrapes += 1;
        }
        scrapes
    };
    let all = async {
        let writers = futures_util::future::join_all((0..WRITERS).map(writer));
        tokio::join!(writers, scraper).1
    };
    let scrapes = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("scrapes and writes finish side by side");
    assert!(scrapes > 1, "scraped while writing: {scrapes}");
    let last = app.scrape().await;
    let kept = task_ids(&last, "taskpulse_task_progress_ratio");
    assert_eq!(kept.len(), CAP);
    // what is left in flight: each writer's last two rounds
    assert_eq!(
        metric_value(&last, "taskpulse_task_series_omitted", &[]),
        Some((WRITERS * 20 - CAP) as f64)
    );
}
