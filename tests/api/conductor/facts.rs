//! The emulator itself behaves as docs/engines/conductor.md says (plain HTTP, no SDK, no taskpulse).

use std::time::Duration;

use serde_json::{json, Value};

use super::{Emulator, TaskSpec};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(emu: &Emulator) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: emu.api_url(),
        }
    }

    async fn poll(&self, task_type: &str, worker: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(format!(
                "{}/tasks/poll/batch/{task_type}?workerid={worker}&count=5&timeout=0",
                self.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn update(&self, body: Value) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}/tasks", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        if status == 200 {
            assert_eq!(ct.as_deref(), Some("text/plain"), "v1 answers text/plain");
        }
        (status, text)
    }

    async fn update_v2(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/tasks/update-v2", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get_task(&self, id: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/tasks/{id}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

fn result(task: &Value, status: &str) -> Value {
    json!({
        "taskId": task["taskId"],
        "workflowInstanceId": task["workflowInstanceId"],
        "workerId": "w1",
        "status": status,
    })
}

#[tokio::test]
async fn poll_sets_in_progress_stamps_worker_and_counts_polls() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode").input(json!({"file": "a.mp4"})));
    assert!(c.poll("other", "w1").await.is_empty(), "polls are per type");
    let polled = c.poll("encode", "w1").await;
    assert_eq!(polled.len(), 1);
    let t = &polled[0];
    assert_eq!(t["taskId"], json!(id));
    assert_eq!(t["status"], "IN_PROGRESS");
    assert_eq!(t["workerId"], "w1");
    assert_eq!(t["pollCount"], 1);
    assert_eq!(t["taskType"], "encode");
    assert_eq!(t["inputData"]["file"], "a.mp4");
    assert!(t["startTime"].as_i64().unwrap() > 0);
    assert!(
        t.get("reasonForIncompletion").is_none(),
        "null fields are omitted"
    );
    assert!(
        c.poll("encode", "w2").await.is_empty(),
        "a polled task is not handed out twice"
    );
    assert_eq!(c.get_task(&id).await["status"], "IN_PROGRESS");

    // the single-task poll: 204 when nothing is due
    let resp = c
        .http
        .get(format!("{}/tasks/poll/encode?workerid=w1", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn in_progress_is_stored_scheduled_and_requeued_after_callback() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);

    let mut r = result(&t, "IN_PROGRESS");
    r["callbackAfterSeconds"] = json!(1);
    r["outputData"] = json!({"progress": 40});
    assert_eq!(c.update(r).await, (200, id.clone()));
    let stored = c.get_task(&id).await;
    assert_eq!(
        stored["status"], "SCHEDULED",
        "IN_PROGRESS is stored as SCHEDULED"
    );
    assert_eq!(stored["outputData"], json!({"progress": 40}));
    assert_eq!(stored["callbackAfterSeconds"], 1);

    // not due before callbackAfterSeconds, due after
    assert!(c.poll("encode", "w1").await.is_empty());
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let again = c.poll("encode", "w1").await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["pollCount"], 2);

    // callbackAfterSeconds 0: due at once
    let mut r = result(&again[0], "IN_PROGRESS");
    r["callbackAfterSeconds"] = json!(0);
    c.update(r).await;
    assert_eq!(c.poll("encode", "w1").await[0]["pollCount"], 3);
    assert_eq!(
        emu.history(&id),
        [
            "SCHEDULED",
            "IN_PROGRESS",
            "SCHEDULED",
            "IN_PROGRESS",
            "SCHEDULED",
            "IN_PROGRESS"
        ]
    );
}

