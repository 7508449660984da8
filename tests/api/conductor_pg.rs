//! The real `taskpulse` binary following Conductor's PostgreSQL (`--conductor-db`) written
//! the way Conductor writes it: sessions whose `TimeZone` is the JVM's zone (pgjdbc sends it
//! at connect), `PostgresExecutionDAO.insertOrUpdateTaskData` (UPDATE, then INSERT ... ON
//! CONFLICT, `modified_on = CURRENT_TIMESTAMP`), `PostgresQueueDAO.pushMessage`
//! (`createQueueIfNotExists`, then `deliver_on = current_timestamp + offset`), one
//! transaction stamping all its rows with one `CURRENT_TIMESTAMP`, a schema other than
//! `public`, and multi-MB documents (`docs/engines/conductor-redis.md` §7).

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::conductor_db::{Conductor, CONDUCTOR_SCHEMA};
use crate::conductor_tail::task_model;
use crate::helpers::metric_value;
use crate::process::{Proc, Server, EXIT_TIMEOUT};

/// A pool playing Conductor's sessions: `SET TIME ZONE` to the JVM's default zone on every
/// session, as pgjdbc does at connect (it sends the JVM's zone as the session's `TimeZone`);
/// `search_path` when Conductor's tables are in another schema.
async fn engine_sessions(url: &str, zone: &str, schema: Option<&str>) -> PgPool {
    let setup = format!(
        "SET TIME ZONE '{zone}'; {}",
        schema.map_or(String::new(), |s| format!("SET search_path TO \"{s}\";"))
    );
    PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let setup = setup.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, setup.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

/// `PostgresExecutionDAO.insertOrUpdateTaskData` (b54f0d4e, lines 719-745).
async fn write_task(pool: &PgPool, doc: &Value) {
    let id = doc["taskId"].as_str().unwrap();
    let updated =
        sqlx::query("UPDATE task SET json_data=$1, modified_on=CURRENT_TIMESTAMP WHERE task_id=$2")
            .bind(doc.to_string())
            .bind(id)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected();
    if updated == 0 {
        sqlx::query(
            "INSERT INTO task (task_id, json_data, modified_on) VALUES ($1, $2, CURRENT_TIMESTAMP) \
             ON CONFLICT (task_id) DO UPDATE SET json_data=excluded.json_data, modified_on=excluded.modified_on",
        )
        .bind(id)
        .bind(doc.to_string())
        .execute(pool)
        .await
        .unwrap();
    }
}

/// `PostgresQueueDAO.pushMessage` (b54f0d4e, lines 427-463): the queue row, then the message
/// due `offset` seconds after the session's `current_timestamp`.
async fn push_message(pool: &PgPool, queue: &str, id: &str, offset: i64) {
    sqlx::query("INSERT INTO queue (queue_name) VALUES ($1) ON CONFLICT (queue_name) DO NOTHING")
        .bind(queue)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO queue_message (deliver_on, queue_name, message_id, priority, offset_time_seconds, payload) \
         VALUES ((current_timestamp + ($1 ||' seconds')::interval), $2, $3, $4, $5, $6) \
         ON CONFLICT (queue_name,message_id) DO UPDATE SET payload=excluded.payload, deliver_on=excluded.deliver_on",
    )
    .bind(offset.to_string())
    .bind(queue)
    .bind(id)
    .bind(0i32)
    .bind(offset)
    .bind(Option::<String>::None)
    .execute(pool)
    .await
    .unwrap();
}

/// A task as Conductor writes it now: its times are the JVM's clock (epoch ms, zone-free).
fn task_now(id: &str, task_type: &str, status: &str, now: i64) -> Value {
    let mut t = task_model(id, task_type, status, now);
    if status != "SCHEDULED" {
        t["startTime"] = json!(now);
    }
    t
}

