//! The real Conductor Python SDK (`conductor-python`, tests/requirements.txt) against
//! the engine emulator: first directly, proving the emulator speaks what the SDK expects; then
//! through taskpulse's Conductor worker proxy (`--conductor-url`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{python, run_worker, Emulator, Recorded, TaskSpec};
use crate::helpers::{metric_value, Backend, TestApp, TestDb};
use crate::store_test;

const LIMIT: Duration = Duration::from_secs(25);

/// The IN_PROGRESS updates that end a slice (not heartbeats).
fn yields(updates: &[Value]) -> Vec<&Value> {
    updates
        .iter()
        .filter(|u| u["status"] == "IN_PROGRESS" && u["extendLease"] != json!(true))
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yielding_worker_every_slice_reaches_the_engine() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    let id = emu
        .start_task(TaskSpec::new("encode").input(json!({"slices": 3, "callbackAfterSeconds": 1})));
    let run = run_worker(&py, "yielding_worker.py", &emu.api_url(), 1, &[], LIMIT).await;
    let summary = run.assert_ok();
    assert_eq!(summary["completed"], json!([id]));

    // what reached the engine: 3 slices then the completion, all on update-v2
    let reqs = emu.requests();
    let updates: Vec<&Recorded> = reqs.iter().filter(|r| r.is_update()).collect();
    assert_eq!(updates.len(), 4, "{updates:#?}");
    assert!(updates.iter().all(|r| r.path == "/api/tasks/update-v2"));
    let bodies: Vec<Value> = updates.iter().map(|r| r.body.clone()).collect();
    let slices = yields(&bodies);
    assert_eq!(slices.len(), 3);
    for (k, u) in slices.iter().enumerate() {
        assert_eq!(u["outputData"]["progress"], json!([25, 50, 75][k]));
        assert_eq!(u["outputData"]["slice"], json!(k + 1));
        assert_eq!(
            u["outputData"]["pollCount"],
            json!(k + 1),
            "engine pollCount"
        );
        assert_eq!(u["callbackAfterSeconds"], 1);
        assert_eq!(u["workerId"], "yielding-worker-1");
        assert_eq!(
            u["workflowInstanceId"],
            json!(emu.task(&id).unwrap().workflow_instance_id)
        );
    }
    // the TaskResult JSON exactly as the SDK writes it: None fields left out, extendLease false
    assert_eq!(
        keys(slices[0]),
        [
            "callbackAfterSeconds",
            "extendLease",
            "outputData",
            "status",
            "taskId",
            "workerId",
            "workflowInstanceId"
        ]
    );
    assert_eq!(slices[0]["extendLease"], false);
    let done = &bodies[3];
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["outputData"]["progress"], 100);
    // each requeue waited callbackAfterSeconds before the next slice ran
    for pair in updates.windows(2) {
        assert!(
            pair[1].at_ms - pair[0].at_ms >= 950,
            "slices {} ms apart",
            pair[1].at_ms - pair[0].at_ms
        );
    }

    let stored = emu.task(&id).unwrap();
    assert_eq!(stored.status, "COMPLETED");
    assert_eq!(stored.poll_count, 4);
    assert_eq!(stored.output_data["result"], json!(format!("encoded-{id}")));
    assert_eq!(
        emu.history(&id),
        [
            "SCHEDULED",
            "IN_PROGRESS",
            "SCHEDULED",
            "IN_PROGRESS",
            "SCHEDULED",
            "IN_PROGRESS",
            "SCHEDULED",
            "IN_PROGRESS",
            "COMPLETED"
        ]
    );
    // the SDK polls only the batch endpoint, one slot, 100 ms long-poll
    let polls: Vec<&Recorded> = reqs.iter().filter(|r| r.is_poll()).collect();
    assert!(polls.len() >= 4);
    for p in polls {
        assert_eq!(p.path, "/api/tasks/poll/batch/encode");
        assert_eq!(p.query, "workerid=yielding-worker-1&count=1&timeout=100");
    }
    assert_eq!(emu.conflicts(), 0);
    eprintln!("yielding worker: {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yielding_worker_falls_back_to_post_tasks_without_update_v2() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    emu.disable_update_v2();
    let input = json!({"slices": 2, "callbackAfterSeconds": 0});
    let a = emu.start_task(TaskSpec::new("encode").input(input.clone()));
    let b = emu.start_task(TaskSpec::new("encode").input(input));
    let run = run_worker(&py, "yielding_worker.py", &emu.api_url(), 2, &[], LIMIT).await;
    run.assert_ok();

    let updates: Vec<Recorded> = emu
        .requests()
        .into_iter()
        .filter(|r| r.is_update())
        .collect();
    assert_eq!(updates[0].path, "/api/tasks/update-v2", "v2 first");
    assert!(
        updates[1..].iter().all(|r| r.path == "/api/tasks"),
        "then v1 for good"
    );
    assert_eq!(updates[0].body["taskId"], json!(a));
    for id in [&a, &b] {
        let v1: Vec<Value> = updates
            .iter()
            .filter(|r| r.path == "/api/tasks" && r.body["taskId"] == json!(id))
            .map(|r| r.body.clone())
            .collect();
        let progress: Vec<&Value> = yields(&v1)
            .into_iter()
            .map(|u| &u["outputData"]["progress"])
            .collect();
        assert_eq!(progress, [&json!(33), &json!(67)], "{id}");
        assert_eq!(v1.last().unwrap()["status"], "COMPLETED");
        let t = emu.task(id).unwrap();
        assert_eq!(t.status, "COMPLETED");
        assert_eq!(t.poll_count, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_runs_the_next_task_answered_by_update_v2() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    let ids: Vec<String> = (0..3)
        .map(|_| emu.start_task(TaskSpec::new("encode").input(json!({"slices": 0}))))
        .collect();
    let run = run_worker(&py, "yielding_worker.py", &emu.api_url(), 3, &[], LIMIT).await;
    assert_eq!(run.assert_ok()["completed"], json!(ids));

    // one poll handed out the first task; the other two came back from update-v2, so no poll
    // request arrived between the first completion and the last
    let reqs = emu.requests();
    let first_done = reqs.iter().position(|r| r.is_update()).unwrap();
    let last_done = reqs.iter().rposition(|r| r.is_update()).unwrap();
    assert!(
        reqs[first_done..=last_done].iter().all(|r| r.is_update()),
        "{:#?}",
        &reqs[first_done..=last_done]
    );
    for id in &ids {
        let t = emu.task(id).unwrap();
        assert_eq!(t.status, "COMPLETED");
        assert_eq!(t.poll_count, 1);
        assert_eq!(t.worker_id.as_deref(), Some("yielding-worker-1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_worker_heartbeats_reach_the_engine_and_progress_is_dropped() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    let id = emu.start_task(
        TaskSpec::new("transcode")
            .response_timeout(2)
            .input(json!({"workSeconds": 3, "heartbeatsPerSecond": 20})),
    );
    let run = run_worker(&py, "heartbeat_worker.py", &emu.api_url(), 1, &[], LIMIT).await;
    let summary = run.assert_ok();
    let sent = summary["progressHeartbeats"].as_u64().unwrap();
    let sdk_sent = summary["sdkHeartbeats"].as_u64().unwrap();
    assert!(sent >= 40, "{sent} progress heartbeats in 3 s at 20/s");
    assert!(
        sdk_sent >= 1,
        "LeaseManager heartbeats every 0.8 x 2 s on a 1 s tick"
    );
    assert_eq!(summary["progressHeartbeatsFailed"], 0);

    // directly connected, every heartbeat reached the engine
    let beats = emu.heartbeats_for(&id);
    assert_eq!(beats.len() as u64, sent + sdk_sent);
    assert!(beats.iter().all(|r| r.path == "/api/tasks"), "always v1");
    let (with_progress, sdk): (Vec<&Recorded>, Vec<&Recorded>) = beats
        .iter()
        .partition(|r| r.body.get("outputData").is_some());
    assert_eq!(with_progress.len() as u64, sent);
    // the SDK's own heartbeat: no workerId, no output
    assert_eq!(
        keys(&sdk[0].body),
        ["extendLease", "status", "taskId", "workflowInstanceId"]
    );
    assert_eq!(sdk[0].body["status"], "IN_PROGRESS");
    let progress: Vec<i64> = with_progress
        .iter()
        .map(|r| r.body["outputData"]["progress"].as_i64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(*progress.last().unwrap() >= 90);
    assert!(with_progress
        .iter()
        .all(|r| r.body["workerId"] == "heartbeat-worker-1"));

    // the engine kept none of that progress: IN_PROGRESS until COMPLETED, never requeued
    let t = emu.task(&id).unwrap();
    assert_eq!(t.status, "COMPLETED");
    assert_eq!(t.output_data["progress"], 100);
    assert_eq!(t.output_data["heartbeats"], json!(sent));
    assert_eq!(emu.history(&id), ["SCHEDULED", "IN_PROGRESS", "COMPLETED"]);
    eprintln!(
        "heartbeat worker: {sent} progress + {sdk_sent} SDK heartbeats in {:?}",
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_in_progress_overwrites_completed_at_a_stale_engine() {
    // the control for the proxied test below: straight to the stale engine, the SDK's late
    // updates corrupt the completed task (conductor-oss#176)
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    emu.set_stale_writer(true);
    let id = emu.start_task(TaskSpec::new("encode").input(json!({"slices": 0})));
    let args = ["--late-update"];
    let run = run_worker(&py, "yielding_worker.py", &emu.api_url(), 1, &args, LIMIT).await;
    run.assert_ok();
    let late: Vec<Value> = run.updates()[1..].to_vec();
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(late
        .iter()
        .all(|u| u["ok"] == true && u["status"] == "IN_PROGRESS"));
    let t = emu.task(&id).unwrap();
    // overwritten: a worker's IN_PROGRESS is written SCHEDULED (and requeued) by an engine that
    // read the task before it completed (WorkflowExecutorOps.java:977-982 @ b54f0d4e)
    assert_eq!(t.status, "SCHEDULED", "overwritten");
    assert_eq!(t.output_data["progress"], 50);
    // the late IN_PROGRESS overwrote COMPLETED; the late heartbeat then met an open task
    assert_eq!(emu.stale_writes(), 1);
    assert_eq!(
        emu.history(&id),
        ["SCHEDULED", "IN_PROGRESS", "COMPLETED", "SCHEDULED"]
    );
}

// ---------------------------------------------------------------------------------------------
// Through taskpulse's Conductor worker proxy: the workers' CONDUCTOR_SERVER_URL is taskpulse.
// ---------------------------------------------------------------------------------------------

/// taskpulse with `--conductor-url` = the emulator.
async fn proxy_app(emu: &Emulator, db: &TestDb) -> TestApp {
    let url = emu.url();
    TestApp::spawn_with(db, move |s| s.engines.conductor.url = Some(url)).await
}

fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(scrape, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_yielding_worker_every_slice_reaches_the_engine_and_late_updates_do_not() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    // if a late IN_PROGRESS got through, this engine would overwrite COMPLETED with it
    emu.set_stale_writer(true);
    let db = TestDb::new(Backend::Sqlite).await;
    let app = proxy_app(&emu, &db).await;
    // callbackAfterSeconds 0: the slices come back to back, well inside
    // --progress-min-interval (500 ms here), and still every one must reach the engine
    let id = emu.start_task(
        TaskSpec::new("encode")
            .input(json!({"slices": 4, "callbackAfterSeconds": 0}))
            .response_timeout(30),
    );
    let args = ["--late-update"];
    let run = run_worker(&py, "yielding_worker.py", &app.url("/api"), 1, &args, LIMIT).await;
    let summary = run.assert_ok();
    assert_eq!(summary["completed"], json!([id]));

    // the engine: 4 slices and the completion, in order, nothing else
    let updates = emu.updates_for(&id);
    let progress: Vec<&Value> = updates
        .iter()
        .map(|u| &u["outputData"]["progress"])
        .collect();
    assert_eq!(
        progress,
        [&json!(20), &json!(40), &json!(60), &json!(80), &json!(100)],
        "{updates:#?}"
    );
    assert_eq!(yields(&updates).len(), 4);
    assert!(yields(&updates)
        .iter()
        .all(|u| u["callbackAfterSeconds"] == 0));
    assert_eq!(updates[4]["status"], "COMPLETED");
    let t = emu.task(&id).unwrap();
    assert_eq!(t.status, "COMPLETED");
    assert_eq!(t.poll_count, 5);

    // the late IN_PROGRESS and the late heartbeat were answered as the engine would, and
    // never reached it
    let late: Vec<Value> = run.updates()[5..].to_vec();
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(late.iter().all(|u| u["ok"] == true), "{late:?}");
    assert_eq!(emu.stale_writes(), 0);
    assert_eq!(emu.conflicts(), 0);

    // what taskpulse holds and exports
    app.settle().await;
    let view = app.task(&id).await;
    assert_eq!(view["status"], "COMPLETED", "{view:#}");
    assert_eq!(view["workerId"], "yielding-worker-1");
    assert_eq!(view["taskType"], "encode");
    assert_eq!(view["progressPercent"], 100.0);
    let scrape = app.scrape().await;
    assert!(
        counter(
            &scrape,
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")]
        ) >= 1.0,
        "the late IN_PROGRESS is counted as rejected"
    );
    eprintln!("proxied yielding worker: {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_heartbeats_are_coalesced_and_their_progress_is_exported() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = proxy_app(&emu, &db).await;
    let rto = 2; // responseTimeoutSeconds: a heartbeat must reach the engine every 1 s at least
    let id = emu.start_task(
        TaskSpec::new("transcode")
            .response_timeout(rto)
            .input(json!({"workSeconds": 4, "heartbeatsPerSecond": 25})),
    );
    let url = app.url("/api");
    let worker =
        tokio::spawn(
            async move { run_worker(&py, "heartbeat_worker.py", &url, 1, &[], LIMIT).await },
        );

    // while it works: taskpulse has the progress the engine drops, in the API and /metrics
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut seen_api, mut seen_metric) = (Vec::new(), Vec::new());
    while !worker.is_finished() && Instant::now() < deadline {
        let resp = app.get(&format!("/api/v1/tasks/{id}")).await;
        if resp.status() == 200 {
            let v: Value = resp.json().await.unwrap();
            if v["status"] == "IN_PROGRESS" {
                if let Some(p) = v["progressPercent"].as_f64() {
                    assert_eq!(v["workerId"], "heartbeat-worker-1");
                    seen_api.push(p);
                }
                if let Some(r) = app
                    .metric_value("taskpulse_task_progress_ratio", &[("task_id", &id)])
                    .await
                {
                    seen_metric.push(r);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = worker.await.unwrap();
    let summary = run.assert_ok();
    assert!(
        seen_api.len() >= 5 && seen_api.windows(2).any(|w| w[1] > w[0]),
        "progress moved in GET /api/v1/tasks/{id}: {seen_api:?}"
    );
    assert!(
        seen_metric.iter().any(|r| *r > 0.0 && *r < 1.0)
            && seen_metric.windows(2).any(|w| w[1] > w[0]),
        "taskpulse_task_progress_ratio moved: {seen_metric:?}"
    );

    // coalesced: far fewer heartbeats reached the engine than the worker sent...
    let sent = summary["progressHeartbeats"].as_u64().unwrap()
        + summary["sdkHeartbeats"].as_u64().unwrap();
    let beats = emu.heartbeats_for(&id);
    let forwarded = beats.len() as u64;
    assert!(sent >= 60, "{sent} heartbeats sent in 4 s at 25/s");
    assert!(
        forwarded * 5 <= sent,
        "{forwarded} of {sent} heartbeats reached the engine"
    );
    // ...yet one at least every responseTimeoutSeconds / 2 while the task ran
    let polled_at = emu
        .requests()
        .iter()
        .find(|r| r.is_poll())
        .map(|r| r.at_ms)
        .unwrap();
    let done_at = emu
        .requests()
        .iter()
        .rfind(|r| r.is_update() && r.body["status"] == "COMPLETED")
        .map(|r| r.at_ms)
        .unwrap();
    let mut marks = vec![polled_at];
    marks.extend(beats.iter().map(|r| r.at_ms));
    marks.push(done_at);
    let half = rto * 1000 / 2;
    for w in marks.windows(2) {
        assert!(
            w[1] - w[0] <= half + 300,
            "{} ms without a heartbeat at the engine (responseTimeoutSeconds {rto}): {marks:?}",
            w[1] - w[0]
        );
    }
    // the ones forwarded still carry the worker's progress
    assert!(beats
        .iter()
        .any(|r| r.body["outputData"]["progress"].as_i64().is_some()));
    let scrape = app.scrape().await;
    assert_eq!(
        counter(
            &scrape,
            "taskpulse_conductor_heartbeats_total",
            &[("outcome", "forwarded")]
        ),
        forwarded as f64
    );
    assert_eq!(
        counter(
            &scrape,
            "taskpulse_conductor_heartbeats_total",
            &[("outcome", "coalesced")]
        ),
        (sent - forwarded) as f64
    );

    // the engine's store never held that progress; the task completed
    let t = emu.task(&id).unwrap();
    assert_eq!(t.status, "COMPLETED");
    assert_eq!(emu.history(&id), ["SCHEDULED", "IN_PROGRESS", "COMPLETED"]);
    app.settle().await;
    assert_eq!(app.task(&id).await["status"], "COMPLETED");
    eprintln!(
        "proxied heartbeats: {forwarded} of {sent} reached the engine in {:?}",
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_sdk_falls_back_to_post_tasks_when_the_engine_has_no_update_v2() {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    emu.disable_update_v2();
    let db = TestDb::new(Backend::Sqlite).await;
    let app = proxy_app(&emu, &db).await;
    let id = emu
        .start_task(TaskSpec::new("encode").input(json!({"slices": 2, "callbackAfterSeconds": 0})));
    let run = run_worker(&py, "yielding_worker.py", &app.url("/api"), 1, &[], LIMIT).await;
    run.assert_ok();
    // the engine's 404 reached the SDK through taskpulse; the SDK re-sent to POST /api/tasks
    let updates: Vec<Recorded> = emu
        .requests()
        .into_iter()
        .filter(|r| r.is_update())
        .collect();
    let paths: Vec<&str> = updates.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/tasks/update-v2",
            "/api/tasks",
            "/api/tasks",
            "/api/tasks"
        ]
    );
    let progress: Vec<&Value> = updates[1..]
        .iter()
        .map(|r| &r.body["outputData"]["progress"])
        .collect();
    assert_eq!(progress, [&json!(33), &json!(67), &json!(100)]);
    assert_eq!(emu.task(&id).unwrap().status, "COMPLETED");
    app.settle().await;
    assert_eq!(app.task(&id).await["status"], "COMPLETED");
}

/// conductor-oss#176 end to end: the engine loses the completion it answered 200 to; taskpulse,
/// which forwarded it, sees the engine still showing the task unfinished and posts the same
/// TaskResult again.
async fn lost_completion_is_reposted(backend: Backend) {
    let Some(py) = python() else { return };
    let emu = Emulator::start().await;
    let db = TestDb::new(backend).await;
    let app = proxy_app(&emu, &db).await;
    // the shape of the report: one iteration of a DO_WHILE item task
    let id = emu.start_task(
        TaskSpec::new("encode")
            .workflow("wf-176", "upload_batch")
            .reference("Upload_item_start__135", 12, 135)
            .input(json!({"slices": 1, "callbackAfterSeconds": 0})),
    );
    emu.lose_next_completion();
    let run = run_worker(&py, "yielding_worker.py", &app.url("/api"), 1, &[], LIMIT).await;
    run.assert_ok();
    let lost = emu.lost_completions();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["status"], "COMPLETED");

    // the engine still shows the task running... until taskpulse re-posts the completion
    let t = emu
        .wait_task(&id, Duration::from_secs(10), |t| t.status == "COMPLETED")
        .await;
    assert_eq!(t.output_data["progress"], 100);
    let completions: Vec<Recorded> = emu
        .requests()
        .into_iter()
        .filter(|r| {
            r.is_update() && r.body["taskId"] == json!(id) && r.body["status"] == "COMPLETED"
        })
        .collect();
    assert_eq!(completions.len(), 2, "{completions:#?}");
    assert_eq!(completions[0].path, "/api/tasks/update-v2", "the worker's");
    assert_eq!(completions[1].path, "/api/tasks", "taskpulse's re-post");
    assert_eq!(
        completions[1].body, completions[0].body,
        "the same TaskResult"
    );
    let waited = completions[1].at_ms - completions[0].at_ms;
    assert!(waited >= 1900, "verified {waited} ms after the forward");

    // counted (after the audit row is written) once the engine took it
    let labels = [("rule", "lost_terminal_update"), ("outcome", "repaired")];
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .metric_value("taskpulse_checker_repairs_total", &labels)
        .await
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the repair was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: Value = app.get("/api/v1/repairs").await.json().await.unwrap();
    let repairs = v["repairs"].as_array().unwrap();
    assert_eq!(repairs.len(), 1, "{repairs:#?}");
    assert_eq!(repairs[0]["rule"], "lost_terminal_update");
    assert_eq!(repairs[0]["taskId"], json!(id));
    assert_eq!(repairs[0]["outcome"], "repaired");
    // taskpulse learned the task from the poll: its place in the workflow, and the outcome
    let view = app.task(&id).await;
    assert_eq!(view["status"], "COMPLETED", "{view:#}");
    assert_eq!(view["workflowId"], "wf-176");
    assert_eq!(view["workflowType"], "upload_batch");
    assert_eq!(view["referenceTaskName"], "Upload_item_start__135");
    assert_eq!(view["seq"], 12);
    assert_eq!(view["iteration"], 135);
    // verified once held: no second re-post
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = emu
        .requests()
        .into_iter()
        .filter(|r| r.is_update() && r.body["taskId"] == json!(id))
        .count();
    assert_eq!(again, 3, "slice, completion, re-post");
}
store_test!(lost_completion_is_reposted);
