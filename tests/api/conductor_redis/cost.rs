//! What an idle poll costs Conductor's Redis (issue 24): the same for a history ten times
//! larger. Finished workflows are replayed with `RedisExecutionDAO`'s writes (`dao.rs`); the
//! work in flight is the same in both runs. Counted, not timed: the reader's own
//! `taskpulse_conductor_redis_poll_commands`, and `INFO commandstats` on Redis's side.

use std::time::Duration;

use serde_json::json;

use super::dao::{moved, task_of, workflow_model};
use super::{connect_when_up, now_ms, Conductor, RedisServer};
use crate::conductor_tail::eventually;
use crate::helpers::{free_port, Backend, TestApp, TestDb};

/// `finished` workflows of three tasks each, all completed; then 3 running workflows with a
/// completed task and one in progress, and two WAIT tasks queued.
async fn replay(c: &mut Conductor, finished: usize) {
    let now = now_ms();
    for w in 0..finished {
        let id = format!("old-{w}");
        let wf = workflow_model(&id, "orders", "RUNNING", now);
        c.store_workflow(&wf, true).await;
        for t in 0..3 {
            let task = task_of(&id, &format!("{id}-{t}"), "step", "SCHEDULED", now);
            c.create_task(&task).await;
            c.update_task(&moved(&task, "COMPLETED", now + 1)).await;
        }
        let mut done = wf.clone();
        done["status"] = json!("COMPLETED");
        c.store_workflow(&done, false).await;
    }
    for w in 0..3 {
        let id = format!("live-{w}");
        c.store_workflow(&workflow_model(&id, "orders", "RUNNING", now), true)
            .await;
        let first = task_of(&id, &format!("{id}-a"), "step", "SCHEDULED", now);
        c.create_task(&first).await;
        c.update_task(&moved(&first, "COMPLETED", now + 1)).await;
        let second = task_of(&id, &format!("{id}-b"), "step", "SCHEDULED", now);
        c.create_task(&second).await;
        c.update_task(&moved(&second, "IN_PROGRESS", now + 2)).await;
    }
    for id in ["wait-a", "wait-b"] {
        c.write_task(&task_model_wait(id, now)).await;
        c.push("WAIT", id, (now + 3_600_000) as f64).await;
    }
}

fn task_model_wait(id: &str, now: i64) -> serde_json::Value {
    super::task_model(id, "WAIT", "IN_PROGRESS", now)
}

impl Conductor {
    async fn scan_calls(&mut self) -> u64 {
        self.command_calls().await.get("scan").copied().unwrap_or(0)
    }
}

async fn polls(app: &TestApp) -> f64 {
    app.metric_value("taskpulse_conductor_redis_poll_seconds_count", &[])
        .await
        .unwrap_or(0.0)
}

/// Returns once three more polls have completed (10 s at most).
async fn three_polls(app: &TestApp) {
    let from = polls(app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while polls(app).await < from + 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "no polls");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commands of an idle poll, and `SCAN` calls per idle poll (from Redis's side, over a
/// window of polls counted by the reader; one poll more or less at the window's edges).
async fn idle_cost(finished: usize) -> Option<(f64, f64)> {
    let port = free_port();
    let _redis = RedisServer::start(port)?;
    let base = format!("redis://127.0.0.1:{port}");
    let mut c = connect_when_up(&base).await;
    replay(&mut c, finished).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let url = format!("{base}/0");
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.conductor.redis = Some(url);
        s.engines.conductor.poll_interval = Duration::from_millis(200);
    })
    .await;
    eventually(&app, "live-2-b", "read", |v| v["status"] == "IN_PROGRESS").await;
    three_polls(&app).await;
    let (scans, from) = (c.scan_calls().await, polls(&app).await);
    three_polls(&app).await;
    let idle = app
        .metric_value("taskpulse_conductor_redis_poll_commands", &[])
        .await
        .unwrap();
    let (scans, polled) = (c.scan_calls().await - scans, polls(&app).await - from);
    app.shutdown().await;
    Some((idle, scans as f64 / polled))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_costs_the_same_for_a_ten_times_larger_history() {
    let Some((small, small_scans)) = idle_cost(100).await else {
        return;
    };
    let (large, large_scans) = idle_cost(1_000).await.unwrap();
    // two walks of 4 SCAN steps per poll, whatever the keyspace holds
    for per_poll in [small_scans, large_scans] {
        assert!(
            (4.0..=12.0).contains(&per_poll),
            "{per_poll} SCAN calls per poll"
        );
    }
    assert_eq!(
        small, large,
        "commands per idle poll with 100 and 1,000 finished workflows"
    );
    // TIME, 8 SCAN steps, SSCAN of 2 in-progress sets and 1 pending set, 3 workflows' sets,
    // STRLEN + MGET of the 3 tasks in progress and 2 WAITs, ZCARD + ZCOUNT, ZSCAN
    assert!(small <= 30.0, "{small} commands in an idle poll");
}
