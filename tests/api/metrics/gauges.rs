//! The gauges of the current state: tasks by status, stalled tasks, the wait queue, workers and
//! the build.

use super::*;

async fn tasks_by_status_count_only_unfinished_tasks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let t = |id: &str, status: &str, wf: &str, tt: &str| {
        with(
            update(id, status),
            json!({"workflowType": wf, "taskType": tt}),
        )
    };
    accept_all(
        &app,
        json!([
            t("st-1", "IN_PROGRESS", "media", "encode"),
            t("st-2", "IN_PROGRESS", "media", "encode"),
            t("st-3", "SCHEDULED", "media", "encode"),
            t("st-4", "IN_PROGRESS", "images", "thumbnail"),
            t("st-5", "COMPLETED", "media", "encode"),
            t("st-6", "FAILED", "media", "encode"),
            t("st-7", "IN_PROGRESS", "media", "WAIT"),
        ]),
    )
    .await;
    let tasks = |scrape: &Scrape, wf: &str, tt: &str, st: &str| {
        metric_value(
            scrape,
            "taskpulse_tasks",
            &[("workflow_type", wf), ("task_type", tt), ("status", st)],
        )
        .unwrap_or(0.0)
    };
    let scrape = app.scrape().await;
    assert_eq!(tasks(&scrape, "media", "encode", "IN_PROGRESS"), 2.0);
    assert_eq!(tasks(&scrape, "media", "encode", "SCHEDULED"), 1.0);
    assert_eq!(tasks(&scrape, "images", "thumbnail", "IN_PROGRESS"), 1.0);
    assert_eq!(tasks(&scrape, "media", "WAIT", "IN_PROGRESS"), 1.0);
    let all = samples(&scrape, "taskpulse_tasks");
    assert!(
        all.iter()
            .all(|s| matches!(s.labels.get("status"), Some("IN_PROGRESS" | "SCHEDULED"))),
        "terminal tasks are not counted: {all:?}"
    );
    assert_eq!(all.iter().map(|s| number(s)).sum::<f64>(), 5.0);

    // moves between statuses follow at once
    accept_all(
        &app,
        json!([
            t("st-1", "COMPLETED", "media", "encode"),
            t("st-3", "IN_PROGRESS", "media", "encode"),
        ]),
    )
    .await;
    let scrape = app.scrape().await;
    assert_eq!(tasks(&scrape, "media", "encode", "IN_PROGRESS"), 2.0);
    assert_eq!(tasks(&scrape, "media", "encode", "SCHEDULED"), 0.0);
    let total: f64 = samples(&scrape, "taskpulse_tasks")
        .iter()
        .map(|s| number(s))
        .sum();
    assert_eq!(total, 4.0);
}
store_test!(tasks_by_status_count_only_unfinished_tasks);

