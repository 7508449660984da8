//! The workload that makes every metric family carry samples (shared with `e2e`).

use super::*;
use crate::tools::missing;

/// The task predicted to time out: at 10% after 100 s of a 300 s timeout (predicted ~1000 s).
pub const SLOW: &str = "render-slow";
/// WAIT tasks past their wake-up time by two minutes.
pub const WAIT_OVERDUE: [&str; 2] = ["wait-overdue-1", "wait-overdue-2"];
/// A WAIT task due within the minute (it turns overdue after ~20 s plus the grace).
pub const WAIT_SOON: &str = "wait-soon";
/// `workflowType` of the predicted-timeout task and of the WAIT tasks.
pub const SLOW_WORKFLOW_TYPE: &str = "video";
pub const SLOW_TASK_TYPE: &str = "render";
pub const WAIT_WORKFLOW_TYPE: &str = "media";

/// Settings the workload needs: a checker pass every 300 ms that repairs an expired lease at
/// once, and a 1 s WAIT grace.
pub fn workload_settings(s: &mut taskpulse::Settings) {
    s.check_loop.check_interval = Duration::from_millis(300);
    s.checker.lease_grace = Duration::ZERO;
    s.wait.wait_grace = Duration::from_secs(1);
}

fn task(id: &str, workflow_type: &str, task_type: &str, status: &str) -> Value {
    json!({"taskId": id, "workflowId": format!("wf-{id}"), "workflowType": workflow_type,
           "taskType": task_type, "status": status})
}

fn with(mut u: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("an object") {
        u[k] = v.clone();
    }
    u
}

async fn accepted(app: &TestApp, body: Value) {
    let r = app.ingest(&body).await;
    let n = body.as_array().map(|a| a.len()).unwrap_or(1);
    assert_eq!(r["accepted"], n, "{body}\n{r}");
}

/// In-flight tasks and the WAIT queue: a task predicted to time out ([`SLOW`]), one that
/// finishes in time, one whose progress will stall, a scheduled one, and WAIT tasks overdue,
/// due soon and due later. Returns the engine time the slow task's last sample carries.
pub async fn start_tasks(app: &TestApp) -> i64 {
    let now = taskpulse::now_ms();
    let start = now - 100_000;
    for (i, step) in [0, 50_000, 100_000].iter().enumerate() {
        let i = i as i64;
        for (id, worker, progress) in [
            (SLOW, "worker-a", 5 * i),
            ("render-fast", "worker-b", 45 * i),
        ] {
            accepted(
                app,
                with(
                    task(id, SLOW_WORKFLOW_TYPE, SLOW_TASK_TYPE, "IN_PROGRESS"),
                    json!({"workerId": worker, "startTime": start, "timeoutSeconds": 300,
                           "updateTime": start + step, "progressPercent": progress,
                           "progressMessage": format!("frame {progress}")}),
                ),
            )
            .await;
        }
    }
    let mut batch = vec![
        with(
            task("encode-stuck", WAIT_WORKFLOW_TYPE, "encode", "IN_PROGRESS"),
            json!({"workerId": "worker-b", "progressPercent": 40, "progressMessage": "chunk 8 of 20"}),
        ),
        task("encode-queued", WAIT_WORKFLOW_TYPE, "encode", "SCHEDULED"),
    ];
    for (id, wake) in [
        (WAIT_OVERDUE[0], now - 120_000),
        (WAIT_OVERDUE[1], now - 90_000),
        (WAIT_SOON, now + 20_000),
        ("wait-later", now + 3_600_000),
    ] {
        batch.push(with(
            task(id, WAIT_WORKFLOW_TYPE, "WAIT", "IN_PROGRESS"),
            json!({"waitUntil": wake}),
        ));
    }
    accepted(app, json!(batch)).await;
    now
}

