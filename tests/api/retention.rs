//! Retention with the real store: finished tasks past `--retention` leave the store with their
//! history and attempts, in batches; in-flight tasks stay whatever their age; audit records
//! past `--audit-retention` go; and an SQLite file gives the space back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskpulse::store::Store;

use crate::helpers::{exec, metric_value, update, Backend, TestApp, TestDb};
use crate::process::Server;
use crate::store_test;

async fn count(store: &Store, sql: &str) -> i64 {
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn ndjson(lines: impl IntoIterator<Item = Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut out, &l).unwrap();
        out.push(b'\n');
    }
    out
}

/// 2,500 finished tasks (three batches) and 5 in-flight ones that started long ago, with
/// `--retention 1s`: the finished ones leave the store with every history line and attempt,
/// the in-flight ones stay, and audit records older than `--audit-retention` go.
async fn finished_tasks_past_retention_leave_the_store(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.retention.retention = Duration::from_secs(1);
        // memory keeps finished tasks no longer than the store does (a shorter store
        // retention is refused at start)
        s.pipeline.terminal_retention = Duration::from_millis(500);
        s.retention.audit_retention = Duration::from_secs(3600);
        s.check_loop.check_interval = Duration::from_millis(200);
    })
    .await;
    const DONE: usize = 2_500;
    let lines = (0..DONE).flat_map(|i| {
        let mut start = update(&format!("done-{i}"), "IN_PROGRESS");
        start["workerId"] = json!("w1");
        let mut done = update(&format!("done-{i}"), "COMPLETED");
        done["workerId"] = json!("w1");
        [start, done]
    });
    let r = app.post_raw(ndjson(lines), "application/x-ndjson").await;
    assert_eq!(r.status(), 200);
    for i in 0..5 {
        let mut u = update(&format!("running-{i}"), "IN_PROGRESS");
        u["startTime"] = json!(1_000); // 1970: old, but not finished
        u["workerId"] = json!("w2");
        app.ingest(&u).await;
    }
    app.settle().await;
    let store = db.store().await;
    let now = taskpulse::now_ms();
    for (i, at) in [now - 7_200_000, now - 7_200_000, now].iter().enumerate() {
        exec(
            &store,
            &format!(
                "INSERT INTO repairs (at, rule, task_id, workflow_id, outcome, evidence, detail) \
                 VALUES ({at}, 'lease_expired', 'audit-{i}', 'wf', 'repaired', '{{}}', 'test')"
            ),
        )
        .await;
    }
    // Every history line reached the store; with a 1 s retention the leader may already have
    // pruned some of them (they count as pruned), so stored + pruned is the whole.
    // counted first: the pruned counter only grows, and is read after
    let stored = count(
        &store,
        "SELECT count(*) FROM task_events WHERE task_id LIKE 'done-%'",
    )
    .await;
    let pruned_so_far = metric_value(
        &app.scrape().await,
        "taskpulse_store_pruned_total",
        &[("table", "task_events")],
    )
    .unwrap_or(0.0) as i64;
    assert!(
        stored + pruned_so_far >= 2 * DONE as i64,
        "{stored} stored + {pruned_so_far} pruned < {}",
        2 * DONE
    );

    // one pass deletes the finished tasks, then the old audit records: wait for both
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &store,
        "SELECT count(*) FROM tasks WHERE task_id LIKE 'done-%'",
    )
    .await
        > 0
        || count(
            &store,
            "SELECT count(*) FROM repairs WHERE task_id LIKE 'audit-%'",
        )
        .await
            > 1
    {
        assert!(
            Instant::now() < deadline,
            "finished tasks or old audit records still stored after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (sql, want) in [
        (
            "SELECT count(*) FROM task_events WHERE task_id LIKE 'done-%'",
            0,
        ),
        (
            "SELECT count(*) FROM task_attempts WHERE task_id LIKE 'done-%'",
            0,
        ),
        (
            "SELECT count(*) FROM tasks WHERE task_id LIKE 'running-%'",
            5,
        ),
        (
            "SELECT count(*) FROM task_events WHERE task_id LIKE 'running-%'",
            5,
        ),
        (
            "SELECT count(*) FROM task_attempts WHERE task_id LIKE 'running-%'",
            5,
        ),
        (
            "SELECT count(*) FROM repairs WHERE task_id LIKE 'audit-%'",
            1,
        ),
        ("SELECT count(*) FROM repairs WHERE task_id = 'audit-2'", 1),
        // memory still holds the finished tasks: the checker must not write them back
        (
            "SELECT count(*) FROM repairs WHERE rule = 'store_divergence'",
            0,
        ),
    ] {
        assert_eq!(count(&store, sql).await, want, "{sql}");
    }
    let pruned = |table: &'static str| {
        let app = &app;
        async move {
            metric_value(
                &app.scrape().await,
                "taskpulse_store_pruned_total",
                &[("table", table)],
            )
        }
    };
    assert_eq!(pruned("tasks").await, Some(DONE as f64));
    assert_eq!(pruned("task_events").await, Some(2.0 * DONE as f64));
    assert_eq!(pruned("task_attempts").await, Some(DONE as f64));
    assert_eq!(pruned("repairs").await, Some(2.0));
    store.close().await;
    app.shutdown().await;
}
store_test!(finished_tasks_past_retention_leave_the_store);