async fn serve(dir: &std::path::Path, conductor_db: &str, extra: &[&str]) -> Server {
    let db = format!("sqlite://{}", dir.join("tp.db").display());
    let mut args = vec![
        "--database",
        &db,
        "--conductor-db",
        conductor_db,
        "--conductor-poll-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Server::start(dir, &args, &[]).await
}

/// The task's view on the server once `pred` holds (at most `limit`).
async fn eventually_on(
    server: &Server,
    id: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        let v: Value = match client
            .get(server.url(&format!("/api/v1/tasks/{id}")))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => r.json().await.unwrap_or(Value::Null),
            _ => Value::Null,
        };
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not within {limit:?}; last {v}\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric on the server once `pred` holds (at most 10 s).
async fn metric_eventually(
    server: &Server,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric_value(&server.scrape().await, name, labels).unwrap_or(f64::NAN);
        if pred(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name}{labels:?} = {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Conductor's sessions in each zone, taskpulse told that zone: a task written before start
/// and transitions after it are followed, and a WAIT message whose wake-up time is only its
/// `deliver_on` reads as due in the next minute, not hours overdue or far out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_sessions_in_any_zone_are_followed_with_the_zone_set() {
    for zone in ["America/Los_Angeles", "Asia/Tokyo", "UTC"] {
        let conductor = Conductor::new().await;
        let engine = engine_sessions(&conductor.url, zone, None).await;
        let now = conductor.now().await;
        write_task(&engine, &task_now("before", "encode", "IN_PROGRESS", now)).await;
        let dir = tempfile::tempdir().unwrap();
        let server = serve(
            dir.path(),
            &conductor.url,
            &["--conductor-db-time-zone", zone],
        )
        .await;
        eventually_on(&server, "before", Duration::from_secs(10), |v| {
            v["status"] == "IN_PROGRESS"
        })
        .await;
        let now = conductor.now().await;
        write_task(&engine, &task_now("after", "encode", "SCHEDULED", now)).await;
        write_task(
            &engine,
            &task_now("after", "encode", "IN_PROGRESS", now + 1),
        )
        .await;
        let mut done = task_now("after", "encode", "COMPLETED", now + 2);
        done["endTime"] = json!(now + 2);
        write_task(&engine, &done).await;
        let mut wait = task_now("wait-1", "WAIT", "IN_PROGRESS", now);
        wait["workflowType"] = json!("zoned");
        write_task(&engine, &wait).await;
        push_message(&engine, "WAIT", "wait-1", 30).await;
        eventually_on(&server, "after", Duration::from_secs(10), |v| {
            v["status"] == "COMPLETED"
        })
        .await;
        let due = [("workflow_type", "zoned")];
        metric_eventually(&server, "taskpulse_wait_due_next_minute_tasks", &due, |v| {
            v == 1.0
        })
        .await;
        let scrape = server.scrape().await;
        assert_eq!(
            metric_value(&scrape, "taskpulse_wait_overdue_tasks", &due),
            Some(0.0),
            "{zone}"
        );
        let lag = metric_value(&scrape, "taskpulse_conductor_db_lag_seconds_sum", &[]).unwrap();
        let n = metric_value(&scrape, "taskpulse_conductor_db_lag_seconds_count", &[]).unwrap();
        assert!(n >= 1.0 && lag / n < 60.0, "{zone}: mean lag {lag}/{n}");
        let (status, _) = server.terminate().await;
        assert!(status.success(), "{zone}: {status}");
    }
}

/// Rows written by sessions in Los Angeles, taskpulse left at the default zone (UTC): start-up
/// fails, naming the flag and the offset (and zones) the rows show. Before this check the
/// tail started and silently saw nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_zone_the_rows_contradict_stops_start_up() {
    for (engine_zone, told, shows) in [
        ("America/Los_Angeles", "UTC", "UTC-08:00"),
        ("UTC", "Asia/Tokyo", "UTC+00:00"),
    ] {
        let conductor = Conductor::new().await;
        let engine = engine_sessions(&conductor.url, engine_zone, None).await;
        let now = conductor.now().await;
        write_task(&engine, &task_now("t-1", "encode", "IN_PROGRESS", now)).await;
        let (status, err) = start_with_zone(&conductor.url, told).await;
        assert!(!status.success(), "{engine_zone}/{told}: {err}");
        assert!(
            err.contains("--conductor-db-time-zone") && err.contains(shows),
            "{engine_zone}/{told}: {err}"
        );
    }
    // a zone the server does not know
    let conductor = Conductor::new().await;
    let (status, err) = start_with_zone(&conductor.url, "Mars/Olympus").await;
    assert!(!status.success());
    assert!(err.contains("Mars/Olympus"), "{err}");
}

/// `taskpulse serve` on `conductor_url` told `zone`, run until it exits (it should refuse to
/// start): its exit status and stderr.
async fn start_with_zone(conductor_url: &str, zone: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("tp.db").display());
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &db,
        "--conductor-db",
        conductor_url,
        "--conductor-db-time-zone",
        zone,
    ];
    let mut p = Proc::spawn(dir.path(), &args, &[]);
    let status = p.wait_exit(EXIT_TIMEOUT).await;
    (status, p.stderr())
}

