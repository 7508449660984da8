//! The WAIT queue read from Conductor's own PostgreSQL (`--conductor-db`): a real PostgreSQL
//! holding Conductor's tables, created here from `docs/engines/conductor.md`, including a
//! `conductor_queue_state` trigger like the one `experimentalQueueNotify` installs, so
//! LISTEN/NOTIFY runs for real.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use taskpulse::engines::conductor::db::DbOptions;
use taskpulse::engines::conductor::wait_queue::{self, APPLICATION_NAME};
use taskpulse::wait::{WaitCounts, WaitMetrics, WaitSnapshot};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestDb};

/// Conductor's persistence tables (postgres-persistence migrations, as far as the facts go) and
/// a queue-state trigger that notifies `conductor_queue_state` with
/// `{"<queue>": {"nextDelivery": ms, "depth": n}, "__now__": ms}` (unpopped messages per queue)
/// on every insert, delete and change of `popped`.
pub(crate) const CONDUCTOR_SCHEMA: &str = r#"
CREATE TABLE workflow (
    workflow_id VARCHAR(255) NOT NULL PRIMARY KEY,
    correlation_id VARCHAR(255),
    json_data TEXT NOT NULL,
    created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE task (
    task_id VARCHAR(255) NOT NULL PRIMARY KEY,
    json_data TEXT NOT NULL,
    created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE workflow_to_task (
    workflow_id VARCHAR(255) NOT NULL,
    task_id VARCHAR(255) NOT NULL,
    created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (workflow_id, task_id)
);
CREATE TABLE queue (
    queue_name VARCHAR(255) NOT NULL PRIMARY KEY,
    created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE queue_message (
    queue_name VARCHAR(255) NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    deliver_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    popped BOOLEAN DEFAULT FALSE,
    priority INTEGER DEFAULT 0,
    created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    offset_time_seconds BIGINT,
    payload TEXT,
    PRIMARY KEY (queue_name, message_id)
);
CREATE FUNCTION notify_queue_state() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conductor_queue_state', (
        SELECT (COALESCE(jsonb_object_agg(q.queue_name, q.state), '{}'::jsonb)
                || jsonb_build_object('__now__',
                       (EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) * 1000)::bigint))::text
        FROM (SELECT queue_name,
                     jsonb_build_object(
                         'nextDelivery', (EXTRACT(EPOCH FROM min(deliver_on)) * 1000)::bigint,
                         'depth', count(*)) AS state
              FROM queue_message WHERE NOT popped GROUP BY queue_name) AS q));
    RETURN NULL;
END;
$$;
CREATE TRIGGER queue_state_on_pop AFTER UPDATE ON queue_message FOR EACH ROW
    WHEN (OLD.popped IS DISTINCT FROM NEW.popped) EXECUTE FUNCTION notify_queue_state();
CREATE TRIGGER queue_state_on_change AFTER INSERT OR DELETE ON queue_message FOR EACH ROW
    EXECUTE FUNCTION notify_queue_state();
"#;

/// The bookkeeping tables Conductor writes with each task and workflow (postgres-persistence
/// `V1__initial_schema.sql:71-146`, primary keys as `V6__update_pk.sql` parts 3, 4, 5, 8, 9
/// leave them, at b54f0d4e): with them the task tail reads only what is in flight.
pub(crate) const CONDUCTOR_IN_FLIGHT_TABLES: &str = r#"
CREATE TABLE task_scheduled (
    created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    workflow_id VARCHAR(255) NOT NULL, task_key VARCHAR(255) NOT NULL,
    task_id VARCHAR(255) NOT NULL, PRIMARY KEY (workflow_id, task_key)
);
CREATE TABLE task_in_progress (
    created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    task_def_name VARCHAR(255) NOT NULL, task_id VARCHAR(255) NOT NULL,
    workflow_id VARCHAR(255) NOT NULL, in_progress_status BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (task_def_name, task_id)
);
CREATE TABLE workflow_def_to_workflow (
    created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    workflow_def VARCHAR(255) NOT NULL, date_str VARCHAR(60) NOT NULL,
    workflow_id VARCHAR(255) NOT NULL, PRIMARY KEY (workflow_def, date_str, workflow_id)
);
CREATE TABLE workflow_pending (
    created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    workflow_type VARCHAR(255) NOT NULL, workflow_id VARCHAR(255) NOT NULL,
    PRIMARY KEY (workflow_type, workflow_id)
);
CREATE INDEX workflow_type_index ON workflow_pending (workflow_type);
CREATE INDEX workflow_id_index ON workflow_to_task (workflow_id);
"#;