#[tokio::test]
async fn extend_lease_refreshes_update_time_and_drops_output() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("transcode").response_timeout(2));
    let t = c.poll("transcode", "w1").await.remove(0);
    let before = c.get_task(&id).await["updateTime"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut hb = result(&t, "IN_PROGRESS");
    hb["extendLease"] = json!(true);
    hb["outputData"] = json!({"progress": 70});
    hb["callbackAfterSeconds"] = json!(30);
    hb["workerId"] = json!("w2");
    hb["logs"] = json!([{"log": "beat", "taskId": id, "createdTime": 1}]);
    assert_eq!(c.update(hb).await.0, 200);
    let stored = c.get_task(&id).await;
    assert_eq!(
        stored["status"], "IN_PROGRESS",
        "a heartbeat does not requeue"
    );
    assert_eq!(
        stored["outputData"],
        json!({}),
        "heartbeat output is dropped"
    );
    assert_eq!(stored["callbackAfterSeconds"], 0);
    assert_eq!(stored["workerId"], "w1", "a heartbeat sets no workerId");
    assert!(emu.logs(&id).is_empty(), "heartbeat logs are dropped");
    assert!(stored["updateTime"].as_i64().unwrap() > before);
    assert_eq!(emu.heartbeats_for(&id).len(), 1);

    // only taskId counts: a heartbeat saying COMPLETED, or nothing, changes no status, and
    // update-v2 answers it 204 (updateTask returns null for it)
    let mut hb = result(&t, "COMPLETED");
    hb["extendLease"] = json!(true);
    assert_eq!(c.update_v2(hb).await.status(), 204);
    let mut hb = result(&t, "IN_PROGRESS");
    hb["extendLease"] = json!(true);
    hb.as_object_mut().unwrap().remove("status");
    assert_eq!(c.update(hb).await.0, 200);
    assert_eq!(c.get_task(&id).await["status"], "IN_PROGRESS");

    // to a terminal task: ignored silently, not a task_update_conflict
    c.update(result(&t, "COMPLETED")).await;
    let done = c.get_task(&id).await;
    let mut hb = result(&t, "IN_PROGRESS");
    hb["extendLease"] = json!(true);
    assert_eq!(c.update(hb).await.0, 200);
    assert_eq!(c.get_task(&id).await, done);
    assert_eq!(emu.conflicts(), 0);

    // to an unknown task: 404
    let mut hb = result(&t, "IN_PROGRESS");
    hb["extendLease"] = json!(true);
    hb["taskId"] = json!("nope");
    assert_eq!(c.update(hb).await.0, 404);
}

#[tokio::test]
async fn an_update_replaces_what_it_leaves_out_and_a_terminal_write_keeps_update_time() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);
    let mut r = result(&t, "IN_PROGRESS");
    r["callbackAfterSeconds"] = json!(0);
    r["outputData"] = json!({"progress": 40});
    r["reasonForIncompletion"] = json!("slow");
    r["subWorkflowId"] = json!("sub-1");
    c.update(r).await;
    let yielded = c.get_task(&id).await;
    assert_eq!(
        (&yielded["workerId"], &yielded["reasonForIncompletion"]),
        (&json!("w1"), &json!("slow"))
    );
    assert_eq!(yielded["subWorkflowId"], "sub-1");
    let t = c.poll("encode", "w1").await.remove(0);
    let polled = c.get_task(&id).await["updateTime"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // COMPLETED with no workerId, output, reason or subWorkflowId: all cleared
    let done =
        json!({"taskId": id, "workflowInstanceId": t["workflowInstanceId"], "status": "COMPLETED"});
    assert_eq!(c.update(done).await.0, 200);
    let stored = c.get_task(&id).await;
    assert_eq!(stored["status"], "COMPLETED");
    for absent in ["workerId", "reasonForIncompletion", "subWorkflowId"] {
        assert!(stored.get(absent).is_none(), "{absent} cleared: {stored:#}");
    }
    assert_eq!(stored["outputData"], json!({}));
    assert_eq!(
        stored["updateTime"].as_i64().unwrap(),
        polled,
        "a terminal write keeps updateTime"
    );
    assert!(stored["endTime"].as_i64().unwrap() > polled);
}

#[tokio::test]
async fn reasons_are_cut_at_500_utf16_code_units() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);
    // 300 characters outside the BMP are 600 UTF-16 code units: Java keeps 250 of them
    let mut r = result(&t, "FAILED");
    r["reasonForIncompletion"] = json!("\u{1F600}".repeat(300));
    c.update(r).await;
    let reason = c.get_task(&id).await["reasonForIncompletion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(reason, "\u{1F600}".repeat(250));
    assert_eq!(super::cut_reason(&"a".repeat(501)), "a".repeat(500));
    // a cut through a surrogate pair drops its half
    let odd = format!("{}\u{1F600}", "a".repeat(499));
    assert_eq!(super::cut_reason(&odd), "a".repeat(499));
}

#[tokio::test]
async fn a_system_task_updated_in_progress_stays_in_progress() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("WAIT"));
    let t = c.poll("WAIT", "w1").await.remove(0);
    let mut r = result(&t, "IN_PROGRESS");
    r["callbackAfterSeconds"] = json!(0);
    assert_eq!(c.update(r).await.0, 200);
    assert_eq!(c.get_task(&id).await["status"], "IN_PROGRESS");
    assert_eq!(
        emu.history(&id),
        ["SCHEDULED", "IN_PROGRESS", "IN_PROGRESS"]
    );
}