/// A fall-back hour: Conductor wrote rows in the first pass of 01:00-02:00, then the wall
/// clock went back an hour and it writes the same wall times again. Played here by a row
/// whose `modified_on` is an hour after the session's clock (the first pass, read after the
/// clock went back), then a row written now: the second is followed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_times_that_go_back_an_hour_are_still_followed() {
    let conductor = Conductor::new().await;
    let engine = engine_sessions(&conductor.url, "UTC", None).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &conductor.url, &[]).await;
    let now = conductor.now().await;
    let first_pass = task_now("first-pass", "encode", "IN_PROGRESS", now);
    sqlx::query(
        "INSERT INTO task (task_id, json_data, modified_on) \
         VALUES ($1, $2, CURRENT_TIMESTAMP + INTERVAL '1 hour')",
    )
    .bind("first-pass")
    .bind(first_pass.to_string())
    .execute(&engine)
    .await
    .unwrap();
    eventually_on(&server, "first-pass", Duration::from_secs(10), |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = conductor.now().await;
    write_task(
        &engine,
        &task_now("second-pass", "encode", "IN_PROGRESS", now),
    )
    .await;
    eventually_on(&server, "second-pass", Duration::from_secs(10), |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    let (status, _) = server.terminate().await;
    assert!(status.success());
}

/// Conductor's tables in a schema of their own (`conductor.postgres.schema`), mixed case, with
/// a WAIT task whose definition has an isolation group (queue `WAIT-<group>`): followed and
/// counted with `--conductor-db-schema`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_in_another_schema_and_isolated_wait_queues_are_read() {
    let conductor = Conductor::new().await;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"Conductor\"; SET search_path TO \"Conductor\"; {CONDUCTOR_SCHEMA}"
    ))
    .execute(&conductor.pool)
    .await
    .unwrap();
    // the public tables stay empty: anything read comes from the schema
    let engine = engine_sessions(&conductor.url, "UTC", Some("Conductor")).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &conductor.url,
        &["--conductor-db-schema", "Conductor"],
    )
    .await;
    let now = conductor.now().await;
    write_task(&engine, &task_now("s-1", "encode", "IN_PROGRESS", now)).await;
    for (id, queue, wf) in [
        ("w-plain", "WAIT", "plain"),
        ("w-gpu", "WAIT-gpu", "isolated"),
    ] {
        let mut wait = task_now(id, "WAIT", "IN_PROGRESS", now);
        wait["workflowType"] = json!(wf);
        wait["waitTimeout"] = json!(now + 600_000);
        wait["isolationGroupId"] = json!("gpu");
        write_task(&engine, &wait).await;
        push_message(&engine, queue, id, 600).await;
    }
    // a user's task definition named like an isolated WAIT queue: not a WAIT
    write_task(&engine, &task_now("not-wait", "WAIT-ish", "SCHEDULED", now)).await;
    push_message(&engine, "WAIT-ish", "not-wait", 0).await;
    eventually_on(&server, "s-1", Duration::from_secs(10), |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    for wf in ["plain", "isolated"] {
        metric_eventually(
            &server,
            "taskpulse_wait_tasks",
            &[("workflow_type", wf)],
            |v| v == 1.0,
        )
        .await;
    }
    let scrape = server.scrape().await;
    let total: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "taskpulse_wait_tasks")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, 2.0, "only the two WAIT tasks");
    let (status, _) = server.terminate().await;
    assert!(status.success());
}

