//! A Redis-backed Conductor read (`--conductor-redis`, `src/engines/conductor/redis_reader.rs`)
//! on a real Redis: keys, types and scores as Conductor writes them
//! (`docs/engines/conductor-redis.md` §1 to §4), in Conductor's docker configuration
//! (namespace `conductor`, queues `conductor_queues`, stack `test`, shard `c`).
//!
//! The shared Redis on 127.0.0.1:6379 (started by `scripts/test.sh` when it is not running):
//! each test uses a database of its own, flushed before and after. The restart test runs a
//! `redis-server` of its own on a free port.

mod budget;
mod cost;
mod dao;
mod malformed;
mod paging;
mod short;
mod skew;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::conductor_tail::eventually;
use crate::helpers::{free_port, Backend, TestApp, TestDb};

pub(crate) const REDIS: &str = "redis://127.0.0.1:6379";

/// TaskModel JSON as Conductor writes it (every primitive present, 0 = unset).
pub(crate) fn task_model(id: &str, def: &str, status: &str, update_time: i64) -> Value {
    json!({
        "taskType": def, "taskDefName": def, "status": status,
        "referenceTaskName": format!("{def}_ref"), "retryCount": 0, "seq": 1, "pollCount": 0,
        "scheduledTime": update_time, "startTime": 0, "endTime": 0, "updateTime": update_time,
        "responseTimeoutSeconds": 600, "workflowInstanceId": format!("wf-{id}"),
        "workflowType": "media", "taskId": id, "callbackAfterSeconds": 0,
        "inputData": {}, "outputData": {}, "iteration": 0, "waitTimeout": 0,
        "workflowTask": {"name": def, "taskReferenceName": format!("{def}_ref"), "type": "SIMPLE"}
    })
}

/// Plays Conductor on one database of a Redis.
pub(crate) struct Conductor {
    con: redis::aio::MultiplexedConnection,
    pub(crate) url: String,
}

impl Conductor {
    pub(crate) async fn on(base: &str, db: u8) -> Option<Conductor> {
        let url = format!("{base}/{db}");
        let client = redis::Client::open(url.as_str()).unwrap();
        let con = match client.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                return crate::tools::missing(
                    &format!("no Redis at {base} ({e})"),
                    "scripts/test.sh starts one",
                )
            }
        };
        let mut c = Conductor { con, url };
        let _: () = redis::cmd("FLUSHDB").query_async(&mut c.con).await.unwrap();
        Some(c)
    }

    /// `RedisExecutionDAO.updateTask`: the JSON, and the in-flight set while not terminal.
    pub(crate) async fn write_task(&mut self, doc: &Value) {
        let id = doc["taskId"].as_str().unwrap();
        let def = doc["taskDefName"].as_str().unwrap();
        let status = doc["status"].as_str().unwrap();
        let _: () = self
            .con
            .set(format!("conductor.test.TASK.{id}"), doc.to_string())
            .await
            .unwrap();
        let set = format!("conductor.test.IN_PROGRESS_TASKS.{def}");
        if matches!(status, "SCHEDULED" | "IN_PROGRESS") {
            let _: () = self.con.sadd(set, id).await.unwrap();
        } else {
            let _: () = self.con.srem(set, id).await.unwrap();
        }
    }

    /// `push` with a delay: score = due time + the priority fraction.
    async fn push(&mut self, queue: &str, id: &str, score: f64) {
        let _: () = self
            .con
            .zadd(format!("conductor_queues.test.QUEUE.{queue}.c"), id, score)
            .await
            .unwrap();
    }

    async fn ack(&mut self, queue: &str, id: &str) {
        let _: () = self
            .con
            .zrem(format!("conductor_queues.test.QUEUE.{queue}.c"), id)
            .await
            .unwrap();
    }

    /// Every key and its value, as one text (the store's contents).
    pub(crate) async fn dump(&mut self) -> String {
        let mut keys: Vec<String> = self.con.keys("*").await.unwrap();
        keys.sort();
        let mut out = String::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut self.con)
                .await
                .unwrap();
            let v: String = match kind.as_str() {
                "string" => self.con.get(&k).await.unwrap(),
                "set" => {
                    let mut m: Vec<String> = self.con.smembers(&k).await.unwrap();
                    m.sort();
                    m.join(",")
                }
                "zset" => {
                    let m: Vec<(String, f64)> =
                        self.con.zrange_withscores(&k, 0, -1).await.unwrap();
                    format!("{m:?}")
                }
                other => other.to_string(),
            };
            out.push_str(&format!("{k}={v}\n"));
        }
        out
    }
}

