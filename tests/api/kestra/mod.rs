//! Kestra's store followed (`--kestra-db`, `src/engines/kestra/`): a real PostgreSQL holding
//! Kestra's tables as its JDBC migrations create them (`docs/engines/kestra.md` §1: the
//! `state_type` enum grown value by value as the migrations add them, the helper functions,
//! the generated columns and indexes of `executions`, `service_instance`), written the way
//! Kestra's executor writes them (the whole row rewritten on every change, §5), with execution
//! JSON shaped as §2 gives it.

mod cost;
mod zones;

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

use crate::conductor_tail::eventually;
use crate::helpers::{Backend, TestApp, TestDb};

/// Kestra's schema, as far as a reader depends on it: V1_1 (functions, enum, tables), the
/// enum values added by later migrations, V1_5 (`tenant_id`), V1_10 (indexes with
/// `tenant_id`), V1_12 (`trigger_execution_id`), `state_duration` as V1_48/V1_57 leave it
/// (nullable: 1.x writes no duration while running), V1_17/V1_34/V1_36 (`service_instance`).
const KESTRA_SCHEMA: &str = include_str!("../../kestra_schema.sql");

pub(crate) const WORKER_A: &str = "0b7d2c1e-6f0a-4e59-9a3c-2f8d6e1b4a77";
pub(crate) const WORKER_B: &str = "9e41f3a2-1c5b-4d8e-b0f7-7a6c3d2e5f10";

/// Plays Kestra on a database of its own.
pub(crate) struct Kestra {
    pub(crate) url: String,
    pool: PgPool,
    _db: TestDb,
}

impl Kestra {
    pub(crate) async fn new() -> Kestra {
        Kestra::in_zone("UTC").await
    }

    /// Kestra whose JVM runs in `zone`: pgjdbc sets each session's `TimeZone` from the JVM's
    /// default zone, so every statement Kestra sends runs in it (docs/engines/kestra.md §1.3).
    pub(crate) async fn in_zone(zone: &str) -> Kestra {
        let db = TestDb::new(Backend::Postgres).await;
        let set = format!("SET TIME ZONE '{zone}'");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    conn.execute(set.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&db.url)
            .await
            .expect("connect as Kestra");
        sqlx::raw_sql(KESTRA_SCHEMA)
            .execute(&pool)
            .await
            .expect("create Kestra's tables");
        Kestra {
            url: db.url.clone(),
            pool,
            _db: db,
        }
    }

    /// The same database written from another Kestra JVM, in `zone`.
    pub(crate) async fn reconnect_in(&mut self, zone: &str) {
        let set = format!("SET TIME ZONE '{zone}'");
        self.pool = PgPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    conn.execute(set.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&self.url)
            .await
            .expect("connect as Kestra");
    }

