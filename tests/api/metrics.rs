//! `/metrics` (`docs/contract.md` §4), read with a real exposition-format parser: values, not just names.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{json, Value};

use crate::helpers::{metric_value, update, Backend, TestApp, TestDb};
use crate::store_test;

/// `base` with the fields of `extra` set.
fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("extra is an object") {
        base[k] = v.clone();
    }
    base
}

/// Every sample of one metric.
fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn number(s: &Sample) -> f64 {
    match s.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
        _ => panic!("{} is not a single number", s.metric),
    }
}

/// The per-task sample of `name` for `task_id`.
fn per_task<'a>(scrape: &'a Scrape, name: &str, task_id: &str) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("task_id") == Some(task_id))
}

/// The task ids that have a sample of `name`.
fn task_ids(scrape: &Scrape, name: &str) -> BTreeSet<String> {
    samples(scrape, name)
        .iter()
        .map(|s| s.labels.get("task_id").expect("task_id label").to_string())
        .collect()
}

/// Histogram buckets (upper bound, cumulative count) of the series with these labels.
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let s = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && matches!(s.value, PromValue::Histogram(_))
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"));
    match &s.value {
        PromValue::Histogram(b) => b.iter().map(|b| (b.less_than, b.count)).collect(),
        _ => unreachable!(),
    }
}

fn bucket(b: &[(f64, f64)], le: f64) -> f64 {
    b.iter()
        .find(|(l, _)| *l == le)
        .unwrap_or_else(|| panic!("no bucket le={le} in {b:?}"))
        .1
}

#[track_caller]
fn assert_close(got: f64, want: f64, eps: f64, what: &str) {
    assert!(
        (got - want).abs() <= eps,
        "{what}: got {got}, want {want} (±{eps})"
    );
}

async fn accept_all(app: &TestApp, body: Value) {
    let n = body.as_array().map_or(1, Vec::len);
    let r = app.ingest(&body).await;
    assert_eq!(r["accepted"], n, "{r}");
}

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