fn now_ms() -> i64 {
    taskpulse::now_ms()
}

async fn app_on(url: &str, db: &TestDb) -> TestApp {
    let url = url.to_string();
    TestApp::spawn_with(db, move |s| {
        s.engines.conductor.redis = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
        s.wait.wait_grace = Duration::from_secs(30);
    })
    .await
}

fn history(view: &Value) -> Vec<String> {
    let mut lines: Vec<String> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{} {}",
                h["to"].as_str().unwrap(),
                h["outcome"].as_str().unwrap()
            )
        })
        .collect();
    lines.reverse();
    lines
}

#[tokio::test]
async fn tasks_in_flight_and_how_they_ended_the_wait_queue_and_queue_depths() {
    let Some(mut c) = Conductor::on(REDIS, 11).await else {
        return;
    };
    let now = now_ms();
    let mut run = task_model("run-1", "encode", "IN_PROGRESS", now - 5_000);
    run["workerId"] = json!("worker-7");
    run["startTime"] = json!(now - 5_000);
    c.write_task(&run).await;
    let mut wait = task_model("wait-1", "WAIT", "IN_PROGRESS", now - 1_000);
    wait["waitTimeout"] = json!(now - 120_000);
    c.write_task(&wait).await;
    // due two minutes ago, priority 1 (+0.5): overdue past the 30 s grace
    c.push("WAIT", "wait-1", (now - 120_000) as f64 + 0.5).await;
    let soon = task_model("wait-2", "WAIT", "IN_PROGRESS", now);
    c.write_task(&soon).await;
    c.push("WAIT", "wait-2", (now + 30_000) as f64).await;
    let sched = task_model("up-1", "upload", "SCHEDULED", now);
    c.write_task(&sched).await;
    c.push("upload", "up-1", 1.0).await; // due now, priority 1: no enqueue time
    let before = c.dump().await;

    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&c.url, &db).await;
    let t = eventually(&app, "run-1", "running", |v| v["status"] == "IN_PROGRESS").await;
    assert_eq!(t["workerId"], "worker-7", "{t}");
    eventually(&app, "up-1", "scheduled", |v| v["status"] == "SCHEDULED").await;

    let scrape = app.scrape().await;
    let v =
        |name: &str, labels: &[(&str, &str)]| crate::helpers::metric_value(&scrape, name, labels);
    assert_eq!(
        v("taskpulse_wait_tasks", &[("workflow_type", "media")]),
        Some(2.0)
    );
    assert_eq!(
        v(
            "taskpulse_wait_overdue_tasks",
            &[("workflow_type", "media")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "taskpulse_wait_due_next_minute_tasks",
            &[("workflow_type", "media")]
        ),
        Some(1.0)
    );
    let oldest = v("taskpulse_wait_oldest_overdue_seconds", &[]).unwrap();
    assert!((115.0..130.0).contains(&oldest), "{oldest}");
    assert_eq!(
        v("taskpulse_conductor_queue_depth", &[("queue", "WAIT")]),
        Some(2.0)
    );
    assert_eq!(
        v("taskpulse_conductor_queue_due", &[("queue", "WAIT")]),
        Some(1.0)
    );
    assert_eq!(
        v("taskpulse_conductor_queue_depth", &[("queue", "upload")]),
        Some(1.0)
    );
    assert_eq!(
        v("taskpulse_conductor_queue_due", &[("queue", "upload")]),
        Some(1.0)
    );
    assert_eq!(
        c.dump().await,
        before,
        "taskpulse wrote nothing to Conductor's Redis"
    );

    // The async executor completes the WAIT (ZREM, the JSON, out of the set); the decider
    // times the worker task out; the upload is cancelled with its workflow.
    let mut done = wait.clone();
    done["status"] = json!("COMPLETED");
    done["endTime"] = json!(now + 100);
    c.ack("WAIT", "wait-1").await;
    c.write_task(&done).await;
    let mut timed_out = run.clone();
    timed_out["status"] = json!("TIMED_OUT");
    timed_out["endTime"] = json!(now + 200);
    c.write_task(&timed_out).await;
    let mut cancelled = sched.clone();
    cancelled["status"] = json!("CANCELED");
    cancelled["endTime"] = json!(now + 300);
    c.ack("upload", "up-1").await;
    c.write_task(&cancelled).await;
    let w = eventually(&app, "wait-1", "completed", |v| v["status"] == "COMPLETED").await;
    eventually(&app, "run-1", "timed out", |v| v["status"] == "TIMED_OUT").await;
    eventually(&app, "up-1", "cancelled", |v| v["status"] == "CANCELED").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        history(&app.task("wait-1").await),
        vec!["IN_PROGRESS accepted", "COMPLETED accepted"],
        "{w}"
    );
    assert_eq!(
        history(&app.task("run-1").await),
        vec!["IN_PROGRESS accepted", "TIMED_OUT accepted"]
    );
    let scrape = app.scrape().await;
    let v =
        |name: &str, labels: &[(&str, &str)]| crate::helpers::metric_value(&scrape, name, labels);
    assert_eq!(
        v("taskpulse_wait_tasks", &[("workflow_type", "media")]),
        Some(1.0)
    );
    assert_eq!(
        v("taskpulse_conductor_queue_depth", &[("queue", "upload")]),
        Some(0.0)
    );
    let lag = v(
        "taskpulse_wait_wakeup_lag_seconds_count",
        &[("workflow_type", "media")],
    );
    assert_eq!(lag, Some(1.0), "the WAIT that left was observed once");
    assert_eq!(
        v(
            "taskpulse_updates_total",
            &[("source", "conductor_redis"), ("outcome", "accepted")]
        ),
        Some(7.0),
        "4 tasks read, 3 ends"
    );
    assert_eq!(
        v(
            "taskpulse_updates_total",
            &[("source", "conductor_redis"), ("outcome", "duplicate")]
        ),
        Some(0.0)
    );
    let after = c.dump().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.dump().await, after, "polls write nothing");
    app.shutdown().await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut c.con).await.unwrap();
}