async fn stalled_tasks_are_counted_after_stall_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.metrics.stall_after = Duration::from_millis(300);
        s.throttle.progress_min_interval = Duration::from_millis(200);
    })
    .await;
    let stalled = |scrape: &Scrape, tt: &str| {
        metric_value(
            scrape,
            "taskpulse_tasks_stalled",
            &[("workflow_type", "media"), ("task_type", tt)],
        )
        .unwrap_or(0.0)
    };
    let progress = |id: &str, tt: &str, p: f64| {
        with(
            update(id, "IN_PROGRESS"),
            json!({"taskType": tt, "progressPercent": p}),
        )
    };
    let t0 = Instant::now();
    accept_all(
        &app,
        json!([
            progress("sl-1", "encode", 10.0),
            progress("sl-2", "encode", 10.0),
            progress("sl-3", "thumbnail", 10.0),
        ]),
    )
    .await;
    let scrape = app.scrape().await;
    if t0.elapsed() < Duration::from_millis(250) {
        assert_eq!(
            stalled(&scrape, "encode"),
            0.0,
            "fresh progress is not stalled"
        );
    }

    // once stall_after has passed without movement, all three stall
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let scrape = app.scrape().await;
        if stalled(&scrape, "encode") == 2.0 && stalled(&scrape, "thumbnail") == 1.0 {
            break;
        }
        assert!(stalled(&scrape, "encode") <= 2.0);
        assert!(Instant::now() < deadline, "never stalled");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(app.task("sl-2").await["stalled"], true);

    // progress moves: that task is no longer stalled
    let t1 = Instant::now();
    accept_all(&app, progress("sl-1", "encode", 20.0)).await;
    let scrape = app.scrape().await;
    if t1.elapsed() < Duration::from_millis(250) {
        assert_eq!(stalled(&scrape, "encode"), 1.0);
        assert_eq!(app.task("sl-1").await["stalled"], false);
    }

    // a finished task is not stalled: only sl-1 can stall again
    accept_all(
        &app,
        json!([update("sl-2", "COMPLETED"), update("sl-3", "COMPLETED")]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let scrape = app.scrape().await;
        assert!(stalled(&scrape, "encode") <= 1.0, "sl-2 finished");
        assert_eq!(stalled(&scrape, "thumbnail"), 0.0, "sl-3 finished");
        if stalled(&scrape, "encode") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "sl-1 never stalled again");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
store_test!(stalled_tasks_are_counted_after_stall_after);

async fn the_wait_queue(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| s.wait.wait_grace = Duration::from_secs(1)).await;
    let now = taskpulse::now_ms();
    let t0 = Instant::now();
    let wait = |id: &str, wf: &str, wake: Option<i64>| {
        let mut u = with(
            update(id, "IN_PROGRESS"),
            json!({"taskType": "WAIT", "workflowType": wf}),
        );
        if let Some(w) = wake {
            u["waitUntil"] = json!(w);
        }
        u
    };
    accept_all(
        &app,
        json!([
            wait("w-older", "media", Some(now - 20_000)),
            wait("w-overdue", "media", Some(now - 10_000)),
            wait("w-soon", "media", Some(now + 30_000)),
            wait("w-later", "media", Some(now + 120_000)),
            wait("w-nowake", "media", None),
            wait("w-bill", "billing", Some(now + 10_000)),
            wait("w-grace", "grace", Some(now - 200)),
            with(
                update("w-notwait", "IN_PROGRESS"),
                json!({"waitUntil": now - 60_000})
            ),
            // first seen finished, 1 s after its wake-up time
            with(
                wait("w-done", "media", Some(now - 50_000)),
                json!({"status": "COMPLETED", "updateTime": now - 49_000})
            ),
        ]),
    )
    .await;
    let g = |scrape: &Scrape, name: &str, wf: &str| {
        metric_value(scrape, name, &[("workflow_type", wf)]).unwrap_or(0.0)
    };
    let scrape = app.scrape().await;
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(g(&scrape, "taskpulse_wait_tasks", "media"), 5.0);
    assert_eq!(g(&scrape, "taskpulse_wait_overdue_tasks", "media"), 2.0);
    assert_eq!(
        g(&scrape, "taskpulse_wait_due_next_minute_tasks", "media"),
        1.0
    );
    assert_eq!(g(&scrape, "taskpulse_wait_tasks", "billing"), 1.0);
    assert_eq!(g(&scrape, "taskpulse_wait_overdue_tasks", "billing"), 0.0);
    assert_eq!(
        g(&scrape, "taskpulse_wait_due_next_minute_tasks", "billing"),
        1.0
    );
    assert_eq!(g(&scrape, "taskpulse_wait_tasks", "grace"), 1.0);
    if elapsed < 0.7 {
        assert_eq!(
            g(&scrape, "taskpulse_wait_overdue_tasks", "grace"),
            0.0,
            "late, but within --wait-grace"
        );
    }
    let oldest = metric_value(&scrape, "taskpulse_wait_oldest_overdue_seconds", &[])
        .expect("oldest overdue");
    assert!(
        (20.0..=20.0 + elapsed + 0.05).contains(&oldest),
        "oldest overdue {oldest}, want about 20s"
    );

    let lag = [("workflow_type", "media")];
    assert_eq!(
        metric_value(&scrape, "taskpulse_wait_wakeup_lag_seconds_count", &lag),
        Some(1.0)
    );
    assert_close(
        metric_value(&scrape, "taskpulse_wait_wakeup_lag_seconds_sum", &lag).unwrap(),
        1.0,
        1e-9,
        "lag sum",
    );

    // two WAIT tasks finish: 2.5 s and 0.1 s after their wake-up times
    accept_all(
        &app,
        json!([
            with(
                wait("w-overdue", "media", None),
                json!({"status": "COMPLETED", "updateTime": now - 10_000 + 2_500})
            ),
            with(
                wait("w-soon", "media", None),
                json!({"status": "COMPLETED", "updateTime": now + 30_000 + 100})
            ),
        ]),
    )
    .await;
    let scrape = app.scrape().await;
    assert_eq!(
        metric_value(&scrape, "taskpulse_wait_wakeup_lag_seconds_count", &lag),
        Some(3.0)
    );
    assert_close(
        metric_value(&scrape, "taskpulse_wait_wakeup_lag_seconds_sum", &lag).unwrap(),
        3.6,
        1e-9,
        "lag sum",
    );
    let b = buckets(&scrape, "taskpulse_wait_wakeup_lag_seconds", &lag);
    assert_eq!(bucket(&b, 0.1), 1.0, "{b:?}");
    assert_eq!(bucket(&b, 1.0), 2.0, "{b:?}");
    assert_eq!(bucket(&b, 2.0), 2.0, "{b:?}");
    assert_eq!(bucket(&b, 5.0), 3.0, "{b:?}");
    assert_eq!(g(&scrape, "taskpulse_wait_tasks", "media"), 3.0);
    assert_eq!(g(&scrape, "taskpulse_wait_overdue_tasks", "media"), 1.0);
    assert_eq!(
        g(&scrape, "taskpulse_wait_due_next_minute_tasks", "media"),
        0.0
    );
    let oldest = metric_value(&scrape, "taskpulse_wait_oldest_overdue_seconds", &[]).unwrap();
    assert!(oldest >= 20.0, "{oldest}");

    // nothing overdue any more: 0
    accept_all(
        &app,
        json!([
            with(
                wait("w-older", "media", None),
                json!({"status": "COMPLETED"})
            ),
            with(
                wait("w-grace", "grace", None),
                json!({"status": "COMPLETED"})
            ),
        ]),
    )
    .await;
    let scrape = app.scrape().await;
    assert_eq!(
        metric_value(&scrape, "taskpulse_wait_oldest_overdue_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(g(&scrape, "taskpulse_wait_overdue_tasks", "media"), 0.0);
    assert_eq!(g(&scrape, "taskpulse_wait_tasks", "media"), 2.0);
}
store_test!(the_wait_queue);

async fn worker_gauges(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let on = |id: &str, worker: &str| with(update(id, "IN_PROGRESS"), json!({"workerId": worker}));
    let before = taskpulse::now_ms() as f64 / 1000.0;
    accept_all(
        &app,
        json!([
            on("wk-1", "worker-a"),
            on("wk-2", "worker-a"),
            on("wk-3", "worker-b")
        ]),
    )
    .await;
    let after = taskpulse::now_ms() as f64 / 1000.0;
    let scrape = app.scrape().await;
    let tasks = |scrape: &Scrape, w: &str| {
        metric_value(scrape, "taskpulse_worker_tasks", &[("worker_id", w)]).unwrap_or(0.0)
    };
    let seen = |scrape: &Scrape, w: &str| {
        metric_value(
            scrape,
            "taskpulse_worker_last_seen_timestamp_seconds",
            &[("worker_id", w)],
        )
        .unwrap_or_else(|| panic!("{w} has a last-seen time"))
    };
    assert_eq!(tasks(&scrape, "worker-a"), 2.0);
    assert_eq!(tasks(&scrape, "worker-b"), 1.0);
    for w in ["worker-a", "worker-b"] {
        let t = seen(&scrape, w);
        assert!(
            (before - 0.001..=after + 0.001).contains(&t),
            "{w} last seen {t}, sent between {before} and {after}"
        );
    }

    // wk-3 ends, wk-2 moves to worker-c
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = taskpulse::now_ms() as f64 / 1000.0;
    accept_all(
        &app,
        json!([
            with(update("wk-3", "COMPLETED"), json!({"workerId": "worker-b"})),
            on("wk-2", "worker-c"),
        ]),
    )
    .await;
    let after = taskpulse::now_ms() as f64 / 1000.0;
    let scrape = app.scrape().await;
    assert_eq!(tasks(&scrape, "worker-a"), 1.0);
    assert_eq!(tasks(&scrape, "worker-b"), 0.0);
    assert_eq!(tasks(&scrape, "worker-c"), 1.0);
    for w in ["worker-b", "worker-c"] {
        let t = seen(&scrape, w);
        assert!(
            (before - 0.001..=after + 0.001).contains(&t),
            "{w} last seen {t}, sent between {before} and {after}"
        );
    }
    assert!(
        seen(&scrape, "worker-a") < before,
        "worker-a sent nothing since"
    );
}
store_test!(worker_gauges);

/// Pure HTTP: build info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_info_names_the_version() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let scrape = app.scrape().await;
    let info = samples(&scrape, "taskpulse_build_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(
        info[0].labels.get("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(number(info[0]), 1.0);
    // every name starts with taskpulse_
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.metric.starts_with("taskpulse_")),
        "{:?}",
        scrape
            .samples
            .iter()
            .map(|s| &s.metric)
            .filter(|m| !m.starts_with("taskpulse_"))
            .collect::<Vec<_>>()
    );
}
