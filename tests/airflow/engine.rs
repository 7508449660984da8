//! A real Apache Airflow for the tests: a fresh metadata database on the test PostgreSQL,
//! `airflow db migrate`, a read-only role for taskpulse, then a scheduler (LocalExecutor),
//! DAG processor, triggerer and API server (the LocalExecutor's task runner reports through
//! the API server's execution API, as `airflow standalone` wires it) on the DAGs of
//! `tests/airflow/dags/`. Each process runs in a process group of its own, stopped (TERM, then
//! KILL) when the engine is dropped; their logs are shown when something does not come.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::helpers::{free_port, postgres_admin_url, Backend, TestDb};
use crate::tools::Tool;

/// The processes of a running Airflow.
const COMPONENTS: [&str; 4] = ["api-server", "scheduler", "dag-processor", "triggerer"];

/// The `airflow` command (`scripts/test.sh` installs it into `.venv-airflow`), or `None` after
/// a skip note (a failure under `TASKPULSE_REQUIRE_TOOLS=1`).
pub fn find() -> Option<PathBuf> {
    Tool {
        env: Some("TASKPULSE_AIRFLOW"),
        local: Some(".venv-airflow/bin/airflow"),
        names: &["airflow"],
        how: "scripts/test.sh installs it: tests/airflow/requirements.txt into .venv-airflow",
    }
    .find()
}

pub struct Airflow {
    airflow: PathBuf,
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
    procs: Vec<(&'static str, Child)>,
    /// Airflow's own connection (the database owner), for the tests' checks.
    pub pool: PgPool,
    /// taskpulse's: a role that may only read.
    pub read_only_url: String,
    role: String,
    _db: TestDb,
}

impl Airflow {
    /// A migrated metadata database and a read-only role on it; nothing started yet.
    pub async fn migrate(airflow: &Path) -> Airflow {
        let db = TestDb::new(Backend::Postgres).await;
        let home = tempfile::tempdir().expect("AIRFLOW_HOME");
        let env = environment(airflow, home.path(), &db.url);
        let started = Instant::now();
        let out = command(airflow, &env, home.path())
            .args(["db", "migrate"])
            .output()
            .expect("run airflow db migrate");
        assert!(
            out.status.success(),
            "airflow db migrate failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "airflow db migrate: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let pool = PgPool::connect(&db.url).await.expect("connect as Airflow");
        let role = format!("taskpulse_test_ro_{}", std::process::id());
        let read_only_url = read_only_role(&pool, &db.url, &role).await;
        Airflow {
            airflow: airflow.to_path_buf(),
            home,
            env,
            procs: Vec::new(),
            pool,
            read_only_url,
            role,
            _db: db,
        }
    }

    /// Starts the four processes, the API server first and the others once it listens (the
    /// task runners report through it); `taskpulse` is the URL the DAGs report progress to.
    pub fn start(&mut self, taskpulse: &str) {
        self.env.push(("TASKPULSE_URL".into(), taskpulse.into()));
        for name in COMPONENTS {
            if name != "api-server" && self.procs.len() == 1 {
                self.wait_for_api();
            }
            let log = std::fs::File::create(self.home.path().join(format!("{name}.log")))
                .expect("log file");
            let err = log.try_clone().expect("log file");
            let child = command(&self.airflow, &self.env, self.home.path())
                .arg(name)
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("start airflow {name}: {e}"));
            self.procs.push((name, child));
        }
    }

    /// Waits (at most 180 s) until the API server accepts connections: uvicorn listens once
    /// the application has started.
    fn wait_for_api(&mut self) {
        let port = self
            .env
            .iter()
            .find(|(k, _)| k == "AIRFLOW__API__PORT")
            .map(|(_, v)| v.clone())
            .expect("the API server's port");
        let deadline = Instant::now() + Duration::from_secs(180);
        while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err() {
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "the API server does not listen on {port} after 180 s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs an `airflow` command (`tasks clear ...`) to its end; panics with its output when
    /// it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = command(&self.airflow, &self.env, self.home.path())
            .args(args)
            .output()
            .expect("run airflow");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "airflow {args:?} failed:\n{text}");
        text
    }