#[tokio::test]
async fn updates_to_terminal_tasks_are_ignored_and_counted() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);
    let mut done = result(&t, "COMPLETED");
    done["outputData"] = json!({"progress": 100});
    c.update(done).await;
    let completed = c.get_task(&id).await;
    assert_eq!(completed["status"], "COMPLETED");
    assert!(completed["endTime"].as_i64().unwrap() > 0);

    let mut late = result(&t, "IN_PROGRESS");
    late["outputData"] = json!({"progress": 60});
    assert_eq!(c.update(late).await, (200, id.clone()));
    let mut hb = result(&t, "IN_PROGRESS");
    hb["extendLease"] = json!(true);
    c.update(hb).await;
    let mut failed = result(&t, "FAILED");
    failed["logs"] = json!([{"log": "late", "taskId": id, "createdTime": 1}]);
    c.update(failed).await;
    // no status at all: still only the terminal check runs first
    let mut none = result(&t, "FAILED");
    none.as_object_mut().unwrap().remove("status");
    assert_eq!(c.update(none).await.0, 200);
    let stored = c.get_task(&id).await;
    assert_eq!(stored, completed, "unchanged, updateTime included");
    assert_eq!(stored["outputData"], json!({"progress": 100}));
    // the heartbeat is ignored silently (WorkflowExecutorOps.java:1152), not counted
    assert_eq!(emu.conflicts(), 3, "task_update_conflict");
    assert!(
        emu.logs(&id).is_empty(),
        "logs of ignored updates are dropped"
    );
    assert!(c.poll("encode", "w1").await.is_empty());

    // update-v2 hands out the next task after an ignored update too: the stored task it
    // returns is terminal
    let next = emu.start_task(TaskSpec::new("encode"));
    let resp = c.update_v2(result(&t, "IN_PROGRESS")).await;
    assert_eq!(resp.status(), 200);
    let handed: Value = resp.json().await.unwrap();
    assert_eq!(handed["taskId"], json!(next));
}

#[tokio::test]
async fn stale_writer_overwrites_completed_with_what_it_read_before() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);
    let mut done = result(&t, "COMPLETED");
    done["outputData"] = json!({"progress": 100});
    c.update(done).await;
    emu.set_stale_writer(true);
    // a heartbeat that read the task while it ran writes it back as it was
    let mut hb = result(&t, "IN_PROGRESS");
    hb["extendLease"] = json!(true);
    assert_eq!(c.update(hb).await.0, 200);
    let stored = c.get_task(&id).await;
    assert_eq!(stored["status"], "IN_PROGRESS", "conductor-oss#176 shape");
    assert_eq!(stored["outputData"], json!({}), "the output it read");
    assert_eq!(stored["endTime"], 0);

    // a late worker IN_PROGRESS update is applied as to the running task: SCHEDULED, requeued
    c.update(result(&t, "COMPLETED")).await;
    let mut late = result(&t, "IN_PROGRESS");
    late["outputData"] = json!({"progress": 60});
    late["callbackAfterSeconds"] = json!(0);
    assert_eq!(c.update(late).await.0, 200);
    let stored = c.get_task(&id).await;
    assert_eq!(stored["status"], "SCHEDULED");
    assert_eq!(stored["outputData"], json!({"progress": 60}));
    assert_eq!(c.poll("encode", "w2").await.len(), 1, "requeued");
    assert_eq!(emu.stale_writes(), 2);
    assert_eq!(emu.conflicts(), 0);
    assert_eq!(
        emu.history(&id),
        [
            "SCHEDULED",
            "IN_PROGRESS",
            "COMPLETED",
            "IN_PROGRESS",
            "COMPLETED",
            "SCHEDULED",
            "IN_PROGRESS"
        ]
    );
}

