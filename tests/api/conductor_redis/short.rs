//! Short tasks (issue 22 §5): a task created and finished within one poll interval is never a
//! member of `IN_PROGRESS_TASKS.*` when the reader looks; it is found through its workflow's
//! `WORKFLOW_TO_TASKS` set, also when the workflow finished in the same interval. Conductor's
//! writes are replayed in `RedisExecutionDAO`'s order (see `dao.rs`), each burst far shorter
//! than the 200 ms poll interval.

use super::dao::{moved, task_of, workflow_model};
use super::{app_on, connect_when_up, history, now_ms, RedisServer};
use crate::conductor_tail::eventually;
use crate::helpers::{free_port, Backend, TestDb};

#[tokio::test]
async fn a_task_created_and_finished_between_two_polls_is_seen() {
    let port = free_port();
    let base = format!("redis://127.0.0.1:{port}");
    let Some(_server) = RedisServer::start(port) else {
        return;
    };
    let mut c = connect_when_up(&base).await;
    let now = now_ms();
    c.store_workflow(&workflow_model("wf-1", "orders", "RUNNING", now), true)
        .await;
    let first = task_of("wf-1", "first", "encode", "SCHEDULED", now);
    c.create_task(&first).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&format!("{base}/0"), &db).await;
    eventually(&app, "first", "read", |v| v["status"] == "SCHEDULED").await;

    // a fast worker: scheduled, polled and completed within a few milliseconds
    let quick = task_of("wf-1", "quick", "notify", "SCHEDULED", now + 10);
    c.create_task(&quick).await;
    let running = moved(&quick, "IN_PROGRESS", now + 20);
    c.update_task(&running).await;
    c.update_task(&moved(&running, "COMPLETED", now + 30)).await;
    // a synchronous system task, created and completed in one decide
    let inline = task_of("wf-1", "inline", "INLINE", "SCHEDULED", now + 40);
    c.create_task(&inline).await;
    c.update_task(&moved(&inline, "COMPLETED", now + 41)).await;

    let q = eventually(&app, "quick", "completed", |v| v["status"] == "COMPLETED").await;
    assert_eq!(q["workflowId"], "wf-1", "{q}");
    eventually(&app, "inline", "completed", |v| v["status"] == "COMPLETED").await;
    assert_eq!(
        app.task("first").await["status"],
        "SCHEDULED",
        "the task still scheduled is followed as before"
    );
    // the history comes from the store, which updates read from an engine's store reach
    // after the memory (acknowledged from memory): wait for the write, within a bound
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let h = history(&app.task("quick").await);
        if h.last().is_some_and(|h| h == "COMPLETED accepted") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_workflow_that_finishes_between_two_polls_still_shows_its_last_tasks() {
    let port = free_port();
    let base = format!("redis://127.0.0.1:{port}");
    let Some(_server) = RedisServer::start(port) else {
        return;
    };
    let mut c = connect_when_up(&base).await;
    let now = now_ms();
    let wf = workflow_model("wf-2", "orders", "RUNNING", now);
    c.store_workflow(&wf, true).await;
    let pay = task_of("wf-2", "pay", "charge", "SCHEDULED", now);
    c.create_task(&pay).await;
    let paying = moved(&pay, "IN_PROGRESS", now + 5);
    c.update_task(&paying).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&format!("{base}/0"), &db).await;
    eventually(&app, "pay", "running", |v| v["status"] == "IN_PROGRESS").await;

    // within one interval: the worker completes `pay`, the decider schedules `ship`, a fast
    // worker completes it, and the decider completes the workflow (it leaves the pending set)
    c.update_task(&moved(&paying, "COMPLETED", now + 50)).await;
    let ship = task_of("wf-2", "ship", "ship", "SCHEDULED", now + 60);
    c.create_task(&ship).await;
    c.update_task(&moved(&ship, "COMPLETED", now + 70)).await;
    let mut done = wf.clone();
    done["status"] = serde_json::json!("COMPLETED");
    done["endTime"] = serde_json::json!(now + 80);
    c.store_workflow(&done, false).await;

    eventually(&app, "pay", "completed", |v| v["status"] == "COMPLETED").await;
    let s = eventually(&app, "ship", "completed", |v| v["status"] == "COMPLETED").await;
    assert_eq!(s["workflowId"], "wf-2", "{s}");
    app.shutdown().await;
}
