//! `TestApp`: the real application, started in-process on port 0 against a fresh store, with a
//! helper per endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskpulse::model::TaskRecord;
use taskpulse::store::Store;
use taskpulse::{Application, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings for an app on `url`, on port 0, with a short throttle interval and no shutdown
/// grace.
pub fn settings_for(url: &str) -> Settings {
    let mut s = Settings::default();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.http.shutdown_grace = Duration::ZERO;
    s.store.database = url.to_string();
    s.throttle.progress_min_interval = Duration::from_millis(500);
    s
}

/// Where PostgreSQL runs for tests. The test command starts it when it is not running.
pub fn postgres_admin_url() -> String {
    std::env::var("TASKPULSE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `async fn NAME(backend: Backend)` once per backend, as `NAME::sqlite` and
/// `NAME::postgres`.
#[macro_export]
macro_rules! store_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    };
}

/// A fresh, empty database for one test: a SQLite file in a temp dir, or a new PostgreSQL
/// database with a unique name.
pub struct TestDb {
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("taskpulse.db").display()),
            Backend::Postgres => {
                static N: AtomicUsize = AtomicUsize::new(0);
                let name = format!(
                    "taskpulse_test_{}_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed),
                    taskpulse::now_ms() % 1_000_000
                );
                let admin = postgres_admin_url();
                let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {admin} is not reachable ({e}); the test command starts it"
                    )
                });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .expect("create test database");
                pool.close().await;
                let base = admin.rsplit_once('/').expect("url has a database").0;
                format!("{base}/{name}")
            }
        };
        TestDb { url, _dir: dir }
    }

    /// Settings for an app on this database, on port 0, with a short throttle interval and no
    /// shutdown grace (the grace has tests of its own).
    pub fn settings(&self) -> Settings {
        settings_for(&self.url)
    }

    /// A direct connection to the store, for checking what was really written.
    pub async fn store(&self) -> Store {
        Store::connect(&self.url)
            .await
            .expect("connect to test store")
    }
}

/// The running application plus an HTTP client.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub store: Store,
    /// The app's in-memory table (for running checker passes in-process).
    pub tracker: std::sync::Arc<taskpulse::pipeline::Tracker>,
    pub settings: Settings,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<taskpulse::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> TestApp {
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = db.settings();
        tweak(&mut settings);
        Self::start(settings).await
    }

    pub async fn start(settings: Settings) -> TestApp {
        let app = Application::build(settings.clone())
            .await
            .expect("application builds");
        let addr = app.local_addr();
        let store = app.store();
        let tracker = app.tracker();
        // On PostgreSQL a replica leads (and exports state gauges) after its election's claim
        // delay; tests start once it does, as a lone replica in production does within a second.
        let leadership = app.leadership();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !leadership.is_leader() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the app never became leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            client: reqwest::Client::new(),
            store,
            tracker,
            settings,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `POST /api/v1/updates` with a JSON body.
    pub async fn post_updates(&self, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/updates"))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Posts and returns the parsed 200 answer, failing the test on any other status.
    pub async fn ingest(&self, body: &serde_json::Value) -> serde_json::Value {
        let resp = self.post_updates(body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "ingest answered {status}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// `POST /api/v1/updates` with raw bytes and a content type.
    pub async fn post_raw(&self, body: Vec<u8>, content_type: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/updates"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// `GET /api/v1/tasks/{id}` as JSON (panics unless 200).
    pub async fn task(&self, id: &str) -> serde_json::Value {
        let resp = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(resp.status(), 200, "task {id}");
        resp.json().await.unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let resp = self.get("/metrics").await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// `/metrics` parsed by a real exposition-format parser.
    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        parse_scrape(&self.metrics_text().await)
    }

    /// What the store holds for a task (read directly, not through the app).
    pub async fn stored(&self, id: &str) -> Option<TaskRecord> {
        self.store.get_task(id).await.expect("store read")
    }

    /// Number of times the task's row was written: the `version` column.
    pub async fn stored_version(&self, id: &str) -> i64 {
        stored_version(&self.store, id).await
    }

    /// Waits until everything sent to the writer so far is committed.
    pub async fn settle(&self) {
        // give in-flight request handling a moment, then wait for the writer queue
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..500 {
            if self
                .metric_value("taskpulse_store_pending_writes", &[])
                .await
                == Some(0.0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("writes still pending after 5s");
    }

    /// Waits past one throttle interval (so coalesced progress, status flaps and rejection
    /// lines have been handed to the writer), then until everything is committed.
    pub async fn settle_throttled(&self) {
        tokio::time::sleep(
            self.settings.throttle.progress_min_interval + Duration::from_millis(150),
        )
        .await;
        self.settle().await;
    }

    /// The value of one sample in a fresh scrape, matched by name and the given labels.
    pub async fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let scrape = self.scrape().await;
        metric_value(&scrape, name, labels)
    }

    /// Graceful shutdown, as on SIGTERM: drains and flushes coalesced values.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("app task").expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

pub async fn stored_version(store: &Store, id: &str) -> i64 {
    let sql = match store {
        Store::Sqlite(_) => "SELECT version FROM tasks WHERE task_id = ?",
        Store::Postgres(_) => "SELECT version FROM tasks WHERE task_id = $1",
    };
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).bind(id).fetch_optional(p).await,
        Store::Postgres(p) => sqlx::query_scalar(sql).bind(id).fetch_optional(p).await,
    }
    .expect("store read")
    .unwrap_or(0)
}

/// One sample's value, by name and a subset of its labels.
pub fn metric_value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).map(|x| x == *v).unwrap_or(v.is_empty()))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// A task update body with the required fields.
pub fn update(task_id: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "taskId": task_id,
        "workflowId": format!("wf-{task_id}"),
        "taskType": "encode",
        "workflowType": "media",
        "status": status,
    })
}

/// Path of the built `taskpulse` binary (cargo builds it for integration tests), or
/// `TASKPULSE_TEST_BINARY` when set: running the process tests against another build (an
/// earlier release, say) shows which of them that build fails.
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("TASKPULSE_TEST_BINARY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_taskpulse")))
}

/// Runs one SQL statement on the store behind the app's back (no binds; both dialects).
pub async fn exec(store: &Store, sql: &str) -> u64 {
    match store {
        Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A free loopback port: bind port 0, read the port, release it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An exposition-format text read by a real parser (`prometheus_parse`), the one reader of
/// `/metrics` for every test.
pub fn parse_scrape(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("exposition format parses")
}

/// YAML text as JSON values, read by a real YAML parser (`serde_norway`), the one reader of
/// YAML for every test; `origin` names the text in a panic.
pub fn parse_yaml(text: &str, origin: &str) -> serde_json::Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("{origin}: {e}"))
}
