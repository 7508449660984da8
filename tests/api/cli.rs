//! The real `taskpulse` binary (`docs/contract.md` §1 and §3.1): `serve` and `migrate` as a user runs them,
//! signals, restarts, crashes and bad settings. Every child process is bounded in time and
//! killed when its test ends; nothing runs on the default port 9477.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::store::Store;

use crate::helpers::{metric_value, update, Backend, TestDb};
use crate::process::{free_addr, run, Server, EXIT_TIMEOUT};

fn sqlite_url(dir: &Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

fn progress_update(id: &str, percent: f64) -> Value {
    let mut u = update(id, "IN_PROGRESS");
    u["progressPercent"] = json!(percent);
    u["workerId"] = json!("worker-1");
    u
}

async fn stored_progress(url: &str, id: &str) -> Option<f32> {
    let store = Store::connect(url).await.expect("open the store");
    let rec = store.get_task(id).await.expect("store read");
    store.close().await;
    rec.expect("task is stored").progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_database_creates_taskpulse_db_in_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]).await;
    assert!(
        dir.path().join("taskpulse.db").is_file(),
        "no taskpulse.db in the working directory; it holds {:?}",
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    let health = server.get_json("/healthz").await;
    assert_eq!(health["status"], "ok", "{health}");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// Contract 3.1: on SIGTERM, values the throttle is holding back are written before exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_coalesced_progress() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "flush.db");
    let server = Server::start(
        dir.path(),
        &["--database", &db, "--progress-min-interval", "1h"],
        &[],
    )
    .await;
    let r = server.ingest(&progress_update("flush-1", 10.0)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    for p in [20.0, 35.0, 42.5] {
        let r = server.ingest(&progress_update("flush-1", p)).await;
        assert_eq!(r["accepted"], 1, "{r}");
    }
    let scrape = server.scrape().await;
    let coalesced = metric_value(
        &scrape,
        "taskpulse_progress_updates_total",
        &[("outcome", "coalesced")],
    );
    assert_eq!(coalesced, Some(3.0), "the later updates are held back");
    let shown = server.get_json("/api/v1/tasks/flush-1").await;
    assert_eq!(shown["progressPercent"], 42.5, "{shown}");
    // while it runs, the store holds the first value only (read the file from outside)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let before = loop {
        let store = Store::connect(&db).await.expect("open the store");
        let rec = store.get_task("flush-1").await.expect("store read");
        store.close().await;
        match rec {
            Some(r) => break r.progress,
            None if tokio::time::Instant::now() > deadline => panic!("flush-1 never written"),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(
        before,
        Some(10.0),
        "only the first update is written at once"
    );

    let (status, stderr) = server.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr:\n{stderr}"
    );
    assert_eq!(
        stored_progress(&db, "flush-1").await,
        Some(42.5),
        "the last value sent is stored; stderr:\n{stderr}"
    );
}

/// Contract 3.1: after a restart the in-memory state is rebuilt from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_in_flight_tasks_and_their_series() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "restart.db");
    let args = ["--database", db.as_str(), "--progress-min-interval", "1h"];
    let server = Server::start(dir.path(), &args, &[]).await;
    server.ingest(&progress_update("keep-a", 5.0)).await;
    server.ingest(&progress_update("keep-a", 40.0)).await; // coalesced until shutdown
    let mut b = progress_update("keep-b", 75.0);
    b["timeoutSeconds"] = json!(3600);
    b["startTime"] = json!(taskpulse::now_ms() - 60_000);
    server.ingest(&b).await;
    server.ingest(&progress_update("keep-done", 90.0)).await;
    let r = server.ingest(&update("keep-done", "COMPLETED")).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");

    let server = Server::start(dir.path(), &args, &[]).await;
    let list = server.get_json("/api/v1/tasks").await;
    let tasks = list["tasks"].as_array().expect("tasks array");
    let find = |id: &str| {
        tasks
            .iter()
            .find(|t| t["taskId"] == id)
            .unwrap_or_else(|| panic!("{id} missing after restart: {list}"))
    };
    assert_eq!(find("keep-a")["status"], "IN_PROGRESS", "{list}");
    assert_eq!(find("keep-b")["status"], "IN_PROGRESS", "{list}");
    assert_eq!(find("keep-a")["progressPercent"], 40.0, "{list}");
    assert_eq!(find("keep-b")["progressPercent"], 75.0, "{list}");
    assert_eq!(find("keep-b")["timeoutSeconds"], 3600, "{list}");
    assert!(
        tasks
            .iter()
            .all(|t| t["taskId"] != "keep-done" || t["status"] == "COMPLETED"),
        "{list}"
    );
    let done = server.get_json("/api/v1/tasks/keep-done").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    let scrape = server.scrape().await;
    let ratio = |id: &str| {
        metric_value(
            &scrape,
            "taskpulse_task_progress_ratio",
            &[
                ("task_id", id),
                ("task_type", "encode"),
                ("workflow_type", "media"),
            ],
        )
    };
    let near = |got: Option<f64>, want: f64| got.is_some_and(|v| (v - want).abs() < 1e-6);
    assert!(near(ratio("keep-a"), 0.4), "keep-a: {:?}", ratio("keep-a"));
    assert!(near(ratio("keep-b"), 0.75), "keep-b: {:?}", ratio("keep-b"));
    assert_eq!(ratio("keep-done"), None, "a finished task has no series");
    assert!(
        metric_value(
            &scrape,
            "taskpulse_task_deadline_timestamp_seconds",
            &[("task_id", "keep-b")]
        )
        .is_some(),
        "keep-b's deadline survives the restart"
    );
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// An acknowledged completion is durable: SIGKILL right after the 200 loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_acknowledged_before_kill_9_survives() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "durable.db");
    let args = ["--database", db.as_str(), "--progress-min-interval", "1h"];
    let server = Server::start(dir.path(), &args, &[]).await;
    server.ingest(&progress_update("durable-1", 30.0)).await;
    let r = server.ingest(&update("durable-1", "COMPLETED")).await;
    assert_eq!(r["accepted"], 1, "{r}");
    server.kill9().await;

    let server = Server::start(dir.path(), &args, &[]).await;
    let task = server.get_json("/api/v1/tasks/durable-1").await;
    assert_eq!(task["status"], "COMPLETED", "{task}");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// Bad settings stop `serve` before it listens: exit code 2, a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_fail_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "never.db");
    let listen = free_addr().to_string();
    let unknown_key = dir.path().join("unknown-key.toml");
    std::fs::write(&unknown_key, "stall-after = \"5m\"\nstall-aftr = \"5m\"\n").unwrap();
    let bad_value = dir.path().join("bad-value.toml");
    std::fs::write(&bad_value, "max-task-series = \"lots\"\n").unwrap();
    let missing = dir.path().join("no-such-file.toml");
    let (unknown_key, bad_value, missing) = (
        unknown_key.to_str().unwrap(),
        bad_value.to_str().unwrap(),
        missing.to_str().unwrap(),
    );

    // (extra arguments, environment, any of these names must appear in the message)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            vec!["--progress-min-interval", "soon"],
            vec![],
            &["progress-min-interval"],
        ),
        (
            vec![],
            vec![("TASKPULSE_STALL_AFTER", "bogus")],
            &["stall-after", "STALL_AFTER"],
        ),
        (vec!["--config", unknown_key], vec![], &["stall-aftr"]),
        (vec!["--config", bad_value], vec![], &["max-task-series"]),
        (
            vec!["--progress-min-delta", "150"],
            vec![],
            &["progress-min-delta"],
        ),
        (vec!["--config", missing], vec![], &["no-such-file.toml"]),
        // the store would delete finished tasks that memory still answers late updates for
        (
            vec!["--retention", "1s", "--terminal-retention", "10m"],
            vec![],
            &["terminal-retention"],
        ),
        (
            vec![],
            vec![("TASKPULSE_CONFIG", missing)],
            &["no-such-file.toml"],
        ),
        // Airflow's own sql_alchemy_conn carries its driver; taskpulse wants postgres://
        (
            vec!["--airflow-db", "postgresql+psycopg2://airflow@db/airflow"],
            vec![],
            &["airflow-db"],
        ),
        (
            vec!["--airflow-poll-interval", "10ms"],
            vec![],
            &["airflow-poll-interval"],
        ),
    ];
    for (extra, envs, names) in cases {
        let mut args = vec!["serve", "--listen", &listen, "--database", &db];
        args.extend(extra);
        let (status, _, stderr) = run(dir.path(), &args, &envs, EXIT_TIMEOUT).await;
        let what = format!("taskpulse {} {envs:?}", args.join(" "));
        assert_eq!(
            status.code(),
            Some(2),
            "{what}: {status}; stderr:\n{stderr}"
        );
        assert!(
            names.iter().any(|n| stderr.contains(n)),
            "{what}: the message should name {names:?}; stderr:\n{stderr}"
        );
    }
    assert!(
        !dir.path().join("never.db").exists(),
        "a failed start must not create the database"
    );
}

