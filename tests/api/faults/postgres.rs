//! The PostgreSQL store failing: stopped, locked, read-only, refusing a row.

use super::*;

/// PostgreSQL stops under load and comes back. Meanwhile progress flows into memory, updates that
/// need a commit get 503 with Retry-After (quickly, once the writer knows), /readyz says 503; after
/// it is back, writes resume by themselves and every acknowledged update is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_refuses_commits_keeps_progress_and_recovers() {
    let Some(pg) = PgCluster::start() else {
        eprintln!("no PostgreSQL server binaries under /usr/lib/postgresql; skipped");
        return;
    };
    let mut settings = settings_for(&pg.url());
    settings.throttle.progress_min_interval = Duration::from_millis(200);
    settings.check_loop.check_interval = Duration::ZERO;
    let app = TestApp::start(settings).await;
    for id in ["pg-a", "pg-b", "pg-c", "pg-d"] {
        let (status, _, body, _) = post(&app, &progress(id, 10.0)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(status_of(&app, "/readyz").await, 200);

    pg.stop();

    // Progress-only updates are answered from memory, store or no store.
    let mut pct = 10.0;
    for _ in 0..10 {
        pct += 1.0;
        let (status, _, body, took) = post(&app, &progress("pg-a", pct)).await;
        assert_eq!(status, 200, "progress while the store is down: {body}");
        assert!(took < Duration::from_secs(1), "progress took {took:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In memory at once, and the task view shows it from memory, saying the history is missing.
    let in_memory = app.tracker.get("pg-a").unwrap();
    assert_eq!(in_memory.progress, Some(pct as f32));
    let started = Instant::now();
    let resp = app.get("/api/v1/tasks/pg-a").await;
    assert_eq!(resp.status().as_u16(), 200, "task view during the outage");
    let view: Value = resp.json().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "task view took {:?}",
        started.elapsed()
    );
    assert_eq!(view["progressPercent"], json!(pct), "{view}");
    assert!(
        view["historyUnavailable"]
            .as_str()
            .is_some_and(|w| w.contains("store unavailable")),
        "{view}"
    );
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(1), "{view}");
    // A task the store alone would know gets 503.
    let resp = app.get("/api/v1/tasks/never-seen").await;
    assert_eq!(resp.status().as_u16(), 503);

    // A completion needs a commit: 503 + Retry-After, never 200. The first may wait until the
    // writer has seen the store fail (the pool's 3 s acquire timeout), not the full 10 s.
    let (status, retry_after, body, took) = post(&app, &update("pg-b", "COMPLETED")).await;
    assert_eq!(status, 503, "completion while the store is down: {body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert!(took < Duration::from_secs(9), "first 503 took {took:?}");
    // Once the writer knows, the next ones are refused at once, and so is a new task.
    let (status, retry_after, body, took) = post(&app, &update("pg-c", "FAILED")).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    assert!(
        took < Duration::from_secs(1),
        "503 once known took {took:?}"
    );
    let (status, _, body, took) = post(&app, &update("pg-new", "IN_PROGRESS")).await;
    assert_eq!(status, 503, "new task while the store is down: {body}");
    assert!(took < Duration::from_secs(1), "new task 503 took {took:?}");
    // The client's retry of the completion is not acknowledged while it isn't durable.
    let (status, _, body, _) = post(&app, &update("pg-b", "COMPLETED")).await;
    assert_eq!(
        status, 503,
        "retried completion while the store is down: {body}"
    );
    assert_eq!(status_of(&app, "/readyz").await, 503);
    assert_eq!(status_of(&app, "/healthz").await, 200);
    let errors = app
        .metric_value("taskpulse_store_write_errors_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "write errors counted: {errors}");

    pg.start_again();

    // Writes resume by themselves; the retried completion is now a duplicate with a 200.
    until("store ready again", Duration::from_secs(15), || async {
        status_of(&app, "/readyz").await == 200
    })
    .await;
    until(
        "retried completion acknowledged",
        Duration::from_secs(15),
        || async {
            let (status, _, body, _) = post(&app, &update("pg-b", "COMPLETED")).await;
            status == 200 && body["duplicates"] == 1
        },
    )
    .await;
    let (status, _, body, _) = post(&app, &update("pg-d", "COMPLETED")).await;
    assert_eq!(status, 200, "completion after recovery: {body}");
    assert_eq!(body["accepted"], 1, "{body}");
    until("writes drained", Duration::from_secs(10), || async {
        app.metric_value("taskpulse_store_pending_writes", &[])
            .await
            == Some(0.0)
    })
    .await;
    // The coalesced progress waits one interval before its write.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.settle().await;

    let store = Store::connect(&pg.url()).await.unwrap();
    for (id, want) in [
        ("pg-b", "COMPLETED"),
        ("pg-c", "FAILED"),
        ("pg-d", "COMPLETED"),
    ] {
        let rec = store.get_task(id).await.unwrap().expect(id);
        assert_eq!(rec.status.as_str(), want, "{id}");
    }
    let a = store.get_task("pg-a").await.unwrap().unwrap();
    assert_eq!(a.progress, Some(pct as f32), "newest progress stored");
    store.close().await;
    app.shutdown().await;
}

/// A lock on the tasks table makes the store slow, not the ingest path: progress is answered
/// at once, /healthz answers, what waits is visible and bounded by --max-pending-writes, past
/// which updates get 503; once the lock goes, everything waiting is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locked_table_bounds_pending_and_keeps_ingest_responsive() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(100);
        s.check_loop.check_interval = Duration::ZERO;
        s.pipeline.max_pending_writes = 5;
    })
    .await;
    let ids: Vec<String> = (0..20).map(|i| format!("lock-{i}")).collect();
    for id in &ids {
        let (status, _, body, _) = post(&app, &progress(id, 1.0)).await;
        assert_eq!(status, 200, "{body}");
    }
    app.settle().await;

    let Store::Postgres(pool) = db.store().await else {
        unreachable!()
    };
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();

    let (mut ok, mut refused, mut max_pending) = (0, 0, 0.0f64);
    let started = Instant::now();
    let mut pct = 1.0;
    while started.elapsed() < Duration::from_secs(3) {
        pct += 1.0;
        for id in &ids {
            let (status, retry_after, body, took) = post(&app, &progress(id, pct)).await;
            assert!(took < Duration::from_secs(1), "progress took {took:?}");
            match status {
                200 => ok += 1,
                503 => {
                    assert!(retry_after.is_some(), "503 without Retry-After");
                    refused += 1
                }
                other => panic!("{other}: {body}"),
            }
        }
        let pending = app
            .metric_value("taskpulse_store_pending_writes", &[])
            .await
            .unwrap();
        max_pending = max_pending.max(pending);
        assert_eq!(status_of(&app, "/healthz").await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(ok > 0, "some progress was accepted under the lock");
    assert!(refused > 0, "past --max-pending-writes updates get 503");
    // Admission checks before a body is applied (one update past the limit per body); the
    // throttle's timers may add the one coalesced value each task had waiting.
    let bound = (5 + 1 + ids.len()) as f64;
    assert!(
        (1.0..=bound).contains(&max_pending),
        "pending writes visible and bounded by {bound}: {max_pending}"
    );
    eprintln!("under the lock: {ok} accepted, {refused} refused, at most {max_pending} pending");
    // A completion past the limit is refused at once too.
    let (status, _, body, took) = post(&app, &update("lock-0", "COMPLETED")).await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1));

    locker.commit().await.unwrap();
    until("writes drained", Duration::from_secs(10), || async {
        app.metric_value("taskpulse_store_pending_writes", &[])
            .await
            == Some(0.0)
    })
    .await;
    let (status, _, body, _) = post(&app, &update("lock-0", "COMPLETED")).await;
    assert_eq!(status, 200, "completion after the lock: {body}");
    let rec = app.stored("lock-0").await.unwrap();
    assert_eq!(rec.status.as_str(), "COMPLETED");
    pool.close().await;
    app.shutdown().await;
}