/// One transaction stamps all its rows with one `CURRENT_TIMESTAMP`: 60,000 rows share one
/// `modified_on`, more than a page (50,000). The tail pages through them, follows a later
/// transition, and SIGTERM ends it promptly. (The rows go in with one `INSERT ... SELECT`
/// over arrays: the same rows, the same single `modified_on`, as Conductor's 60,000
/// statements in one transaction, without 60,000 round trips.) Before the keyset, the list
/// restarted at the shared instant and read the same page forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_thousand_rows_of_one_transaction_are_paged_through() {
    const ROWS: usize = 60_000;
    let conductor = Conductor::new().await;
    let engine = engine_sessions(&conductor.url, "UTC", None).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &conductor.url, &[]).await;
    let now = conductor.now().await;
    let ids: Vec<String> = (0..ROWS).map(|i| format!("bulk-{i:05}")).collect();
    let docs: Vec<String> = ids
        .iter()
        .map(|id| task_now(id, "fan_out", "SCHEDULED", now).to_string())
        .collect();
    let mut tx = engine.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO task (task_id, json_data, modified_on) \
         SELECT id, doc, CURRENT_TIMESTAMP FROM unnest($1::text[], $2::text[]) AS r(id, doc)",
    )
    .bind(&ids)
    .bind(&docs)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let shared: i64 = sqlx::query_scalar("SELECT count(DISTINCT modified_on) FROM task")
        .fetch_one(&engine)
        .await
        .unwrap();
    assert_eq!(shared, 1, "one modified_on for the whole transaction");
    eventually_on(&server, "bulk-59999", Duration::from_secs(120), |v| {
        v["status"] == "SCHEDULED"
    })
    .await;
    let now = conductor.now().await;
    let mut later = task_now("later", "encode", "COMPLETED", now);
    later["endTime"] = json!(now);
    write_task(&engine, &later).await;
    eventually_on(&server, "later", Duration::from_secs(30), |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    let signalled = Instant::now();
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{status}: {stderr}");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

/// A document as Conductor stores it, padded to `bytes` with a large input (Conductor keeps
/// payloads up to its external-storage threshold in the row).
fn padded(id: &str, status: &str, now: i64, bytes: usize) -> String {
    let mut t = task_now(id, "render", status, now);
    if status == "COMPLETED" {
        t["endTime"] = json!(now);
    }
    t["inputData"] = json!({ "frames": "x".repeat(bytes) });
    t.to_string()
}

/// Multi-MB documents: those under the limit are read in byte-bounded batches; one past it
/// (16 MiB) is not loaded, its transition is taken from the fields the database picks out,
/// and it is counted; one past it that is not JSON is counted and left out, and the tail
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_documents_are_read_within_the_byte_bounds() {
    let conductor = Conductor::new().await;
    let engine = engine_sessions(&conductor.url, "UTC", None).await;
    let now = conductor.now().await;
    let mb = 1 << 20;
    let huge = |id: &str, status: &str| padded(id, status, now, 17 * mb);
    // before start: the first pass meets an oversized task in flight
    sqlx::query(
        "INSERT INTO task (task_id, json_data, modified_on) VALUES ($1, $2, CURRENT_TIMESTAMP)",
    )
    .bind("huge-1")
    .bind(huge("huge-1", "IN_PROGRESS"))
    .execute(&engine)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &conductor.url, &[]).await;
    eventually_on(&server, "huge-1", Duration::from_secs(20), |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    for i in 0..4 {
        let id = format!("big-{i}");
        let doc: Value = serde_json::from_str(&padded(&id, "COMPLETED", now, 9 * mb)).unwrap();
        write_task(&engine, &doc).await;
    }
    let not_json = format!(
        "{{\"taskId\":\"broken\",\"status\":\"COMPLETED\",{}",
        "y".repeat(17 * mb)
    );
    sqlx::query("INSERT INTO task (task_id, json_data, modified_on) VALUES ('broken', $1, CURRENT_TIMESTAMP)")
        .bind(not_json)
        .execute(&engine)
        .await
        .unwrap();
    sqlx::query("UPDATE task SET json_data=$1, modified_on=CURRENT_TIMESTAMP WHERE task_id=$2")
        .bind(huge("huge-1", "COMPLETED"))
        .bind("huge-1")
        .execute(&engine)
        .await
        .unwrap();
    for i in 0..4 {
        eventually_on(&server, &format!("big-{i}"), Duration::from_secs(20), |v| {
            v["status"] == "COMPLETED"
        })
        .await;
    }
    eventually_on(&server, "huge-1", Duration::from_secs(20), |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    // a WAIT task with a 1 MB document: its labels come from the fields the database picks out
    let mut wait: Value =
        serde_json::from_str(&padded("big-wait", "IN_PROGRESS", now, mb)).unwrap();
    wait["taskType"] = json!("WAIT");
    wait["workflowType"] = json!("bigwait");
    wait["waitTimeout"] = json!(now + 600_000);
    write_task(&engine, &wait).await;
    push_message(&engine, "WAIT", "big-wait", 600).await;
    metric_eventually(
        &server,
        "taskpulse_wait_tasks",
        &[("workflow_type", "bigwait")],
        |v| v == 1.0,
    )
    .await;
    let skipped = "taskpulse_conductor_db_documents_skipped_total";
    metric_eventually(&server, skipped, &[("reason", "unreadable")], |v| v == 1.0).await;
    let scrape = server.scrape().await;
    assert_eq!(
        metric_value(&scrape, skipped, &[("reason", "too_large")]),
        Some(2.0),
        "huge-1 twice: in flight at start, then completed"
    );
    assert_eq!(
        metric_value(
            &scrape,
            "taskpulse_engine_fields_adjusted_total",
            &[("source", "conductor_db"), ("action", "dropped")]
        ),
        Some(2.0)
    );
    let stderr = server.stderr();
    assert_eq!(
        stderr.matches("past the size limit").count(),
        2,
        "logged once per task: {stderr}"
    );
    let (status, _) = server.terminate().await;
    assert!(status.success());
}
