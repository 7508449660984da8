//! Malformed keys under Conductor's namespace (issue 23 item 3), with the real binary: a key
//! of the wrong type or a member that is not UTF-8 is skipped, counted
//! (`taskpulse_conductor_redis_skipped_total{reason}`, in the first scrape) and named in the
//! log once; start-up and every other task go on.

use std::time::Duration;

use serde_json::{json, Value};

use super::dao::{moved, task_of, workflow_model};
use super::{connect_when_up, now_ms, Conductor, RedisServer};
use crate::helpers::{free_port, metric_value};
use crate::process::Server;

impl Conductor {
    async fn raw(&mut self, cmd: &mut redis::Cmd) {
        let _: redis::Value = cmd.query_async(&mut self.con).await.unwrap();
    }
}

/// The task as the server shows it, once `pred` holds (10 s at most).
async fn until(server: &Server, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let client = reqwest::Client::new();
    loop {
        let r = client
            .get(server.url(&format!("/api/v1/tasks/{id}")))
            .send()
            .await
            .unwrap();
        let v: Value = if r.status() == 200 {
            r.json().await.unwrap()
        } else {
            Value::Null
        };
        if pred(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: {what} not within 10 s; last {v}; stderr:\n{}",
            server.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn skipped(server: &Server, reason: &str) -> Option<f64> {
    metric_value(
        &server.scrape().await,
        "taskpulse_conductor_redis_skipped_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_skipped_counted_and_named_once() {
    let port = free_port();
    let base = format!("redis://127.0.0.1:{port}");
    let Some(_redis) = RedisServer::start(port) else {
        return;
    };
    let mut c = connect_when_up(&base).await;
    let now = now_ms();
    c.store_workflow(&workflow_model("wf-g", "orders", "RUNNING", now), true)
        .await;
    let good = task_of("wf-g", "good-1", "encode", "SCHEDULED", now);
    c.create_task(&good).await;
    // present at start: an in-progress "set" and a queue that are strings, a member not UTF-8
    c.raw(
        redis::cmd("SET")
            .arg("conductor.test.IN_PROGRESS_TASKS.broken")
            .arg("x"),
    )
    .await;
    c.raw(
        redis::cmd("SET")
            .arg("conductor_queues.test.QUEUE.broken.c")
            .arg("x"),
    )
    .await;
    c.raw(
        redis::cmd("SADD")
            .arg("conductor.test.IN_PROGRESS_TASKS.encode")
            .arg(&b"\xff\xfebad"[..]),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("tp.db").display());
    let url = format!("{base}/0");
    let args = [
        "--database",
        db.as_str(),
        "--conductor-redis",
        url.as_str(),
        "--conductor-poll-interval",
        "200ms",
    ];
    let server = Server::start(dir.path(), &args, &[]).await;
    assert_eq!(
        skipped(&server, "oversized").await,
        Some(0.0),
        "declared at start"
    );
    until(&server, "good-1", "read", |v| v["status"] == "SCHEDULED").await;
    assert_eq!(skipped(&server, "wrong_type").await, Some(2.0));
    assert_eq!(skipped(&server, "not_utf8").await, Some(1.0));

    // appearing later: a pending-workflows "set" that is a hash, a WAIT member not UTF-8
    c.raw(
        redis::cmd("HSET")
            .arg("conductor.test.PENDING_WORKFLOWS.odd")
            .arg("f")
            .arg("v"),
    )
    .await;
    c.raw(
        redis::cmd("ZADD")
            .arg("conductor_queues.test.QUEUE.WAIT.c")
            .arg(1.0)
            .arg(&b"\xc3\x28"[..]),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while skipped(&server, "wrong_type").await != Some(3.0)
        || skipped(&server, "not_utf8").await != Some(2.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "later bad keys not counted; stderr:\n{}",
            server.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a good task still followed after them
    let running = moved(&good, "IN_PROGRESS", now + 1_000);
    c.update_task(&running).await;
    let mut done = moved(&running, "COMPLETED", now + 2_000);
    done["outputData"] = json!({"note": "ok"});
    c.update_task(&done).await;
    until(&server, "good-1", "completed", |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    let r = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "malformed keys do not make the reader unready"
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // a few more polls
    assert_eq!(
        skipped(&server, "wrong_type").await,
        Some(3.0),
        "counted once"
    );
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{stderr}");
    for key in [
        "IN_PROGRESS_TASKS.broken",
        "QUEUE.broken.c",
        "PENDING_WORKFLOWS.odd",
    ] {
        assert_eq!(
            stderr.matches(key).count(),
            1,
            "{key} named once in the log:\n{stderr}"
        );
    }
}