struct RedisServer(Child);

impl RedisServer {
    fn start(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => Some(RedisServer(c)),
            Err(e) => crate::tools::missing(
                &format!("cannot run redis-server ({e})"),
                "install redis-server",
            ),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect_when_up(base: &str) -> Conductor {
    for _ in 0..100 {
        if let Ok(client) = redis::Client::open(format!("{base}/0").as_str()) {
            if client.get_multiplexed_async_connection().await.is_ok() {
                return Conductor::on(base, 0).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server at {base} did not come up");
}

async fn readyz(app: &TestApp) -> (u16, String) {
    let r = app.get("/readyz").await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Redis stops during a run: readiness says so, ingest from the API goes on, the last WAIT
/// state stays; once Redis is back the reader reads again, with nothing invented meanwhile.
#[tokio::test]
async fn redis_stopped_and_restarted_during_a_run() {
    let port = free_port();
    let base = format!("redis://127.0.0.1:{port}");
    let Some(server) = RedisServer::start(port) else {
        return;
    };
    let mut c = connect_when_up(&base).await;
    let now = now_ms();
    c.write_task(&task_model("a-1", "encode", "SCHEDULED", now))
        .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&format!("{base}/0"), &db).await;
    eventually(&app, "a-1", "read", |v| v["status"] == "SCHEDULED").await;
    assert_eq!(readyz(&app).await.0, 200);

    drop(server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&app).await;
        if status == 503 {
            assert!(body.contains("Redis"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with Redis down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = app
        .ingest(
            &json!({"taskId": "api-1", "workflowId": "wf-api", "taskType": "t",
                        "status": "IN_PROGRESS"}),
        )
        .await;
    assert_eq!(r["accepted"], 1, "ingest from the API goes on: {r}");
    assert_eq!(
        app.task("a-1").await["status"],
        "SCHEDULED",
        "nothing invented for a task while its store is unreadable"
    );

    let _server = RedisServer::start(port).unwrap();
    let mut c = connect_when_up(&base).await;
    let mut started = task_model("a-1", "encode", "IN_PROGRESS", now + 1_000);
    started["workerId"] = json!("worker-2");
    c.write_task(&started).await;
    eventually(&app, "a-1", "read after the restart", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while readyz(&app).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.task("api-1").await["status"], "IN_PROGRESS");
    app.shutdown().await;
}