/// `--airflow-db` naming a PostgreSQL without Airflow 3's tables stops start-up (exit 2), saying
/// what it expected, rather than following an empty engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_airflow_db_without_airflow_tables_stops_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "store.db");
    let listen = free_addr().to_string();
    let not_airflow = crate::helpers::postgres_admin_url();
    let args = [
        "serve",
        "--listen",
        &listen,
        "--database",
        &db,
        "--airflow-db",
        &not_airflow,
    ];
    let (status, _, stderr) = run(dir.path(), &args, &[], EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(2), "{status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("--airflow-db") && stderr.contains("Airflow 3"),
        "{stderr}"
    );
}

/// Counts the per-task progress series in a scrape.
fn progress_series(scrape: &prometheus_parse::Scrape) -> usize {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "taskpulse_task_progress_ratio")
        .count()
}

/// Precedence end to end: flag > environment > file > default, seen through the address
/// the server listens on and the per-task series cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "precedence.db");
    let (file_addr, env_addr) = (free_addr(), free_addr());
    let config = dir.path().join("taskpulse.toml");
    std::fs::write(
        &config,
        format!("listen = \"{file_addr}\"\nmax-task-series = 1\ndatabase = \"{db}\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // file only: the file's address and cap (file > default)
    let server = Server::start_at(file_addr, dir.path(), &["serve", "--config", config], &[])
        .await
        .unwrap_or_else(|e| panic!("serve --config: {e}"));
    let batch: Vec<Value> = (0..5)
        .map(|i| progress_update(&format!("prec-{i}"), 10.0 * (i + 1) as f64))
        .collect();
    let r = server.ingest(&json!(batch)).await;
    assert_eq!(r["accepted"], 5, "{r}");
    let scrape = server.scrape().await;
    assert_eq!(progress_series(&scrape), 1, "file sets max-task-series = 1");
    assert_eq!(
        metric_value(&scrape, "taskpulse_task_series_omitted", &[]),
        Some(4.0)
    );
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");

    // env over file (address and cap), then a flag over env (cap)
    let env_listen = env_addr.to_string();
    let envs = [
        ("TASKPULSE_LISTEN", env_listen.as_str()),
        ("TASKPULSE_MAX_TASK_SERIES", "2"),
    ];
    let server = Server::start_at(env_addr, dir.path(), &["serve", "--config", config], &envs)
        .await
        .unwrap_or_else(|e| panic!("serve with TASKPULSE_LISTEN: {e}"));
    assert_eq!(progress_series(&server.scrape().await), 2, "env beats file");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");

    let args = ["serve", "--config", config, "--max-task-series", "3"];
    let server = Server::start_at(env_addr, dir.path(), &args, &envs)
        .await
        .unwrap_or_else(|e| panic!("serve --max-task-series 3: {e}"));
    assert_eq!(progress_series(&server.scrape().await), 3, "flag beats env");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

async fn has_tasks_table(store: &Store) -> bool {
    let n: i64 = match store {
        Store::Sqlite(p) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
            )
            .fetch_one(p)
            .await
        }
        Store::Postgres(p) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'tasks'",
            )
            .fetch_one(p)
            .await
        }
    }
    .expect("catalog query");
    n == 1
}