/// `--retention 0` and `--audit-retention 0` keep everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_retention_keeps_everything() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.retention.retention = Duration::ZERO;
        s.retention.audit_retention = Duration::ZERO;
        s.check_loop.check_interval = Duration::from_millis(100);
    })
    .await;
    app.ingest(&update("old", "COMPLETED")).await;
    app.settle().await;
    let store = db.store().await;
    let settings = taskpulse::settings::RetentionSettings {
        retention: Duration::ZERO,
        audit_retention: Duration::ZERO,
    };
    // a pass far in the future still deletes nothing
    let totals = taskpulse::retention::pass(
        &store,
        &settings,
        taskpulse::now_ms() + 100 * 86_400_000,
        &taskpulse::retention::RetentionMetrics::unregistered(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(totals, Default::default());
    assert_eq!(count(&store, "SELECT count(*) FROM tasks").await, 1);
    store.close().await;
    app.shutdown().await;
}

fn sqlite_pages(path: &std::path::Path) -> i64 {
    let rt = tokio::runtime::Handle::current();
    let url = format!("sqlite://{}", path.display());
    tokio::task::block_in_place(|| {
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        })
    })
}

/// The real binary on SQLite: 20,000 finished tasks with 1 KiB messages grow the file; once
/// they are past `--retention` the file shrinks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_shrinks_once_finished_tasks_are_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let db = format!("sqlite://{}", path.display());
    let server = Server::start(
        dir.path(),
        &[
            "--database",
            &db,
            // long enough that nothing is pruned before all of it is written, on a busy
            // machine too (the size "full" is measured then)
            "--retention",
            "20s",
            "--terminal-retention",
            "10s",
            "--check-interval",
            "300ms",
        ],
        &[],
    )
    .await;
    let empty = sqlite_pages(&path);
    let client = reqwest::Client::new();
    const N: usize = 20_000;
    let message = "m".repeat(1024);
    for start in (0..N).step_by(2_000) {
        let lines = (start..start + 2_000).map(|i| {
            let mut u = update(&format!("t{i}"), "COMPLETED");
            u["progressMessage"] = json!(message);
            u
        });
        let r = client
            .post(server.url("/api/v1/updates"))
            .header("content-type", "application/x-ndjson")
            .body(ndjson(lines))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let full = sqlite_pages(&path);
    assert_eq!(
        metric_value(
            &server.scrape().await,
            "taskpulse_store_pruned_total",
            &[("table", "tasks")]
        ),
        Some(0.0),
        "nothing pruned yet"
    );
    assert!(full > empty + 4_000, "{empty} pages empty, {full} full");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pruned = metric_value(
            &server.scrape().await,
            "taskpulse_store_pruned_total",
            &[("table", "tasks")],
        );
        if pruned == Some(N as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pruned {pruned:?} of {N} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = sqlite_pages(&path);
    assert!(
        after < empty + (full - empty) / 10,
        "the file kept its pages: {empty} empty, {full} full, {after} after retention"
    );
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{stderr}");
}

/// A database from before incremental vacuum keeps its size until `taskpulse migrate` converts
/// it; the conversion says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_converts_an_older_sqlite_file_to_give_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE filler (x TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, 0, "an older file: no auto vacuum");
    pool.close().await;
    let db = format!("sqlite://{}", path.display());
    let (status, stdout, stderr) = crate::process::run(
        dir.path(),
        &["migrate", "--database", &db],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("converted to incremental vacuum"),
        "{stdout}"
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, 2, "incremental");
    pool.close().await;
    // and a second run has nothing to convert
    let (_, stdout, _) = crate::process::run(
        dir.path(),
        &["migrate", "--database", &db],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert!(!stdout.contains("converted"), "{stdout}");
}