/// Things that happen, round `round` of them: finished tasks (duration histogram), a WAIT task
/// that woke up late (wake-up lag histogram), a rejected terminal -> IN_PROGRESS transition,
/// progress updates inside the throttle interval (coalesced), and a task whose lease expires at
/// once (the checker repairs it). Each round reuses the label sets of the first, so counters and
/// histograms grow on the same series.
pub async fn churn(app: &TestApp, round: u32) {
    let now = taskpulse::now_ms();
    for (id, status) in [("done-ok", "COMPLETED"), ("done-failed", "FAILED")] {
        let id = format!("{id}-{round}");
        let running = with(
            task(&id, WAIT_WORKFLOW_TYPE, "encode", "IN_PROGRESS"),
            json!({"workerId": "worker-c", "startTime": now - 90_000, "updateTime": now - 5_000,
                   "progressPercent": 50}),
        );
        accepted(app, running.clone()).await;
        accepted(
            app,
            with(
                running,
                json!({"status": status, "updateTime": now - 1_000}),
            ),
        )
        .await;
    }
    let late = with(
        task(
            &format!("done-ok-{round}"),
            WAIT_WORKFLOW_TYPE,
            "encode",
            "IN_PROGRESS",
        ),
        json!({"progressPercent": 60, "updateTime": now}),
    );
    let r = app.ingest(&late).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");

    let woke = with(
        task(
            &format!("wait-woke-{round}"),
            WAIT_WORKFLOW_TYPE,
            "WAIT",
            "IN_PROGRESS",
        ),
        json!({"waitUntil": now - 5_000, "updateTime": now - 6_000}),
    );
    accepted(app, woke.clone()).await;
    accepted(
        app,
        with(woke, json!({"status": "COMPLETED", "updateTime": now})),
    )
    .await;

    let chatty = format!("encode-chatty-{round}");
    for p in [10, 11, 12, 13] {
        accepted(
            app,
            with(
                task(&chatty, WAIT_WORKFLOW_TYPE, "encode", "IN_PROGRESS"),
                json!({"workerId": "worker-c", "progressPercent": p}),
            ),
        )
        .await;
    }

    accepted(
        app,
        with(
            task(
                &format!("lease-{round}"),
                WAIT_WORKFLOW_TYPE,
                "encode",
                "IN_PROGRESS",
            ),
            json!({"workerId": "worker-d", "responseTimeoutSeconds": 1, "progressPercent": 5}),
        ),
    )
    .await;
}

/// Waits until the periodic checker has repaired the expired lease of every round so far and
/// reported the overdue WAIT tasks.
pub async fn wait_for_checker(app: &TestApp, rounds: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = app.scrape().await;
        let repaired = metric_value(
            &scrape,
            "taskpulse_checker_repairs_total",
            &[("rule", "lease_expired"), ("outcome", "repaired")],
        )
        .unwrap_or(0.0);
        let overdue = metric_value(
            &scrape,
            "taskpulse_checker_violations",
            &[("rule", "wait_overdue")],
        )
        .unwrap_or(0.0);
        if repaired >= f64::from(rounds) && overdue >= 1.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checker did not repair {rounds} expired lease(s) and report the overdue WAIT tasks within 15s (repaired {repaired}, wait_overdue {overdue})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The scrape of a second app, for what only the Conductor worker proxy fills
/// (`taskpulse_conductor_heartbeats_total`): `--conductor-url` pointing at the engine emulator,
/// a task polled through taskpulse, and two lease heartbeats, one forwarded, one coalesced.
pub async fn proxy_workload_metrics() -> String {
    use crate::conductor::{Emulator, TaskSpec};
    let emu = Emulator::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| s.engines.conductor.url = Some(emu.url())).await;
    let id = emu.start_task(
        TaskSpec::new("encode")
            .workflow("wf-heartbeat", WAIT_WORKFLOW_TYPE)
            .response_timeout(60),
    );
    let polled = app.get("/api/tasks/poll/encode?workerid=worker-hb").await;
    assert_eq!(polled.status(), 200, "poll through the proxy");
    let task: Value = polled.json().await.unwrap();
    assert_eq!(task["taskId"], id.as_str(), "{task}");
    for p in [10, 20] {
        let r = app
            .client
            .post(app.url("/api/tasks"))
            .json(
                &json!({"taskId": id, "workflowInstanceId": task["workflowInstanceId"],
                          "workerId": "worker-hb", "status": "IN_PROGRESS", "extendLease": true,
                          "outputData": {"progressPercent": p}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "heartbeat through the proxy");
    }
    app.settle().await;
    let text = app.metrics_text().await;
    app.shutdown().await;
    text
}

/// The scrape of an app reading a Redis-backed Conductor (`--conductor-redis`, database 13 of
/// the test Redis), for what only that reader fills (`taskpulse_conductor_queue_*`): one task
/// queued. Empty when there is no Redis and tools are not required.
pub async fn redis_workload_metrics() -> String {
    use redis::AsyncCommands;
    let url = "redis://127.0.0.1:6379/13";
    let client = redis::Client::open(url).unwrap();
    let mut con = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            missing::<()>(
                &format!("no Redis at {url}: {e}"),
                "scripts/test.sh starts one",
            );
            return String::new();
        }
    };
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
    let _: () = con
        .zadd("conductor_queues.test.QUEUE.encode.c", "t-1", 1.0)
        .await
        .unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| s.engines.conductor.redis = Some(url.into())).await;
    let text = app.metrics_text().await;
    app.shutdown().await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
    text
}