/// `taskpulse migrate` creates the schema and says so; running it again is harmless.
async fn migrate_creates_the_tables(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend).await;
    let args = ["migrate", "--database", db.url.as_str()];
    for round in 0..2 {
        let (status, stdout, stderr) = run(dir.path(), &args, &[], EXIT_TIMEOUT).await;
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.contains("migrations applied"),
            "round {round}: no confirmation; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    let store = db.store().await;
    assert!(
        has_tasks_table(&store).await,
        "no `tasks` table after migrate"
    );
    store.close().await;
}
crate::store_test!(migrate_creates_the_tables);

/// `serve --database postgres://...`: an update goes in, reads back, and is in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let server = Server::start(dir.path(), &["--database", &db.url], &[]).await;
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["store"], "postgres", "{ready}");
    let r = server.ingest(&progress_update("pg-1", 64.0)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let task = server.get_json("/api/v1/tasks/pg-1").await;
    assert_eq!(task["status"], "IN_PROGRESS", "{task}");
    assert_eq!(task["progressPercent"], 64.0, "{task}");
    assert_eq!(task["workerId"], "worker-1", "{task}");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stored_progress(&db.url, "pg-1").await, Some(64.0));
}

/// A database that is not Conductor's (`--conductor-db` pointing at the wrong one) stops
/// start-up with one line naming the setting and the missing table, each cause said once
/// (the chain used to repeat the database's message four times).
#[tokio::test]
async fn a_start_error_names_each_cause_once() {
    let pg = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path(), "once.db");
    let listen = free_addr().to_string();
    let args = [
        "serve",
        "--listen",
        &listen,
        "--database",
        &db,
        "--conductor-db",
        &pg.url,
    ];
    let (status, _, stderr) = run(dir.path(), &args, &[], EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("taskpulse: error:"))
        .unwrap_or_else(|| panic!("no error line; stderr:\n{stderr}"));
    assert!(line.contains("--conductor-db"), "{line}");
    assert_eq!(
        line.matches("does not exist").count(),
        1,
        "each cause once: {line}"
    );
}