/// A store that answers pings but refuses writes (the database set read-only, as a primary
/// that came back as a standby would be): the writer retries, /readyz says 503 with the
/// writer's reason while a plain ping still works, completions get 503, and once writes are
/// allowed again everything waiting is stored and /readyz is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_only_makes_readyz_fail_and_writes_resume() {
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.url.rsplit_once('/').unwrap().1.to_string();
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(100);
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let (status, _, body, _) = post(&app, &progress("ro-a", 10.0)).await;
    assert_eq!(status, 200, "{body}");
    app.settle().await;
    assert_eq!(status_of(&app, "/readyz").await, 200);

    let admin = sqlx::PgPool::connect(&crate::helpers::postgres_admin_url())
        .await
        .unwrap();
    let set_read_only = |on: bool| {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            let sql = if on {
                format!("ALTER DATABASE {name} SET default_transaction_read_only = on")
            } else {
                format!("ALTER DATABASE {name} RESET default_transaction_read_only")
            };
            sqlx::query(&sql).execute(&admin).await.unwrap();
            // Sessions take the setting when they start: end the open ones.
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind(&name)
                .execute(&admin)
                .await
                .unwrap();
        }
    };
    set_read_only(true).await;

    // A progress change makes the writer try, and fail.
    let (status, _, body, _) = post(&app, &progress("ro-a", 20.0)).await;
    assert_eq!(status, 200, "progress goes to memory: {body}");
    until(
        "/readyz 503 from the writer",
        Duration::from_secs(15),
        || async { status_of(&app, "/readyz").await == 503 },
    )
    .await;
    let resp = app.get("/readyz").await;
    let why = resp.text().await.unwrap();
    assert!(why.contains("writes have been failing"), "{why}");
    // The store itself still answers: this is the writer's knowledge, not a failed ping.
    let store = db.store().await;
    store
        .ready()
        .await
        .expect("a read-only database answers pings");
    store.close().await;
    let (status, retry_after, body, _) = post(&app, &update("ro-a", "COMPLETED")).await;
    assert_eq!(status, 503, "completion while writes fail: {body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    let errors = app
        .metric_value("taskpulse_store_write_errors_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "write errors counted: {errors}");

    set_read_only(false).await;
    until("/readyz 200 again", Duration::from_secs(15), || async {
        status_of(&app, "/readyz").await == 200
    })
    .await;
    until(
        "completion acknowledged",
        Duration::from_secs(15),
        || async { post(&app, &update("ro-a", "COMPLETED")).await.0 == 200 },
    )
    .await;
    app.settle().await;
    let rec = app.stored("ro-a").await.unwrap();
    assert_eq!(rec.status.as_str(), "COMPLETED");
    assert_eq!(
        rec.progress,
        Some(20.0),
        "the progress accepted meanwhile is stored"
    );
    admin.close().await;
    app.shutdown().await;
}

/// A row the store refuses for its data (a CHECK constraint here), in a batch with good rows:
/// after two refused attempts the writer splits the batch, the good rows are stored and
/// acknowledged, and the refused one is rejected naming the store's reason, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_store_refuses_is_rejected_and_the_rest_of_its_batch_stored() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn_with(&db, |s| s.check_loop.check_interval = Duration::ZERO).await;
    let Store::Postgres(pool) = db.store().await else {
        unreachable!()
    };
    sqlx::query("ALTER TABLE tasks ADD CONSTRAINT no_poison CHECK (task_id <> 'poison')")
        .execute(&pool)
        .await
        .unwrap();
    let body = json!([
        update("good-1", "IN_PROGRESS"),
        update("poison", "IN_PROGRESS"),
        update("good-2", "IN_PROGRESS")
    ]);
    let (status, _, answer, took) = post(&app, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{answer}");
    assert_eq!(rejected[0]["taskId"], "poison");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no_poison")),
        "the store's reason is named: {answer}"
    );
    assert!(
        took < Duration::from_secs(5),
        "split after two refusals, took {took:?}"
    );
    for id in ["good-1", "good-2"] {
        assert_eq!(
            app.stored(id).await.unwrap().status.as_str(),
            "IN_PROGRESS",
            "{id}"
        );
    }
    assert!(app.stored("poison").await.is_none());
    assert_eq!(
        status_of(&app, "/readyz").await,
        200,
        "a refused row is not an outage"
    );
    pool.close().await;
    app.shutdown().await;
}