    /// Panics with the logs when a process has exited.
    pub fn check_alive(&mut self) {
        let mut dead = Vec::new();
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                dead.push(format!("airflow {name} exited ({status})"));
            }
        }
        assert!(dead.is_empty(), "{}\n{}", dead.join("; "), self.logs());
    }

    /// The last lines of every process's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in COMPONENTS {
            let text = std::fs::read_to_string(self.home.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "---- airflow {name} (last {} lines)\n",
                tail.len()
            ));
            for l in tail {
                out.push_str(&l.chars().take(400).collect::<String>());
                out.push('\n');
            }
        }
        out
    }

    /// Stops the processes and drops the read-only role.
    pub async fn stop(mut self) {
        self.kill_all();
        let _ = sqlx::query(&format!("DROP OWNED BY {}", self.role))
            .execute(&self.pool)
            .await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&postgres_admin_url()).await {
            let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {}", self.role))
                .execute(&admin)
                .await;
            admin.close().await;
        }
    }

    /// Stops the processes, leaving the database as they left it.
    pub fn halt(&mut self) {
        self.kill_all();
    }

    /// TERM to each process group, KILL to what is left after 10 s.
    fn kill_all(&mut self) {
        for (_, child) in &self.procs {
            signal_group(child.id(), "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child) in &mut self.procs {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            signal_group(child.id(), "KILL"); // the group's workers too
            let _ = child.wait();
        }
        self.procs.clear();
    }
}

impl Drop for Airflow {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Airflow's configuration, all from the environment: the LocalExecutor, this database, the
/// test DAGs, ports of its own (several runs may share the machine), fast loops.
fn environment(airflow: &Path, home: &Path, db_url: &str) -> Vec<(String, String)> {
    let bin = airflow.parent().expect("airflow's directory");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let conn = db_url.replacen("postgres://", "postgresql+psycopg2://", 1);
    let dags = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/airflow/dags");
    let api = free_port();
    let pairs: Vec<(&str, String)> = vec![
        ("PATH", path),
        ("AIRFLOW_HOME", home.display().to_string()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", conn),
        ("AIRFLOW__CORE__EXECUTOR", "LocalExecutor".into()),
        ("AIRFLOW__CORE__DAGS_FOLDER", dags.display().to_string()),
        ("AIRFLOW__CORE__LOAD_EXAMPLES", "False".into()),
        ("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False".into()),
        ("AIRFLOW__CORE__FERNET_KEY", String::new()),
        ("AIRFLOW__API__HOST", "127.0.0.1".into()),
        ("AIRFLOW__API__PORT", api.to_string()),
        (
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            format!("http://127.0.0.1:{api}/execution/"),
        ),
        (
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "taskpulse-tests-jwt-secret-0123456789abcdef".into(),
        ),
        (
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
            free_port().to_string(),
        ),
        (
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
            free_port().to_string(),
        ),
        // the task runner gives a request to the execution API 5 s by default, then retries
        // it; on two busy cores the first `PATCH .../run` can take longer, and its retry is
        // answered 400 (already running), which fails the task: Airflow's own advice under
        // load is a longer timeout (config.yml, `[workers] execution_api_timeout`, 3.3.2)
        ("AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT", "60".into()),
        // fewer task runner processes at once on two cores
        ("AIRFLOW__CORE__PARALLELISM", "6".into()),
        ("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", "1".into()),
        ("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "5".into()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn command(airflow: &Path, env: &[(String, String)], home: &Path) -> Command {
    let mut c = Command::new(airflow);
    c.current_dir(home).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A role that can read Airflow's tables and nothing else; its URL.
async fn read_only_role(pool: &PgPool, db_url: &str, role: &str) -> String {
    let db = db_url.rsplit_once('/').expect("database in url").1;
    for sql in [
        format!("DROP OWNED BY {role}"),
        format!("DROP ROLE IF EXISTS {role}"),
    ] {
        let _ = sqlx::query(&sql).execute(pool).await;
    }
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT ON DATABASE {db} TO {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&sql)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut url = url::Url::parse(db_url).expect("database url");
    url.set_username(role).expect("user in url");
    url.set_password(None).expect("no password");
    url.to_string()
}
