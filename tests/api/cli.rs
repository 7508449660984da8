//! The real `taskpulse` binary (contract 1 and 3.1): `serve` and `migrate` as a user runs them,
//! signals, restarts, crashes and bad settings. Every child process is bounded in time and
//! killed when its test ends; nothing runs on the default port 9477.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::store::Store;

use crate::helpers::{binary, metric_value, update, Backend, TestDb};

/// Longest a server may take to answer /healthz.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a process may take to exit (after a signal, or a command that should end).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every setting's environment variable, removed from children so the developer's own
/// environment can't change what a test sees.
const SETTING_VARS: &[&str] = &[
    "TASKPULSE_CONFIG",
    "TASKPULSE_LISTEN",
    "TASKPULSE_DATABASE",
    "TASKPULSE_PROGRESS_MIN_INTERVAL",
    "TASKPULSE_PROGRESS_MIN_DELTA",
    "TASKPULSE_STALL_AFTER",
    "TASKPULSE_WAIT_GRACE",
    "TASKPULSE_CHECK_INTERVAL",
    "TASKPULSE_REPAIR",
    "TASKPULSE_MAX_TASK_SERIES",
    "TASKPULSE_MAX_BODY_BYTES",
    "TASKPULSE_AUTH_TOKEN",
    "TASKPULSE_TERMINAL_RETENTION",
    "TASKPULSE_MAX_PENDING_WRITES",
];

/// A free loopback address: bind port 0, read the port, release it.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().unwrap()
}

fn sqlite_url(dir: &Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

/// One run of the binary, its output going to files (a full pipe can't block it). Killed with
/// SIGKILL on drop if still running.
struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    what: String,
}

impl Proc {
    fn spawn(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stdout = cwd.join(format!("proc-{n}.stdout"));
        let stderr = cwd.join(format!("proc-{n}.stderr"));
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        for var in SETTING_VARS {
            cmd.env_remove(var);
        }
        cmd.env("TASKPULSE_LOG", "info,sqlx=warn");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let what = format!(
            "taskpulse {}{}",
            args.join(" "),
            envs.iter()
                .map(|(k, v)| format!(" [{k}={v}]"))
                .collect::<String>()
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            stdout,
            stderr,
            what,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to end; kills it and fails the test after `EXIT_TIMEOUT`.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` still running after {EXIT_TIMEOUT:?}; killed. stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command that should end by itself (within `EXIT_TIMEOUT`).
async fn run(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut p = Proc::spawn(cwd, args, envs);
    let status = p.wait_exit().await;
    (status, p.stdout(), p.stderr())
}

/// A running `taskpulse serve`.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    client: reqwest::Client,
}

impl Server {
    /// `serve --listen <free port> ARGS`, ready when /healthz answers. Retries with another
    /// port if the free one was taken in the meantime.
    async fn start(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        for _ in 0..3 {
            let addr = free_addr();
            let listen = addr.to_string();
            let mut all = vec!["serve", "--listen", &listen];
            all.extend_from_slice(args);
            match Server::start_at(addr, cwd, &all, envs).await {
                Ok(s) => return s,
                Err(stderr) if stderr.contains("cannot listen") => continue,
                Err(stderr) => panic!("taskpulse {} exited at start:\n{stderr}", all.join(" ")),
            }
        }
        panic!("no free port after 3 tries");
    }

    /// Runs `args` (the caller picks how the address is set) and waits for /healthz on `addr`.
    /// `Err(stderr)` if the process exits first.
    async fn start_at(
        addr: SocketAddr,
        cwd: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server, String> {
        let mut proc = Proc::spawn(cwd, args, envs);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if proc.exited().is_some() {
                return Err(proc.stderr());
            }
            if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
                if r.status() == 200 {
                    return Ok(Server { proc, addr, client });
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "`{}` did not answer /healthz on {addr} within {START_TIMEOUT:?}. stderr:\n{}",
                    proc.what,
                    proc.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn ingest(&self, body: &Value) -> Value {
        let resp = self
            .client
            .post(self.url("/api/v1/updates"))
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/updates");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "ingest answered {status}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self.client.get(self.url(path)).send().await.expect(path);
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn scrape(&self) -> prometheus_parse::Scrape {
        let resp = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("exposition format parses")
    }

    /// SIGTERM, then the exit status (the test fails if it takes longer than `EXIT_TIMEOUT`).
    async fn terminate(mut self) -> (ExitStatus, String) {
        self.proc.signal("-TERM");
        let status = self.proc.wait_exit().await;
        (status, self.proc.stderr())
    }

    /// SIGKILL: no chance to flush anything.
    async fn kill9(mut self) {
        self.proc.signal("-KILL");
        let status = self.proc.wait_exit().await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }
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
        (
            vec![],
            vec![("TASKPULSE_CONFIG", missing)],
            &["no-such-file.toml"],
        ),
    ];
    for (extra, envs, names) in cases {
        let mut args = vec!["serve", "--listen", &listen, "--database", &db];
        args.extend(extra);
        let (status, _, stderr) = run(dir.path(), &args, &envs).await;
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
        let (status, stdout, stderr) = run(dir.path(), &args, &[]).await;
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
