//! Faults to survive: the store stopping, slowing down or locked, a bad database
//! path, crashes with the SQLite WAL in place, and the engine unreachable behind the Conductor
//! proxy. Every wait is bounded by a deadline; every child process and private PostgreSQL
//! cluster is stopped when its test ends, pass or fail.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskpulse::store::Store;

use crate::helpers::free_port;
use crate::helpers::{binary, settings_for, update, Backend, TestApp, TestDb};
use crate::pgcluster::{as_unprivileged, PgCluster};
use crate::process::{run, Proc};

fn progress(id: &str, percent: f64) -> Value {
    let mut u = update(id, "IN_PROGRESS");
    u["progressPercent"] = json!(percent);
    u["workerId"] = json!("worker-1");
    u
}

/// POSTs a body; the status, the Retry-After header, the body and how long it took.
async fn post(app: &TestApp, body: &Value) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let resp = app
        .client
        .post(app.url("/api/v1/updates"))
        .timeout(Duration::from_secs(20))
        .json(body)
        .send()
        .await
        .expect("POST /api/v1/updates answers");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, body, started.elapsed())
}

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.client
        .get(app.url(path))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls `f` every 100 ms until it is true; fails the test after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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

/// Another process holding SQLite's write lock makes writes wait (busy_timeout), not fail:
/// the completion is acknowledged once the lock is gone, and progress is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_connection_is_waited_for() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    let (status, _, body, _) = post(&app, &progress("sq-lock", 5.0)).await;
    assert_eq!(status, 200, "{body}");

    let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other.close().await.unwrap();
    });

    let completion = {
        let client = app.client.clone();
        let url = app.url("/api/v1/updates");
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .post(url)
                .timeout(Duration::from_secs(20))
                .json(&update("sq-lock", "COMPLETED"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body, took) = post(&app, &progress("sq-lock", 6.0)).await;
    assert!(
        status == 200 || status == 503,
        "progress under the lock: {status} {body}"
    );
    assert!(took < Duration::from_secs(1), "progress took {took:?}");
    let (status, took) = completion.await.unwrap();
    assert_eq!(status, 200, "completion once the lock is gone");
    assert!(
        took >= Duration::from_millis(1500),
        "the completion waited for the lock: {took:?}"
    );
    holder.await.unwrap();
    app.settle().await;
    let rec = app.stored("sq-lock").await.unwrap();
    assert_eq!(rec.status.as_str(), "COMPLETED");
    app.shutdown().await;
}

/// A bad SQLite location stops `serve` at start with exit 2 and a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unusable_path_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing_parent = dir.path().join("no-such-dir").join("sub").join("x.db");
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    // The unprivileged user must reach the directory, and be unable to write in it.
    Command::new("chmod")
        .args(["755"])
        .arg(dir.path())
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["555"])
        .arg(&read_only)
        .status()
        .unwrap();
    let in_read_only = read_only.join("x.db");
    for path in [missing_parent, in_read_only] {
        let url = format!("sqlite://{}", path.display());
        let args = ["serve", "--listen", "127.0.0.1:0", "--database", &url];
        let mut cmd = as_unprivileged(&binary());
        cmd.args(args);
        let mut p = Proc::from_command(cmd, dir.path(), format!("taskpulse {}", args.join(" ")));
        let status = p.wait_exit(Duration::from_secs(15)).await;
        let stderr = p.stderr();
        assert_eq!(status.code(), Some(2), "{url}: {status}; stderr:\n{stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "the message names {}:\n{stderr}",
            path.display()
        );
        assert!(!path.exists());
    }
}