/// `callbackAfterSeconds` of a WAIT that waits to be signalled.
const FOREVER_SECONDS: i64 = 2_147_483_647;

/// A test database holding Conductor's tables, and a writer on it (playing Conductor).
pub(crate) struct Conductor {
    pub(crate) url: String,
    pub(crate) pool: PgPool,
    _db: TestDb,
}

impl Conductor {
    pub(crate) async fn new() -> Conductor {
        let db = TestDb::new(Backend::Postgres).await;
        let pool = PgPool::connect(&db.url)
            .await
            .expect("connect as Conductor");
        sqlx::raw_sql(CONDUCTOR_SCHEMA)
            .execute(&pool)
            .await
            .expect("create Conductor's tables");
        Conductor {
            url: db.url.clone(),
            pool,
            _db: db,
        }
    }

    /// The database's clock, epoch ms.
    pub(crate) async fn now(&self) -> i64 {
        sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::int8")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A WAIT task (json_data like Conductor's) and its WAIT message due at `deliver_ms`, in one
    /// transaction. `wait_timeout`: the task's `waitTimeout`, omitted when `None`.
    async fn add_wait(
        &self,
        id: &str,
        workflow_type: Option<&str>,
        wait_timeout: Option<i64>,
        deliver_ms: i64,
    ) {
        let mut doc = json!({
            "taskId": id, "taskType": "WAIT", "taskDefName": "WAIT",
            "referenceTaskName": "wait_ref", "status": "IN_PROGRESS",
            "workflowInstanceId": format!("wf-{id}"), "updateTime": deliver_ms,
            "callbackAfterSeconds": 0, "inputData": {"duration": "1m"},
        });
        if let Some(wf) = workflow_type {
            doc["workflowType"] = json!(wf);
        }
        if let Some(t) = wait_timeout {
            doc["waitTimeout"] = json!(t);
        }
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO task (task_id, json_data) VALUES ($1, $2)")
            .bind(id)
            .bind(doc.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO workflow_to_task (workflow_id, task_id) VALUES ($1, $2)")
            .bind(format!("wf-{id}"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        self.push("WAIT", id, deliver_ms).await;
    }

    /// A queue message due at `deliver_ms` (stored as UTC wall time, like Conductor on a UTC
    /// server).
    async fn push(&self, queue: &str, id: &str, deliver_ms: i64) {
        // createQueueIfNotExists
        sqlx::query(
            "INSERT INTO queue (queue_name) VALUES ($1) ON CONFLICT (queue_name) DO NOTHING",
        )
        .bind(queue)
        .execute(&self.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO queue_message (queue_name, message_id, deliver_on, priority, \
               offset_time_seconds, payload) \
             VALUES ($1, $2, to_timestamp($3::float8 / 1000) AT TIME ZONE 'UTC', 0, 0, NULL)",
        )
        .bind(queue)
        .bind(id)
        .bind(deliver_ms)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn exec(&self, sql: &str, id: &str) {
        sqlx::query(sql).bind(id).execute(&self.pool).await.unwrap();
    }

    async fn pop(&self, id: &str) {
        self.exec(
            "UPDATE queue_message SET popped = TRUE WHERE queue_name = 'WAIT' AND message_id = $1",
            id,
        )
        .await
    }

    async fn remove(&self, id: &str) {
        self.exec(
            "DELETE FROM queue_message WHERE queue_name = 'WAIT' AND message_id = $1",
            id,
        )
        .await
    }

    /// Pids of the reader's sessions.
    async fn reader_pids(&self) -> HashSet<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(APPLICATION_NAME)
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }
}

fn lag_histogram() -> WaitMetrics {
    WaitMetrics::unregistered()
}

async fn start(
    c: &Conductor,
    grace: Duration,
    refresh_every: Duration,
    lag: &WaitMetrics,
) -> (watch::Receiver<WaitSnapshot>, tokio::task::JoinHandle<()>) {
    wait_queue::spawn(
        &c.url,
        &DbOptions::default(),
        grace,
        refresh_every,
        lag.clone(),
        CancellationToken::new(),
    )
    .await
    .expect("the WAIT reader starts")
}

/// Waits (at most `limit`) until the snapshot satisfies `pred`; answers how long it took.
async fn wait_for(
    rx: &watch::Receiver<WaitSnapshot>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&WaitSnapshot) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if pred(&rx.borrow()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}; last snapshot {:?}",
            *rx.borrow()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn waiting(s: &WaitSnapshot, wf: &str) -> i64 {
    s.by_workflow_type.get(wf).map_or(0, |c| c.waiting)
}

fn counts(waiting: i64, overdue: i64, due_next_minute: i64) -> WaitCounts {
    WaitCounts {
        waiting,
        overdue,
        due_next_minute,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_by_workflow_type_from_conductor_rows() {
    let c = Conductor::new().await;
    let now = c.now().await;
    let s = 1000;
    // order: overdue by 120 s; due in 30 s; due in 10 min; overdue by 100 s per waitTimeout
    // although its message was pushed back to +5 s (waitTimeout wins)
    c.add_wait("o1", Some("order"), Some(now - 120 * s), now - 120 * s)
        .await;
    c.add_wait("o2", Some("order"), Some(now + 30 * s), now + 30 * s)
        .await;
    c.add_wait("o3", Some("order"), Some(now + 600 * s), now + 600 * s)
        .await;
    c.add_wait("o4", Some("order"), Some(now - 100 * s), now + 5 * s)
        .await;
    // popped 500 s late: delivered, so neither waiting nor the oldest overdue
    c.add_wait("o5", Some("order"), Some(now - 500 * s), now - 500 * s)
        .await;
    c.pop("o5").await;
    // billing: 10 s late (inside the grace); 40 s late by deliver_on (no waitTimeout);
    // waiting to be signalled (waitTimeout 0, deliver_on ~68 years out)
    c.add_wait("b1", Some("billing"), Some(now - 10 * s), now - 10 * s)
        .await;
    c.add_wait("b2", Some("billing"), None, now - 40 * s).await;
    c.add_wait("b3", Some("billing"), Some(0), now + FOREVER_SECONDS * s)
        .await;
    // no workflowType; a message without a task row; a task whose JSON is broken
    c.add_wait("n1", None, Some(now + 10 * s), now + 10 * s)
        .await;
    c.push("WAIT", "orphan", now + 3600 * s).await;
    sqlx::query("INSERT INTO task (task_id, json_data) VALUES ('broken', '{not json')")
        .execute(&c.pool)
        .await
        .unwrap();
    c.push("WAIT", "broken", now - 3600 * s).await;
    // other queues don't count
    c.push("SIMPLE_TASK", "x1", now - 3600 * s).await;

    let (rx, handle) = start(&c, Duration::from_secs(30), MINUTE, &lag_histogram()).await;
    let snap = rx.borrow().clone();
    let want: HashMap<String, WaitCounts> = [
        ("order", counts(4, 2, 1)),
        ("billing", counts(3, 1, 0)),
        // n1 due in 10 s; orphan waits an hour; broken is an hour late by deliver_on
        ("", counts(3, 1, 1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(snap.by_workflow_type, want);
    assert!(
        snap.read_at >= now && snap.read_at - now < 5_000,
        "read_at {} is the database's clock (now {now})",
        snap.read_at
    );
    // "broken" (3600 s, by deliver_on) is the most overdue
    let oldest = (snap.read_at - (now - 3600 * s)) as f64 / 1000.0;
    assert!(
        (snap.oldest_overdue_seconds - oldest).abs() < 1e-6,
        "oldest overdue {} want {oldest}",
        snap.oldest_overdue_seconds
    );

    // without the broken one, o1 (120 s by waitTimeout) is
    c.remove("broken").await;
    wait_for(&rx, Duration::from_secs(2), "broken removed", |s| {
        s.by_workflow_type.get("") == Some(&counts(2, 0, 1))
    })
    .await;
    let snap = rx.borrow().clone();
    let oldest = (snap.read_at - (now - 120 * s)) as f64 / 1000.0;
    assert!((snap.oldest_overdue_seconds - oldest).abs() < 1e-6);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_sessions_are_read_only() {
    let c = Conductor::new().await;
    let pool = wait_queue::connect_read_only(&c.url).await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW default_transaction_read_only")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "on");
    let name: String = sqlx::query_scalar("SHOW application_name")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, APPLICATION_NAME);
    for write in [
        "INSERT INTO queue_message (queue_name, message_id) VALUES ('WAIT', 'w')",
        "UPDATE task SET json_data = '{}'",
        "DELETE FROM queue_message",
        "CREATE TABLE sneaky (x int)",
    ] {
        let err = sqlx::query(write)
            .execute(&pool)
            .await
            .expect_err("a write through the reader's sessions fails");
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(
            code.as_deref(),
            Some("25006"),
            "{write}: read_only_sql_transaction, got {err}"
        );
    }
    // every session of the pool, not only the first
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in &mut conns {
        let s: String = sqlx::query_scalar("SHOW default_transaction_read_only")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(s, "on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_change_is_read_on_its_notification() {
    let c = Conductor::new().await;
    let now = c.now().await;
    // refreshing only every minute: anything faster is the notification
    let (rx, handle) = start(&c, Duration::from_secs(30), MINUTE, &lag_histogram()).await;
    assert!(rx.borrow().by_workflow_type.is_empty());

    c.add_wait("t1", Some("order"), Some(now + 20_000), now + 20_000)
        .await;
    let took = wait_for(&rx, Duration::from_secs(1), "insert seen", |s| {
        s.by_workflow_type.get("order") == Some(&counts(1, 0, 1))
    })
    .await;
    eprintln!("insert seen after {took:?}");

    c.pop("t1").await;
    let took = wait_for(&rx, Duration::from_secs(1), "pop seen", |s| {
        waiting(s, "order") == 0
    })
    .await;
    eprintln!("pop seen after {took:?}");

    // a burst of changes ends in the right state
    for i in 0..20 {
        c.add_wait(&format!("burst{i}"), Some("bulk"), Some(now - 90_000), now)
            .await;
    }
    wait_for(&rx, Duration::from_secs(1), "burst seen", |s| {
        s.by_workflow_type.get("bulk") == Some(&counts(20, 20, 0))
    })
    .await;
    assert!(!handle.is_finished());
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeup_lag_is_observed_as_messages_leave() {
    let c = Conductor::new().await;
    let now = c.now().await;
    let lag = lag_histogram();
    let count = |wf: &str| {
        lag.wakeup_lag_seconds
            .with_label_values(&[wf])
            .get_sample_count()
    };
    let sum = |wf: &str| {
        lag.wakeup_lag_seconds
            .with_label_values(&[wf])
            .get_sample_sum()
    };
    c.add_wait("late", Some("order"), Some(now - 2_000), now - 2_000)
        .await;
    c.add_wait("early", Some("order"), Some(now + 60_000), now + 60_000)
        .await;
    c.add_wait("signal", Some("order"), None, now + FOREVER_SECONDS * 1000)
        .await;
    c.add_wait("popme", Some("billing"), Some(now - 1_000), now - 1_000)
        .await;
    let (rx, handle) = start(&c, Duration::from_secs(30), MINUTE, &lag).await;

    // completed and removed 2 s after its wake-up
    let before = c.now().await;
    c.remove("late").await;
    wait_for(&rx, Duration::from_secs(1), "removal seen", |s| {
        waiting(s, "order") == 2
    })
    .await;
    let after = c.now().await;
    assert_eq!(count("order"), 1);
    let (lo, hi) = (
        (before - (now - 2_000)) as f64 / 1000.0,
        (after - (now - 2_000)) as f64 / 1000.0,
    );
    assert!(
        (lo..=hi).contains(&sum("order")),
        "lag {} not in [{lo}, {hi}]",
        sum("order")
    );

    // popped by the system task worker: that is the wake-up
    let before = c.now().await;
    c.pop("popme").await;
    wait_for(&rx, Duration::from_secs(1), "pop seen", |s| {
        waiting(s, "billing") == 0
    })
    .await;
    let after = c.now().await;
    assert_eq!(count("billing"), 1);
    let (lo, hi) = (
        (before - (now - 1_000)) as f64 / 1000.0,
        (after - (now - 1_000)) as f64 / 1000.0,
    );
    assert!((lo..=hi).contains(&sum("billing")));

    // then acked (deleted); a timer not yet due and a WAIT without timer are removed
    // (signalled or cancelled): none of these is a new wake-up
    c.remove("popme").await;
    c.remove("early").await;
    c.remove("signal").await;
    // a change committed after those; once it is seen, so are they
    c.add_wait("marker", Some("marker"), None, now + 600_000)
        .await;
    wait_for(&rx, Duration::from_secs(1), "marker seen", |s| {
        waiting(s, "marker") == 1 && waiting(s, "order") == 0
    })
    .await;
    assert_eq!(count("order"), 1);
    assert_eq!(count("billing"), 1);
    assert_eq!(count("marker"), 0);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_listens_again_after_its_sessions_are_killed() {
    let c = Conductor::new().await;
    let now = c.now().await;
    c.add_wait("a", Some("order"), Some(now + 600_000), now + 600_000)
        .await;
    let (rx, handle) = start(&c, Duration::from_secs(30), MINUTE, &lag_histogram()).await;

    let old = c.reader_pids().await;
    assert!(
        old.len() >= 2,
        "a LISTEN session and a query session: {old:?}"
    );
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(APPLICATION_NAME)
    .fetch_all(&c.pool)
    .await
    .unwrap();
    assert!(killed.len() >= 2 && killed.iter().all(|k| *k));

    // a new session LISTENs again
    let started = Instant::now();
    loop {
        let listening: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = $1 AND query ILIKE 'LISTEN%conductor_queue_state%'",
        )
        .bind(APPLICATION_NAME)
        .fetch_all(&c.pool)
        .await
        .unwrap();
        if listening.iter().any(|p| !old.contains(p)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "LISTEN not re-established"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("LISTEN re-established after {:?}", started.elapsed());

    // and changes are read on their notification again (refresh is every minute)
    c.add_wait("b", Some("order"), Some(now + 600_000), now + 600_000)
        .await;
    wait_for(&rx, Duration::from_secs(1), "insert after reconnect", |s| {
        waiting(s, "order") == 2
    })
    .await;
    assert!(!handle.is_finished());
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reads_keep_the_last_snapshot_and_are_retried() {
    let c = Conductor::new().await;
    let now = c.now().await;
    c.add_wait("a", Some("order"), Some(now + 600_000), now + 600_000)
        .await;
    let refresh = Duration::from_millis(200);
    let (rx, handle) = start(&c, Duration::from_secs(30), refresh, &lag_histogram()).await;

    // every read fails while the table is away
    sqlx::query("ALTER TABLE queue_message RENAME TO queue_message_away")
        .execute(&c.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kept = rx.borrow().clone();
    assert_eq!(waiting(&kept, "order"), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!handle.is_finished(), "a failed read ended the reader");
    assert_eq!(*rx.borrow(), kept, "the last snapshot stays");

    sqlx::query("ALTER TABLE queue_message_away RENAME TO queue_message")
        .execute(&c.pool)
        .await
        .unwrap();
    c.add_wait("b", Some("order"), Some(now + 600_000), now + 600_000)
        .await;
    let took = wait_for(&rx, Duration::from_secs(3), "reads resume", |s| {
        waiting(s, "order") == 2
    })
    .await;
    eprintln!("reads resumed after {took:?}");
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_without_conductor_tables_or_with_a_bad_url() {
    let db = TestDb::new(Backend::Postgres).await;
    let err = wait_queue::spawn(
        &db.url,
        &DbOptions::default(),
        MINUTE,
        MINUTE,
        lag_histogram(),
        CancellationToken::new(),
    )
    .await
    .expect_err("no queue tables");
    // the queue names come first (`queue`), then their messages (`queue_message`)
    let msg = err.to_string();
    assert!(
        msg.contains("\"queue\"") || msg.contains("queue_message"),
        "{msg}"
    );

    let err = wait_queue::spawn(
        "mysql://nope/x",
        &DbOptions::default(),
        MINUTE,
        MINUTE,
        lag_histogram(),
        CancellationToken::new(),
    )
    .await
    .expect_err("not a postgres URL");
    assert!(err.to_string().contains("--conductor-db"), "{err}");
}

/// With `--conductor-db`, the app's WAIT gauges come from Conductor's queue, not from the
/// updates it sees; a WAIT task taskpulse never heard of is counted, and lag is measured as the
/// message leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_exports_the_wait_queue_read_from_conductor() {
    let conductor = Conductor::new().await;
    let now = conductor.now().await;
    conductor
        .add_wait("late-1", Some("billing"), None, now - 120_000)
        .await;
    conductor
        .add_wait("soon-1", Some("billing"), None, now + 30_000)
        .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let url = conductor.url.clone();
    let app = crate::helpers::TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.db = Some(url);
        s.wait.wait_grace = Duration::from_secs(30);
    })
    .await;
    // an update-fed WAIT task is not what the gauges show now
    app.ingest(&json!({"taskId": "seen-only", "workflowId": "w", "taskType": "WAIT",
                       "workflowType": "other", "status": "IN_PROGRESS", "waitUntil": now - 600_000}))
        .await;
    let scrape = app.scrape().await;
    let v = |name: &str, wf: &str| {
        crate::helpers::metric_value(&scrape, name, &[("workflow_type", wf)])
    };
    assert_eq!(v("taskpulse_wait_tasks", "billing"), Some(2.0));
    assert_eq!(v("taskpulse_wait_overdue_tasks", "billing"), Some(1.0));
    assert_eq!(
        v("taskpulse_wait_due_next_minute_tasks", "billing"),
        Some(1.0)
    );
    assert_eq!(
        v("taskpulse_wait_tasks", "other"),
        None,
        "update-fed WAIT tasks are not counted"
    );
    let oldest =
        crate::helpers::metric_value(&scrape, "taskpulse_wait_oldest_overdue_seconds", &[])
            .unwrap();
    assert!((115.0..130.0).contains(&oldest), "{oldest}");

    conductor.remove("late-1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = app.scrape().await;
        let count = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "taskpulse_wait_wakeup_lag_seconds_count"
                    && s.labels.get("workflow_type") == Some("billing")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
                _ => f64::NAN,
            });
        if count == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no wake-up lag observed: {count:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