    /// `PostgresRepository.persist` (jOOQ `insertInto(table).set(key).set(value)
    /// .onConflict(key).doUpdate().set(value)`): the whole row upserted, in Kestra's session
    /// zone, the generated columns recomputed by the database.
    pub(crate) async fn persist(&self, execution: &Value) {
        sqlx::query(
            "INSERT INTO executions (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = $2",
        )
        .bind(execution["id"].as_str().unwrap())
        .bind(execution)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A worker registering itself (`ServiceLivenessManager`).
    pub(crate) async fn register_worker(&self, id: &str, host: &str) {
        let value = json!({"id": id, "type": "WORKER", "state": "RUNNING",
            "server": {"id": "srv", "type": "SERVER", "version": "1.3.0", "hostname": host},
            "createdAt": "2025-06-01T09:00:00.000Z", "updatedAt": "2025-06-01T10:00:00.000Z"});
        sqlx::query("INSERT INTO service_instance (key, value) VALUES ($1, $2)")
            .bind(id)
            .bind(value)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn checksum(&self) -> String {
        sqlx::query_scalar(
            "SELECT md5(COALESCE((SELECT string_agg(e::text, '|' ORDER BY key) FROM executions e), '') \
             || COALESCE((SELECT string_agg(s::text, '|' ORDER BY key) FROM service_instance s), ''))",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

/// A Kestra `State` with these (state, date) histories; `endDate` and `duration` when the last
/// one is terminated or PAUSED (the 1.x rule).
pub(crate) fn state(histories: &[(&str, &str)]) -> Value {
    let (current, last) = *histories.last().unwrap();
    let mut s = json!({
        "current": current,
        "histories": histories.iter().map(|(s, d)| json!({"state": s, "date": d})).collect::<Vec<_>>(),
        "startDate": histories[0].1,
    });
    let ended = matches!(
        current,
        "SUCCESS"
            | "WARNING"
            | "FAILED"
            | "KILLED"
            | "CANCELLED"
            | "RETRIED"
            | "SKIPPED"
            | "PAUSED"
    );
    if ended {
        s["endDate"] = json!(last);
        s["duration"] = json!(2.5);
    }
    s
}

pub(crate) fn attempt(histories: &[(&str, &str)], worker: &str) -> Value {
    json!({"state": state(histories), "workerId": worker})
}

pub(crate) fn task_run(
    id: &str,
    execution: &str,
    task: &str,
    attempts: Vec<Value>,
    st: Value,
) -> Value {
    json!({"tenantId": "main", "id": id, "executionId": execution, "namespace": "company.team",
           "flowId": "etl", "taskId": task, "attempts": attempts, "outputs": null, "state": st})
}

pub(crate) fn execution(id: &str, runs: Vec<Value>, st: Value) -> Value {
    json!({"tenantId": "main", "id": id, "namespace": "company.team", "flowId": "etl",
           "flowRevision": 3, "taskRunList": runs,
           "labels": [{"key": "system.correlationId", "value": id}],
           "state": st, "originalId": id, "deleted": false,
           "metadata": {"attemptNumber": 1, "originalCreatedDate": "2025-06-01T10:00:00.010Z"}})
}

/// ISO instants `s` seconds after a base close to now (so "ended recently" holds).
pub(crate) fn at(base: i64, s: f64) -> String {
    let ms = base + (s * 1000.0) as i64;
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

pub(crate) async fn app_on(k: &Kestra, db: &TestDb) -> TestApp {
    let url = k.url.clone();
    TestApp::spawn_with(db, move |s| {
        s.engines.kestra.db = Some(url);
        s.engines.kestra.poll_interval = Duration::from_millis(200);
    })
    .await
}

async fn task_runs_attempts_and_workers(backend: Backend) {
    let k = Kestra::new().await;
    let db = TestDb::new(backend).await;
    k.register_worker(WORKER_A, "worker-a.example").await;
    k.register_worker(WORKER_B, "worker-b.example").await;
    let t = taskpulse::now_ms() - 30_000;
    let ex_state = state(&[("CREATED", &at(t, 0.0)), ("RUNNING", &at(t, 0.03))]);
    let extract = task_run(
        "tr-extract",
        "ex-1",
        "extract",
        vec![attempt(
            &[("RUNNING", &at(t, 0.1)), ("SUCCESS", &at(t, 2.3))],
            WORKER_A,
        )],
        state(&[
            ("CREATED", &at(t, 0.05)),
            ("RUNNING", &at(t, 0.1)),
            ("SUCCESS", &at(t, 2.31)),
        ]),
    );
    // `load`: its first attempt FAILED on worker A, the second runs on worker B
    let first = attempt(
        &[("RUNNING", &at(t, 2.45)), ("FAILED", &at(t, 5.9))],
        WORKER_A,
    );
    let second_running = attempt(&[("RUNNING", &at(t, 15.93))], WORKER_B);
    let load_running = state(&[
        ("CREATED", &at(t, 2.33)),
        ("RUNNING", &at(t, 2.44)),
        ("FAILED", &at(t, 5.91)),
        ("RETRYING", &at(t, 5.92)),
        ("CREATED", &at(t, 15.9)),
        ("RUNNING", &at(t, 15.925)),
    ]);
    let running = execution(
        "ex-1",
        vec![
            extract.clone(),
            task_run(
                "tr-load",
                "ex-1",
                "load",
                vec![first.clone(), second_running],
                load_running,
            ),
        ],
        ex_state.clone(),
    );
    k.persist(&running).await;
    // an execution that ended long ago: history, not replayed
    let mut old = execution(
        "ex-old",
        vec![task_run(
            "tr-old",
            "ex-old",
            "extract",
            vec![attempt(
                &[
                    ("RUNNING", "2025-01-01T00:00:00.000Z"),
                    ("SUCCESS", "2025-01-01T00:00:01.000Z"),
                ],
                WORKER_A,
            )],
            state(&[
                ("RUNNING", "2025-01-01T00:00:00.000Z"),
                ("SUCCESS", "2025-01-01T00:00:01.000Z"),
            ]),
        )],
        state(&[
            ("RUNNING", "2025-01-01T00:00:00.000Z"),
            ("SUCCESS", "2025-01-01T00:00:01.000Z"),
        ]),
    );
    old["state"]["endDate"] = json!("2025-01-01T00:00:01.000Z");
    k.persist(&old).await;

    let before = k.checksum().await;
    let app = app_on(&k, &db).await;
    let view = eventually(&app, "tr-load", "its second attempt", |v| {
        v["status"] == "IN_PROGRESS" && v["retryCount"] == 1
    })
    .await;
    assert_eq!(view["workflowId"], "ex-1");
    assert_eq!(view["workflowType"], "company.team/etl");
    assert_eq!(view["taskType"], "load");
    assert_eq!(view["workerId"], WORKER_B);
    let ext = eventually(&app, "tr-extract", "finished", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    assert_eq!(ext["workerId"], WORKER_A);
    assert_eq!(
        app.get("/api/v1/tasks/tr-old").await.status(),
        404,
        "no replay"
    );

    // Kestra finishes the second attempt, and the execution
    let done = execution(
        "ex-1",
        vec![
            extract,
            task_run(
                "tr-load",
                "ex-1",
                "load",
                vec![
                    first,
                    attempt(
                        &[("RUNNING", &at(t, 15.93)), ("SUCCESS", &at(t, 20.0))],
                        WORKER_B,
                    ),
                ],
                state(&[
                    ("CREATED", &at(t, 2.33)),
                    ("RUNNING", &at(t, 2.44)),
                    ("FAILED", &at(t, 5.91)),
                    ("RETRYING", &at(t, 5.92)),
                    ("CREATED", &at(t, 15.9)),
                    ("RUNNING", &at(t, 15.925)),
                    ("SUCCESS", &at(t, 20.01)),
                ]),
            ),
        ],
        state(&[
            ("CREATED", &at(t, 0.0)),
            ("RUNNING", &at(t, 0.03)),
            ("SUCCESS", &at(t, 20.02)),
        ]),
    );
    k.persist(&done).await;
    eventually(&app, "tr-load", "finished", |v| v["status"] == "COMPLETED").await;
    // the workers leave; what taskpulse recorded stays
    sqlx::query("DELETE FROM service_instance")
        .execute(&k.pool)
        .await
        .unwrap();
    app.settle_throttled().await;
    let view = app.task("tr-load").await;
    let attempts: Vec<(i64, String, String, String)> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["workerId"].as_str().unwrap().to_string(),
                a["host"].as_str().unwrap_or("").to_string(),
                a["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (
                0,
                WORKER_A.to_string(),
                "worker-a.example".to_string(),
                "FAILED".to_string()
            ),
            (
                1,
                WORKER_B.to_string(),
                "worker-b.example".to_string(),
                "COMPLETED".to_string()
            )
        ],
        "{view:#}"
    );
    // each attempt's own times, from its state histories
    let ms = |s: f64| t + (s * 1000.0) as i64;
    let a = &view["attempts"];
    assert_eq!(
        (a[0]["startTime"].as_i64(), a[0]["endTime"].as_i64()),
        (Some(ms(2.45)), Some(ms(5.9))),
        "{view:#}"
    );
    assert_eq!(
        (a[1]["startTime"].as_i64(), a[1]["endTime"].as_i64()),
        (Some(ms(15.93)), Some(ms(20.0))),
        "{view:#}"
    );

    // a KILLED execution, and a 2.x-shaped row (`executionTaskRuns`, slim task runs)
    let killed = execution(
        "ex-killed",
        vec![task_run(
            "tr-killed",
            "ex-killed",
            "transform",
            vec![attempt(
                &[("RUNNING", &at(t, 21.0)), ("KILLED", &at(t, 22.0))],
                WORKER_B,
            )],
            state(&[
                ("CREATED", &at(t, 20.9)),
                ("RUNNING", &at(t, 21.0)),
                ("KILLED", &at(t, 22.0)),
            ]),
        )],
        state(&[
            ("CREATED", &at(t, 20.8)),
            ("RUNNING", &at(t, 20.9)),
            ("KILLED", &at(t, 22.1)),
        ]),
    );
    k.persist(&killed).await;
    let slim = json!({"tenantId": "main", "id": "ex-v2", "namespace": "company.team", "flowId": "report",
        "executionTaskRuns": [{"id": "tr-v2", "taskId": "render",
            "parentTaskRunId": "tr-v2-loop", "value": "eu-west", "iteration": 1,
            "attempts": [{"state": {"current": "RUNNING", "histories": [{"state": "RUNNING", "date": at(t, 23.0)}]},
                          "workerId": WORKER_A}],
            "state": {"current": "RUNNING", "histories": [{"state": "CREATED", "date": at(t, 22.9)},
                                                           {"state": "RUNNING", "date": at(t, 23.0)}]}}],
        "state": {"current": "RUNNING", "histories": [{"state": "RUNNING", "date": at(t, 22.8)}], "startDate": at(t, 22.8)},
        "deleted": false});
    k.persist(&slim).await;
    eventually(&app, "tr-killed", "killed", |v| v["status"] == "CANCELED").await;
    let v2 = eventually(&app, "tr-v2", "read from the 2.x shape", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    assert_eq!(v2["workflowType"], "company.team/report");
    assert_eq!(v2["workerId"], WORKER_A);
    assert_eq!(
        (&v2["parentTaskId"], &v2["iterationValue"], &v2["iteration"]),
        (&json!("tr-v2-loop"), &json!("eu-west"), &json!(1)),
        "the loop's fields are kept: {v2:#}"
    );

    // each transition once: the history of tr-extract is one accepted line
    let history = app.task("tr-extract").await["history"].clone();
    let accepted = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["outcome"] == "accepted")
        .count();
    assert_eq!(accepted, 1, "{history:#}");
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"taskpulse_updates_total{outcome="accepted",source="kestra_db"}"#),
        "{text}"
    );
    assert!(text.contains(r#"taskpulse_kestra_db_polls_total{outcome="ok"}"#));

    // taskpulse never wrote to Kestra's tables: only the test's own writes changed them
    let mine = k.checksum().await;
    assert_ne!(before, mine);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(k.checksum().await, mine);
}
crate::store_test!(task_runs_attempts_and_workers);

/// Kestra's database unreachable for a while: `/readyz` says so, and the reader catches up
/// with what ended meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_down_and_back() {
    let k = Kestra::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let t = taskpulse::now_ms();
    let run = |st: &str, at_s: f64| {
        execution(
            "ex-down",
            vec![task_run(
                "tr-down",
                "ex-down",
                "extract",
                vec![],
                state(&[("CREATED", &at(t, 0.0)), (st, &at(t, at_s))]),
            )],
            state(&[("CREATED", &at(t, 0.0)), (st, &at(t, at_s))]),
        )
    };
    k.persist(&run("RUNNING", 0.1)).await;
    let app = app_on(&k, &db).await;
    eventually(&app, "tr-down", "followed", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&k.pool)
        .await
        .unwrap();
    let admin = PgPool::connect(&crate::helpers::postgres_admin_url())
        .await
        .unwrap();
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND application_name = 'taskpulse-kestra'"
    );
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(&terminate).execute(&admin).await.unwrap();
    // the task finishes while taskpulse can't read (Kestra's own session stays open)
    k.persist(&run("SUCCESS", 1.0)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get("/readyz").await;
        let (code, body) = (r.status().as_u16(), r.text().await.unwrap());
        if code == 503 {
            assert!(body.contains("kestra-db"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unready: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await
        .unwrap();
    eventually(&app, "tr-down", "caught up", |v| v["status"] == "COMPLETED").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.get("/readyz").await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