/// One kill -9 under steady load, then a SIGTERM, with the SQLite WAL in place: every
/// acknowledged completion survives both restarts, and `taskpulse check` finds nothing illegal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_and_sigterm_keep_every_acknowledged_completion() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k9.db").display());
    let start = |port: u16| {
        let listen = format!("127.0.0.1:{port}");
        Proc::spawn(
            dir.path(),
            &[
                "serve",
                "--listen",
                &listen,
                "--database",
                &db,
                "--progress-min-interval",
                "200ms",
                "--check-interval",
                "0",
            ],
            &[],
        )
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let wait_healthy = |addr: SocketAddr, client: reqwest::Client| async move {
        until("server answers /healthz", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        })
        .await;
    };

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = start(port);
    wait_healthy(addr, client.clone()).await;

    // Steady load: tasks start, report progress, complete; completions acknowledged are kept.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            let url = format!("http://{addr}/api/v1/updates");
            for n in 0.. {
                let id = format!("k9-{n}");
                let mut body: Vec<Value> = (0..5).map(|p| progress(&id, p as f64 * 20.0)).collect();
                body.push(update(&id, "COMPLETED"));
                for (i, u) in body.iter().enumerate() {
                    match client.post(&url).json(u).send().await {
                        Ok(r) if r.status() == 200 && i == 5 => {
                            acked.lock().unwrap().push(id.clone())
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("-KILL");
    let mut server = server;
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3, "load ran: {} completions", acked.len());
    assert!(
        dir.path().join("k9.db-wal").exists(),
        "the crash leaves the WAL behind"
    );

    let check_stored = |acked: Vec<String>| {
        let db = db.clone();
        async move {
            let store = Store::connect(&db).await.unwrap();
            for id in &acked {
                let rec = store.get_task(id).await.unwrap();
                assert_eq!(
                    rec.map(|r| r.status.as_str()),
                    Some("COMPLETED"),
                    "acknowledged completion of {id}"
                );
            }
            store.close().await;
        }
    };

    // Restart after the crash, then stop it cleanly and start it once more.
    let mut server = start(port);
    wait_healthy(addr, client.clone()).await;
    check_stored(acked.clone()).await;
    let r = client
        .post(format!("http://{addr}/api/v1/updates"))
        .json(&update("after-crash", "COMPLETED"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    let mut server = start(port);
    wait_healthy(addr, client.clone()).await;
    let mut all = acked.clone();
    all.push("after-crash".into());
    check_stored(all).await;
    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());

    let (status, out, err) = run(
        dir.path(),
        &["check", "--database", &db],
        &[],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(status.code(), Some(0), "taskpulse check:\n{out}{err}");
}

/// What a worker sees through the proxy: a poll and a task update, each as (request, status,
/// body, how long it took). Each request gives up after 15 s, so a hang fails the test.
async fn worker_calls(app: &TestApp) -> Vec<(String, u16, String, Duration)> {
    let mut out = Vec::new();
    for (method, path, body) in [
        ("GET", "/api/tasks/poll/encode?workerid=w1", None),
        (
            "POST",
            "/api/tasks",
            Some(json!({"taskId": "px-1", "workflowInstanceId": "wf-px", "status": "IN_PROGRESS"})),
        ),
    ] {
        let started = Instant::now();
        let mut req = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .timeout(Duration::from_secs(15));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("the proxy answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        out.push((format!("{method} {path}"), status, text, started.elapsed()));
    }
    out
}

/// The engine down behind the Conductor proxy: workers get 502 at once, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_proxy_answers_502_quickly_when_the_engine_is_down() {
    let db = TestDb::new(Backend::Sqlite).await;
    let closed = free_port();
    let app = TestApp::spawn_with(&db, |s| {
        s.conductor.url = Some(format!("http://127.0.0.1:{closed}"));
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    for (what, status, _, took) in worker_calls(&app).await {
        assert_eq!(status, 502, "{what}");
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    }
    app.shutdown().await;
}

/// The engine slow behind the Conductor proxy (it takes the connection and never answers):
/// workers get 504 after `--conductor-timeout`, never a hang, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_proxy_answers_504_when_the_engine_is_silent() {
    use tokio::io::AsyncReadExt;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = silent.accept().await {
            // Read what arrives, answer nothing.
            held.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
    });
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.conductor.url = Some(format!("http://{engine}"));
        s.conductor.timeout = Duration::from_secs(1);
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    for (what, status, text, took) in worker_calls(&app).await {
        assert_eq!(status, 504, "{what}");
        assert!(text.contains("--conductor-timeout"), "{text}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "{what} took {took:?}"
        );
    }
    // taskpulse itself stays responsive meanwhile.
    assert_eq!(status_of(&app, "/healthz").await, 200);
    app.shutdown().await;
    hold.abort();
}

/// A small tmpfs of the test's own, unmounted on drop; None when mounting is not allowed (not
/// root), in which case the test says so and does nothing.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::Builder::new()
            .prefix("taskpulse-disk-")
            .tempdir()
            .unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk with one file until the filesystem refuses more.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// SQLite on a full disk. At start: exit 2 with a message naming the database. While running:
/// the writer's "database or disk is full" is retried, not dropped; updates that need a commit
/// get 503, /readyz says 503; once space is freed, everything taken in is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_disk_fails_at_start_and_is_retried_while_running() {
    let Some(full) = SmallDisk::mount("256k") else {
        eprintln!("cannot mount a tmpfs here (not root); skipped");
        return;
    };
    full.fill();
    let path = full.path().join("x.db");
    let url = format!("sqlite://{}", path.display());
    let cwd = tempfile::tempdir().unwrap(); // not on the full disk: the child's output goes here
    let (status, _, stderr) = run(
        cwd.path(),
        &["serve", "--listen", "127.0.0.1:0", "--database", &url],
        &[],
        Duration::from_secs(15),
    )
    .await;
    eprintln!("start-up on a full disk:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(2),
        "full disk at start: {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("full"),
        "the message names {} and says the disk is full:\n{stderr}",
        path.display()
    );
    drop(full);

    // Large enough for the 3,000 rows and the WAL of the batches they are written in, once
    // the filler is gone.
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("t.db").display());
    let mut settings = settings_for(&url);
    settings.throttle.progress_min_interval = taskpulse::Settings::default()
        .throttle
        .progress_min_interval;
    settings.check_loop.check_interval = Duration::ZERO;
    let app = TestApp::start(settings).await;
    let (status, _, body, _) = post(&app, &progress("disk-0", 5.0)).await;
    assert_eq!(status, 200, "{body}");
    app.settle().await;
    let filler = disk.fill();

    // New tasks need a commit: an NDJSON body of 3,000 is more than any WAL space left over.
    let body: String = (0..3000)
        .map(|i| {
            format!(
                "{}\n",
                update(
                    &format!("disk-new-{i:04}-{}", "x".repeat(120)),
                    "IN_PROGRESS"
                )
            )
        })
        .collect();
    let send = || async {
        app.client
            .post(app.url("/api/v1/updates"))
            .header("content-type", "application/x-ndjson")
            .timeout(Duration::from_secs(20))
            .body(body.clone())
            .send()
            .await
            .unwrap()
    };
    let resp = send().await;
    assert_eq!(resp.status().as_u16(), 503, "new tasks on a full disk");
    assert!(resp.headers().get("retry-after").is_some());
    until(
        "/readyz 503 on a full disk",
        Duration::from_secs(10),
        || async { status_of(&app, "/readyz").await == 503 },
    )
    .await;
    let errors = app
        .metric_value("taskpulse_store_write_errors_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "write errors counted: {errors}");
    // Progress for a known task is still taken into memory.
    let (status, _, body, _) = post(&app, &progress("disk-0", 6.0)).await;
    assert_eq!(status, 200, "progress on a full disk: {body}");

    std::fs::remove_file(&filler).unwrap();
    until(
        "/readyz 200 after space is freed",
        Duration::from_secs(15),
        || async { status_of(&app, "/readyz").await == 200 },
    )
    .await;
    until(
        "the retried body acknowledged",
        Duration::from_secs(15),
        || async { send().await.status().as_u16() == 200 },
    )
    .await;
    app.settle().await;
    let store = Store::connect(&url).await.unwrap();
    let Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks WHERE task_id LIKE 'disk-new-%'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 3000, "every task taken in is stored");
    store.close().await;
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