#[tokio::test]
async fn lost_completion_is_answered_but_not_applied() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);
    emu.lose_next_completion();
    // a progress update is not a completion: applied
    let mut r = result(&t, "IN_PROGRESS");
    r["outputData"] = json!({"progress": 50});
    c.update(r).await;
    assert_eq!(c.get_task(&id).await["status"], "SCHEDULED");
    let t = c.poll("encode", "w1").await.remove(0);
    assert_eq!(c.update(result(&t, "COMPLETED")).await, (200, id.clone()));
    assert_eq!(c.get_task(&id).await["status"], "IN_PROGRESS", "lost");
    assert_eq!(emu.lost_completions().len(), 1);
    // the switch is one-shot: a re-post applies
    c.update(result(&t, "COMPLETED")).await;
    assert_eq!(c.get_task(&id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn update_v2_answers_the_next_task_after_a_terminal_update() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let first = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);
    let second = emu.start_task(TaskSpec::new("encode"));

    // IN_PROGRESS via v2: nothing (204)
    let mut r = result(&t, "IN_PROGRESS");
    r["callbackAfterSeconds"] = json!(60);
    assert_eq!(c.update_v2(r).await.status(), 204);
    assert_eq!(c.get_task(&first).await["status"], "SCHEDULED");

    // terminal via v2: the next due task of the type, polled for the updating worker
    let resp = c.update_v2(result(&t, "COMPLETED")).await;
    assert_eq!(resp.status(), 200);
    let next: Value = resp.json().await.unwrap();
    assert_eq!(next["taskId"], json!(second));
    assert_eq!(next["status"], "IN_PROGRESS");
    assert_eq!(next["workerId"], "w1");
    let resp = c.update_v2(result(&next, "COMPLETED")).await;
    assert_eq!(resp.status(), 204, "nothing left");
    // the first task was completed even though it was SCHEDULED (requeued) at the time
    assert_eq!(c.get_task(&first).await["status"], "COMPLETED");

    emu.disable_update_v2();
    assert_eq!(c.update_v2(result(&t, "COMPLETED")).await.status(), 404);
}

#[tokio::test]
async fn bad_updates_faults_and_the_recorder() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    let id = emu.start_task(TaskSpec::new("encode"));
    let t = c.poll("encode", "w1").await.remove(0);

    // no workflowInstanceId: a constraint violation, 400 (a 500 through update-v2's @Valid)
    let no_wf = json!({"taskId": id, "status": "COMPLETED"});
    assert_eq!(c.update(no_wf.clone()).await.0, 400);
    assert_eq!(c.update_v2(no_wf).await.status(), 500);
    // not a TaskResult status, or not JSON: Jackson cannot read it, 500
    assert_eq!(c.update(result(&t, "SCHEDULED")).await.0, 500);
    let resp = c
        .http
        .post(format!("{}/tasks", c.base))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    // no status for a running task: the engine's NullPointerException, 500
    let mut no_status = result(&t, "COMPLETED");
    no_status.as_object_mut().unwrap().remove("status");
    assert_eq!(c.update(no_status).await.0, 500);
    let mut unknown = result(&t, "COMPLETED");
    unknown["taskId"] = json!("nope");
    assert_eq!(c.update(unknown).await.0, 404);
    assert_eq!(c.get_task(&id).await["status"], "IN_PROGRESS");

    emu.fail_with(503);
    assert_eq!(c.update(result(&t, "COMPLETED")).await.0, 503);
    assert_eq!(c.update_v2(result(&t, "COMPLETED")).await.status(), 503);
    emu.heal();
    emu.delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let mut r = result(&t, "COMPLETED");
    r["logs"] = json!([{"log": "done", "taskId": id, "createdTime": 1}]);
    assert_eq!(c.update(r).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    emu.heal();
    assert_eq!(c.get_task(&id).await["status"], "COMPLETED");
    assert_eq!(emu.logs(&id).len(), 1);

    let resp = c
        .http
        .get(format!("{}/tasks/nope", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = c
        .http
        .put(format!("{}/workflow/decide/wf-9", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.decides(), ["wf-9"]);

    let reqs = emu.requests();
    assert!(reqs[0].is_poll());
    assert_eq!(reqs[0].query, "workerid=w1&count=5&timeout=0");
    let updates = emu.updates_for(&id);
    assert_eq!(updates.len(), 7, "every update is recorded, applied or not");
    assert_eq!(updates[0]["status"], "COMPLETED");
    assert_eq!(reqs.last().unwrap().method, "PUT");
}

#[tokio::test]
async fn queue_verbose_counts_queued_and_unacked() {
    let emu = Emulator::start().await;
    let c = Client::new(&emu);
    emu.start_task(TaskSpec::new("encode"));
    emu.start_task(TaskSpec::new("encode"));
    emu.start_task(TaskSpec::new("transcode"));
    c.poll("transcode", "w1").await;
    let v: Value = c
        .http
        .get(format!("{}/tasks/queue/all/verbose", c.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({
            "encode": {"a": {"size": 2, "uacked": 0}},
            "transcode": {"a": {"size": 0, "uacked": 1}},
        })
    );
}
