//! What following Kestra costs its database: an idle poll lists keys and versions and fetches
//! no document, however many executions run; a change fetches that execution only; documents
//! over the size limit are skipped and counted; a poll keeps to its byte budget. Counts come
//! from taskpulse's own cost metrics (`docs/engines/kestra.md` §11), never from timings.

use std::time::Duration;

use bytesize::ByteSize;
use serde_json::{json, Value};

use crate::conductor_tail::eventually;
use crate::helpers::{Backend, TestApp, TestDb};

use super::{at, attempt, execution, state, task_run, Kestra, WORKER_A};

async fn counter(app: &TestApp, name: &str) -> f64 {
    app.metric_value(name, &[]).await.unwrap_or(0.0)
}

async fn polls(app: &TestApp) -> f64 {
    app.metric_value("taskpulse_kestra_db_polls_total", &[("outcome", "ok")])
        .await
        .unwrap_or(0.0)
}

/// Waits (bounded) until `n` more polls have succeeded.
async fn after_polls(app: &TestApp, n: f64) {
    let start = polls(app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while polls(app).await < start + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {n} polls in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running execution `id` whose task run `tr-{id}` is at `step` (CREATED, RUNNING, SUCCESS).
fn running(id: &str, t: i64, step: &str) -> Value {
    let mut h = vec![("CREATED", at(t, 0.0))];
    if step != "CREATED" {
        h.push(("RUNNING", at(t, 0.1)));
    }
    if step == "SUCCESS" {
        h.push(("SUCCESS", at(t, 0.5)));
    }
    let h: Vec<(&str, &str)> = h.iter().map(|(s, d)| (*s, d.as_str())).collect();
    let attempts = if step == "CREATED" {
        vec![]
    } else {
        vec![attempt(&h[1..], WORKER_A)]
    };
    let run = task_run(&format!("tr-{id}"), id, "extract", attempts, state(&h));
    execution(
        id,
        vec![run],
        state(&[("CREATED", &at(t, 0.0)), ("RUNNING", &at(t, 0.05))]),
    )
}

/// Polls with nothing changed, with `n` executions running: (rows listed, documents fetched).
async fn idle_cost(app: &TestApp, polls: f64) -> (f64, f64) {
    let listed = counter(app, "taskpulse_kestra_db_rows_listed_total").await;
    let fetched = counter(app, "taskpulse_kestra_db_documents_fetched_total").await;
    after_polls(app, polls).await;
    (
        counter(app, "taskpulse_kestra_db_rows_listed_total").await - listed,
        counter(app, "taskpulse_kestra_db_documents_fetched_total").await - fetched,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_fetches_no_document_and_changes_are_followed() {
    let k = Kestra::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let t = taskpulse::now_ms() - 10_000;
    for i in 0..10 {
        k.persist(&running(&format!("ex-{i}"), t, "RUNNING")).await;
    }
    let app = super::app_on(&k, &db).await;
    eventually(&app, "tr-ex-9", "followed", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    let (listed, fetched) = idle_cost(&app, 5.0).await;
    assert_eq!(fetched, 0.0, "idle with 10 running: no document fetched");
    assert!(
        listed >= 50.0,
        "10 executions listed on each of 5 polls: {listed}"
    );

    // ten times as many running: still nothing fetched when nothing changes
    let before = counter(&app, "taskpulse_kestra_db_documents_fetched_total").await;
    for i in 10..100 {
        k.persist(&running(&format!("ex-{i}"), t, "RUNNING")).await;
    }
    eventually(&app, "tr-ex-99", "followed", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    after_polls(&app, 2.0).await;
    let fetched = counter(&app, "taskpulse_kestra_db_documents_fetched_total").await - before;
    assert_eq!(fetched, 90.0, "each new execution fetched once");
    let (listed, fetched) = idle_cost(&app, 5.0).await;
    assert_eq!(fetched, 0.0, "idle with 100 running: no document fetched");
    assert!(listed >= 500.0, "{listed}");

    // every transition followed, each costing one document
    let before = counter(&app, "taskpulse_kestra_db_documents_fetched_total").await;
    k.persist(&running("ex-new", t, "CREATED")).await;
    eventually(&app, "tr-ex-new", "created", |v| v["status"] == "SCHEDULED").await;
    k.persist(&running("ex-new", t, "RUNNING")).await;
    eventually(&app, "tr-ex-new", "running", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    k.persist(&running("ex-new", t, "SUCCESS")).await;
    eventually(&app, "tr-ex-new", "done", |v| v["status"] == "COMPLETED").await;
    after_polls(&app, 2.0).await;
    let fetched = counter(&app, "taskpulse_kestra_db_documents_fetched_total").await - before;
    assert_eq!(
        fetched, 3.0,
        "three versions of one execution, three documents"
    );
    let bytes = counter(&app, "taskpulse_kestra_db_fetched_bytes_total").await;
    assert!(bytes > 0.0);
}

/// A task run list large enough that the execution's JSON is over a few hundred KiB.
fn big(id: &str, t: i64, runs: usize) -> Value {
    let st = state(&[("CREATED", &at(t, 0.0)), ("RUNNING", &at(t, 0.1))]);
    let list: Vec<Value> = (0..runs)
        .map(|i| {
            let mut r = task_run(&format!("tr-{id}-{i}"), id, "each", vec![], st.clone());
            r["value"] = json!(format!("item-{i}"));
            r
        })
        .collect();
    execution(id, list, st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_over_the_size_limit_is_skipped_and_counted() {
    let k = Kestra::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let t = taskpulse::now_ms() - 10_000;
    k.persist(&big("ex-big", t, 3_000)).await;
    k.persist(&running("ex-small", t, "RUNNING")).await;
    let url = k.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.kestra.db = Some(url);
        s.engines.kestra.poll_interval = Duration::from_millis(200);
        s.engines.kestra.max_document_bytes = ByteSize::kib(256);
    })
    .await;
    eventually(&app, "tr-ex-small", "followed", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    let skipped = || async {
        app.metric_value(
            "taskpulse_kestra_db_documents_skipped_total",
            &[("reason", "too_large")],
        )
        .await
        .unwrap_or(0.0)
    };
    assert_eq!(skipped().await, 1.0);
    assert_eq!(app.get("/api/v1/tasks/tr-ex-big-0").await.status(), 404);
    // not fetched again while unchanged
    after_polls(&app, 5.0).await;
    assert_eq!(
        skipped().await,
        1.0,
        "an unchanged big execution costs nothing more"
    );
    // a new version is looked at again (and skipped again); others are still followed
    k.persist(&big("ex-big", t + 1, 3_000)).await;
    k.persist(&running("ex-small", t, "SUCCESS")).await;
    eventually(&app, "tr-ex-small", "done", |v| v["status"] == "COMPLETED").await;
    after_polls(&app, 2.0).await;
    assert_eq!(skipped().await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_keeps_to_its_byte_budget() {
    let k = Kestra::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let t = taskpulse::now_ms() - 10_000;
    for i in 0..40 {
        k.persist(&running(&format!("ex-{i}"), t, "RUNNING")).await;
    }
    let url = k.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.kestra.db = Some(url);
        s.engines.kestra.poll_interval = Duration::from_millis(200);
        s.engines.kestra.max_document_bytes = ByteSize::kib(4);
        s.engines.kestra.max_poll_bytes = ByteSize::kib(4);
    })
    .await;
    // some wait for a later poll...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let deferred = app
            .metric_value("taskpulse_kestra_db_documents_deferred", &[])
            .await
            .unwrap_or(0.0);
        if deferred > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing ever deferred"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and all are followed, each fetched once
    for i in 0..40 {
        eventually(&app, &format!("tr-ex-{i}"), "followed", |v| {
            v["status"] == "IN_PROGRESS"
        })
        .await;
    }
    assert_eq!(
        counter(&app, "taskpulse_kestra_db_documents_fetched_total").await,
        40.0
    );
}

/// An execution that ended an hour before `t`, as Kestra leaves it.
fn finished(id: &str, t: i64) -> Value {
    let mut e = running(id, t - 3_600_000, "SUCCESS");
    e["state"] = state(&[
        ("CREATED", &at(t - 3_600_000, 0.0)),
        ("RUNNING", &at(t - 3_600_000, 0.05)),
        ("SUCCESS", &at(t - 3_600_000, 2.5)),
    ]);
    e
}

impl Kestra {
    /// `history` finished executions, written in one statement for speed (each row what
    /// `persist` writes for one), then analysed, as a database that has run for a while.
    async fn with_history(history: i64, t: i64) -> Kestra {
        let k = Kestra::new().await;
        let doc = finished("EX", t).to_string();
        sqlx::query(
            "INSERT INTO executions (key, value) SELECT 'old-' || i, \
             replace($1, '\"EX\"', '\"old-' || i || '\"')::jsonb FROM generate_series(1, $2) AS i",
        )
        .bind(&doc)
        .bind(history)
        .execute(&k.pool)
        .await
        .unwrap();
        sqlx::raw_sql("ANALYZE executions")
            .execute(&k.pool)
            .await
            .unwrap();
        k
    }

    /// Rows of `executions` read so far, by sequential scan and by index.
    async fn rows_read(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) \
             FROM pg_stat_user_tables WHERE relname = 'executions'",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

/// Rows of `executions` an idle poll reads, 10 running executions on `history` finished ones.
async fn idle_rows_per_poll(history: i64) -> f64 {
    let t = taskpulse::now_ms() - 10_000;
    let k = Kestra::with_history(history, t).await;
    for i in 0..10 {
        k.persist(&running(&format!("ex-{i}"), t, "RUNNING")).await;
    }
    let db = TestDb::new(Backend::Sqlite).await;
    let app = super::app_on(&k, &db).await;
    eventually(&app, "tr-ex-9", "followed", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    // start-up's reads reach the statistics within PostgreSQL's 10 s idle flush
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (before, p0) = (k.rows_read().await, polls(&app).await);
    after_polls(&app, 10.0).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (after, p1) = (k.rows_read().await, polls(&app).await);
    app.shutdown().await;
    (after - before) as f64 / (p1 - p0).max(1.0)
}

/// The rows an idle poll reads from `executions` do not grow with the finished executions
/// Kestra keeps: 5,000 and 50,000 cost the same (the running ones, through the
/// `state_current` index), where a listing that walked the table would read every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_costs_the_same_on_ten_times_the_history() {
    let small = idle_rows_per_poll(5_000).await;
    let large = idle_rows_per_poll(50_000).await;
    eprintln!("executions rows read per idle poll: 5,000 finished {small}, 50,000 {large}");
    for (history, rows) in [(5_000, small), (50_000, large)] {
        assert!(
            rows <= 30.0,
            "history {history}: {rows} rows of executions per idle poll for 10 running"
        );
    }
}
