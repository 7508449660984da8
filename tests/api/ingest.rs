//! Ingest over HTTP (`docs/contract.md` §2): body formats, Conductor aliases, per-item rejections, hostile
//! bodies, stale and duplicate updates, auth and the ingest counters, on both stores.

use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::settings::Secret;

use crate::helpers::{update, Backend, TestApp, TestDb};
use crate::store_test;

/// `base` with the fields of `extra` set (replacing what was there).
fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("extra is an object") {
        base[k] = v.clone();
    }
    base
}

/// `base` without `key`.
fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().expect("an object").remove(key);
    base
}

/// Asserts the three counts of an ingest answer.
#[track_caller]
fn assert_counts(r: &Value, accepted: u64, duplicates: u64, rejected: usize) {
    assert_eq!(r["accepted"], accepted, "accepted: {r}");
    assert_eq!(r["duplicates"], duplicates, "duplicates: {r}");
    assert_eq!(
        r["rejected"].as_array().map(Vec::len),
        Some(rejected),
        "rejected: {r}"
    );
}

/// The rejection for item `index`, failing the test when there is none.
#[track_caller]
fn rejection(r: &Value, index: usize) -> &Value {
    r["rejected"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["index"] == index))
        .unwrap_or_else(|| panic!("no rejection for item {index}: {r}"))
}

/// Sends raw bytes and returns the status and the body (JSON when it parses, else a string).
async fn send(app: &TestApp, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    let resp = app.post_raw(body, content_type).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Posts a body over a raw connection, reading the answer while the body is still being
/// written. A server may answer 413 and close before reading a too-large body to its end; an
/// HTTP client library then reports the broken pipe of its body write, not the answer.
async fn send_oversized(app: &TestApp, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /api/v1/updates HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        body.len()
    );
    let writer = tokio::spawn(async move {
        // the server may stop reading; a failed write is expected then
        if wr.write_all(head.as_bytes()).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut buf))
            .await
            .expect("an answer within 10s")
            .unwrap_or(0);
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status line in {head:?}"));
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(usize::MAX);
            if rest.len() >= length || n == 0 {
                break (status, rest.to_string());
            }
        } else {
            assert!(n > 0, "connection closed without an answer: {text:?}");
        }
    };
    writer.abort();
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, body)
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure can be reproduced.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A 400 answer that names where parsing stopped.
#[track_caller]
fn assert_line_column(status: u16, body: &Value, what: &str) -> (u64, u64) {
    assert_eq!(status, 400, "{what}: {body}");
    let line = body["line"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no line in {body}"));
    let column = body["column"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no column in {body}"));
    assert!(line >= 1, "{what}: line {line} in {body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("line {line}")),
        "{what}: the message names the line: {body}"
    );
    (line, column)
}

async fn object_array_and_ndjson_bodies_are_accepted_and_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let r = app.ingest(&update("fmt-obj", "IN_PROGRESS")).await;
    assert_counts(&r, 1, 0, 0);

    // an array; its third item repeats the first one exactly
    let r = app
        .ingest(&json!([
            update("fmt-arr-1", "SCHEDULED"),
            update("fmt-arr-2", "IN_PROGRESS"),
            update("fmt-arr-1", "SCHEDULED"),
        ]))
        .await;
    assert_counts(&r, 2, 1, 0);

    // NDJSON, with a CRLF line end and a blank line
    let body = format!(
        "{}\n{}\r\n\n{}\n",
        update("fmt-nd-1", "SCHEDULED"),
        update("fmt-nd-2", "IN_PROGRESS"),
        update("fmt-nd-3", "COMPLETED"),
    );
    let (status, r) = send(&app, body.into_bytes(), "application/x-ndjson").await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 3, 0, 0);

    // NDJSON with a charset parameter
    let body = format!("{}\n", update("fmt-nd-4", "IN_PROGRESS"));
    let (status, r) = send(
        &app,
        body.into_bytes(),
        "application/x-ndjson; charset=utf-8",
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 1, 0, 0);

    // the same object again is a duplicate
    let r = app.ingest(&update("fmt-obj", "IN_PROGRESS")).await;
    assert_counts(&r, 0, 1, 0);

    app.settle().await;
    for (id, status) in [
        ("fmt-obj", "IN_PROGRESS"),
        ("fmt-arr-1", "SCHEDULED"),
        ("fmt-arr-2", "IN_PROGRESS"),
        ("fmt-nd-1", "SCHEDULED"),
        ("fmt-nd-2", "IN_PROGRESS"),
        ("fmt-nd-3", "COMPLETED"),
        ("fmt-nd-4", "IN_PROGRESS"),
    ] {
        let rec = app
            .stored(id)
            .await
            .unwrap_or_else(|| panic!("{id} is stored"));
        assert_eq!(rec.status.as_str(), status, "{id}");
        assert_eq!(&*rec.workflow_id, format!("wf-{id}"), "{id}");
        assert_eq!(&*rec.task_type, "encode", "{id}");
        assert_eq!(rec.workflow_type.as_deref(), Some("media"), "{id}");
        assert_eq!(app.task(id).await["status"], status, "{id} in memory");
    }
}
store_test!(object_array_and_ndjson_bodies_are_accepted_and_stored);

async fn conductor_aliases_are_read(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let now = taskpulse::now_ms();
    let r = app
        .ingest(&json!([
            {"taskId": "alias-1", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "workflowType": "media", "status": "IN_PROGRESS", "updateTime": now,
             "outputData": {"progressPercent": 42.5, "progressMessage": "chunk 3/7",
                            "unrelated": {"deep": [1, 2, {"x": null}]}}},
            {"taskId": "alias-2", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "status": "IN_PROGRESS", "outputData": {"progress": 37}},
            {"taskId": "alias-3", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "status": "IN_PROGRESS", "outputData": {"progress": "n/a"}},
            {"taskId": "alias-4", "workflowInstanceId": "wf-alias", "taskDefName": "transcode",
             "status": "IN_PROGRESS", "outputData": {"progress": {"done": 3, "of": 7}}},
            // a full Conductor Task JSON: many fields taskpulse doesn't use
            {"taskType": "transcode", "status": "IN_PROGRESS", "inputData": {"file": "a.mov"},
             "referenceTaskName": "transcode_ref", "retryCount": 0, "seq": 2, "pollCount": 1,
             "taskDefName": "transcode", "scheduledTime": now - 5_000, "startTime": now - 4_000,
             "endTime": 0, "updateTime": now, "startDelayInSeconds": 0, "retried": false,
             "executed": false, "callbackFromWorker": true, "responseTimeoutSeconds": 3600,
             "workflowInstanceId": "wf-alias", "workflowType": "media", "taskId": "alias-full",
             "callbackAfterSeconds": 0, "workerId": "host-2", "outputData": {"progress": 12},
             "taskDefinition": {"name": "transcode", "timeoutSeconds": 7200, "retryCount": 3},
             "workflowPriority": 0, "iteration": 0, "subworkflowChanged": false,
             "loopOverTask": false, "queueWaitTime": 1000, "taskStatus": "IN_PROGRESS",
             "domain": null, "reasonForIncompletion": null, "externalInputPayloadStoragePath": null},
            // Conductor's own Task JSON: taskType and taskDefName, workflowInstanceId only
            {"taskId": "alias-wait", "workflowInstanceId": "wf-alias", "taskType": "WAIT",
             "taskDefName": "wait_ref", "status": "IN_PROGRESS", "waitTimeout": now + 60_000},
        ]))
        .await;
    assert_counts(&r, 6, 0, 0);

    let t = app.task("alias-full").await;
    assert_eq!(t["workflowId"], "wf-alias", "{t}");
    assert_eq!(t["taskType"], "transcode", "{t}");
    assert_eq!(t["progressPercent"], 12.0, "{t}");
    assert_eq!(t["workerId"], "host-2", "{t}");
    assert_eq!(t["referenceTaskName"], "transcode_ref", "{t}");
    assert_eq!(t["seq"], 2, "{t}");
    assert_eq!(t["startTime"], now - 4_000, "{t}");
    assert_eq!(t["responseTimeoutSeconds"], 3600, "{t}");
    let t = app.task("alias-1").await;
    assert_eq!(t["workflowId"], "wf-alias", "{t}");
    assert_eq!(t["taskType"], "transcode", "{t}");
    assert_eq!(t["progressPercent"], 42.5, "{t}");
    assert_eq!(t["progressMessage"], "chunk 3/7", "{t}");
    let t = app.task("alias-2").await;
    assert_eq!(
        t["progressPercent"], 37.0,
        "outputData.progress as a number: {t}"
    );
    for id in ["alias-3", "alias-4"] {
        let t = app.task(id).await;
        assert!(
            t["progressPercent"].is_null(),
            "a non-number outputData.progress is ignored: {t}"
        );
    }
    let t = app.task("alias-wait").await;
    assert_eq!(t["taskType"], "WAIT", "{t}");
    assert_eq!(
        t["waitUntil"],
        now + 60_000,
        "waitTimeout is waitUntil: {t}"
    );

    app.settle().await;
    let rec = app.stored("alias-1").await.expect("stored");
    assert_eq!(&*rec.workflow_id, "wf-alias");
    assert_eq!(&*rec.task_type, "transcode");
    assert_eq!(rec.progress, Some(42.5));
    assert_eq!(rec.progress_message.as_deref(), Some("chunk 3/7"));
    assert_eq!(rec.update_time, Some(now));
    assert_eq!(app.stored("alias-2").await.unwrap().progress, Some(37.0));
    assert_eq!(app.stored("alias-3").await.unwrap().progress, None);
    let rec = app.stored("alias-wait").await.expect("stored");
    assert_eq!(&*rec.task_type, "WAIT");
    assert_eq!(rec.wait_until, Some(now + 60_000));
}
store_test!(conductor_aliases_are_read);

async fn bad_items_are_rejected_one_by_one_and_good_ones_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let r = app
        .ingest(&json!([
            update("rej-good-1", "IN_PROGRESS"),
            with(
                update("rej-type", "IN_PROGRESS"),
                json!({"progressPercent": "50"})
            ),
            with(update("rej-worker", "IN_PROGRESS"), json!({"workerId": 7})),
            with(
                update("rej-time", "IN_PROGRESS"),
                json!({"updateTime": "yesterday"})
            ),
            with(
                update("rej-high", "IN_PROGRESS"),
                json!({"progressPercent": 150})
            ),
            with(
                update("rej-low", "IN_PROGRESS"),
                json!({"outputData": {"progressPercent": -1}})
            ),
            without(update("rej-noid", "IN_PROGRESS"), "taskId"),
            without(update("rej-nowf", "IN_PROGRESS"), "workflowId"),
            with(
                update("rej-status", "IN_PROGRESS"),
                json!({"status": "RUNNING"})
            ),
            without(update("rej-notype", "IN_PROGRESS"), "taskType"),
            update("rej-good-2", "SCHEDULED"),
        ]))
        .await;
    assert_counts(&r, 2, 0, 9);
    let expect: &[(usize, Option<&str>, &[&str])] = &[
        (1, Some("rej-type"), &["progressPercent"]),
        (2, Some("rej-worker"), &["workerId"]),
        (3, Some("rej-time"), &["updateTime"]),
        (4, Some("rej-high"), &["progressPercent", "150"]),
        (5, Some("rej-low"), &["progressPercent", "-1"]),
        (6, None, &["taskId"]),
        (7, Some("rej-nowf"), &["workflowId"]),
        (8, Some("rej-status"), &["status", "RUNNING"]),
        (9, Some("rej-notype"), &["taskType"]),
    ];
    for (index, task_id, words) in expect {
        let rej = rejection(&r, *index);
        match task_id {
            Some(id) => assert_eq!(rej["taskId"], *id, "{rej}"),
            None => assert!(rej["taskId"].is_null(), "{rej}"),
        }
        let reason = rej["reason"].as_str().expect("reason is a string");
        for w in *words {
            assert!(
                reason.contains(w),
                "item {index}: reason {reason:?} names {w}"
            );
        }
    }

    app.settle().await;
    assert_eq!(
        app.stored("rej-good-1")
            .await
            .expect("stored")
            .status
            .as_str(),
        "IN_PROGRESS"
    );
    assert_eq!(
        app.stored("rej-good-2")
            .await
            .expect("stored")
            .status
            .as_str(),
        "SCHEDULED"
    );
    for id in [
        "rej-type",
        "rej-worker",
        "rej-time",
        "rej-high",
        "rej-low",
        "rej-nowf",
        "rej-status",
        "rej-notype",
    ] {
        assert!(app.stored(id).await.is_none(), "{id} must not be stored");
        let resp = app.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(resp.status(), 404, "{id} must not be tracked");
    }

    // taskType is only needed the first time a task is seen
    let r = app
        .ingest(&json!([
            update("rej-notype", "IN_PROGRESS"),
            with(
                without(update("rej-good-1", "IN_PROGRESS"), "taskType"),
                json!({"progressPercent": 10})
            ),
        ]))
        .await;
    assert_counts(&r, 2, 0, 0);
    assert_eq!(app.task("rej-good-1").await["progressPercent"], 10.0);
    assert_eq!(app.task("rej-good-1").await["taskType"], "encode");
}
store_test!(bad_items_are_rejected_one_by_one_and_good_ones_stored);

async fn hostile_bodies_leave_the_process_and_accepted_tasks_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keep = with(
        update("keep-1", "IN_PROGRESS"),
        json!({"progressPercent": 40, "progressMessage": "keep me", "updateTime": 1_000,
               "workerId": "worker-keep"}),
    );
    assert_counts(&app.ingest(&keep).await, 1, 0, 0);
    app.settle().await;
    let before_mem = app.task("keep-1").await;
    let before_rec = app.stored("keep-1").await.expect("stored");
    let before_version = app.stored_version("keep-1").await;
    const JSON: &str = "application/json";
    const NDJSON: &str = "application/x-ndjson";

    // invalid UTF-8, inside a string and as the whole body
    let (status, body) = send(
        &app,
        b"{\"taskId\":\"keep-1\",\"workflowId\":\"\xff\xfe\",\"status\":\"COMPLETED\"}".to_vec(),
        JSON,
    )
    .await;
    assert_line_column(status, &body, "invalid UTF-8 in a string");
    let (status, body) = send(&app, vec![0xff, 0xfe, 0x80, 0xc3], JSON).await;
    assert_line_column(status, &body, "invalid UTF-8 body");
    let (status, body) = send(&app, vec![0xff, 0xfe, b'\n', 0x80], NDJSON).await;
    assert_line_column(status, &body, "invalid UTF-8 NDJSON");

    // 10 MB of garbage: too large for the default 8MiB limit
    let (status, body) = send_oversized(&app, garbage(10_000_000, 1), JSON).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = send_oversized(&app, garbage(10_000_000, 2), NDJSON).await;
    assert_eq!(status, 413, "{body}");

    // garbage just under the limit: read, then refused with a position
    let limit = 8 * 1024 * 1024;
    let mut junk = garbage(limit - 1, 3);
    junk[0] = b'#';
    let (status, body) = send(&app, junk, JSON).await;
    let (line, column) = assert_line_column(status, &body, "garbage under the limit");
    assert_eq!((line, column), (1, 1), "{body}");
    // a long valid prefix, garbage at the end: the position points at the garbage
    let item = update("never-stored", "SCHEDULED").to_string();
    let mut text = String::from("[\n");
    while text.len() < limit - 10_000 {
        text.push_str(&item);
        text.push_str(",\n");
    }
    let lines = text.lines().count() as u64;
    text.push_str("  @@@");
    let (status, body) = send(&app, text.into_bytes(), JSON).await;
    let (line, column) = assert_line_column(status, &body, "garbage after a valid prefix");
    assert_eq!((line, column), (lines + 1, 3), "{body}");
    assert!(app.stored("never-stored").await.is_none());

    // 100k nested arrays, and 100k nested objects: refused or rejected, never a crash
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = send(&app, deep.into_bytes(), JSON).await;
    match status {
        400 => {
            assert!(body["line"].is_u64() && body["column"].is_u64(), "{body}");
        }
        200 => assert_counts(&body, 0, 0, 1),
        other => panic!("deep arrays answered {other}: {body}"),
    }
    let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let (status, body) = send(&app, deep.into_bytes(), JSON).await;
    match status {
        400 => assert!(body["line"].is_u64(), "{body}"),
        200 => assert_counts(&body, 0, 0, 1),
        other => panic!("deep objects answered {other}: {body}"),
    }
    // deep junk inside outputData of a real update for keep-1: skipped, the update is judged
    // on its own (stale here, so nothing changes)
    let deep_output = format!(
        "{{\"taskId\":\"keep-1\",\"workflowId\":\"wf-keep-1\",\"status\":\"COMPLETED\",\"updateTime\":500,\"outputData\":{{\"x\":{}{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, body) = send(&app, deep_output.into_bytes(), JSON).await;
    assert_eq!(status, 200, "{body}");
    assert_counts(&body, 0, 0, 1);
    assert_eq!(rejection(&body, 0)["reason"], "stale", "{body}");

    // empty bodies, bare values
    for (what, bytes, ct) in [
        ("empty body", &b""[..], JSON),
        ("whitespace body", &b"  \n\t "[..], JSON),
        ("empty NDJSON", &b"\n\n"[..], NDJSON),
        ("bare number", &b"42"[..], JSON),
        ("bare string", &b"\"hello\""[..], JSON),
        ("null", &b"null"[..], JSON),
        (
            "not JSON at all",
            &b"taskId=keep-1&status=COMPLETED"[..],
            JSON,
        ),
    ] {
        let (status, body) = send(&app, bytes.to_vec(), ct).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body["line"].is_u64() && body["column"].is_u64(),
            "{what}: {body}"
        );
        assert!(body["error"].is_string(), "{what}: {body}");
    }
    // an array of things that are not objects: each one rejected
    let r = app.ingest(&json!([1, "x", null, [], true])).await;
    assert_counts(&r, 0, 0, 5);

    // NDJSON with one broken line among good ones: the good ones are kept
    let body = format!(
        "{}\n{}\n{{\"taskId\":\"nd-broken\",\"workflowId\n{}\n",
        update("nd-good-1", "SCHEDULED"),
        update("nd-good-2", "IN_PROGRESS"),
        update("nd-good-3", "IN_PROGRESS"),
    );
    let (status, r) = send(&app, body.into_bytes(), NDJSON).await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 3, 0, 1);
    let reason = rejection(&r, 2)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("line 3"), "{reason}");

    // still up, and keep-1 untouched in memory and in the store
    let resp = app.get("/healthz").await;
    assert_eq!(resp.status(), 200);
    app.settle().await;
    for id in ["nd-good-1", "nd-good-2", "nd-good-3"] {
        assert!(app.stored(id).await.is_some(), "{id} is stored");
    }
    assert!(app.stored("nd-broken").await.is_none());
    let mut after_mem = app.task("keep-1").await;
    // the one stale attempt above is recorded in the history; everything else is the same
    let history = after_mem["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(history[0]["outcome"], "rejected", "{after_mem}");
    assert_eq!(history[0]["reason"], "stale", "{after_mem}");
    after_mem["history"] = json!(history[1..]);
    assert_eq!(after_mem, before_mem);
    assert_eq!(app.stored("keep-1").await.expect("stored"), before_rec);
    assert_eq!(app.stored_version("keep-1").await, before_version);
}
store_test!(hostile_bodies_leave_the_process_and_accepted_tasks_alone);

/// Pure HTTP: the position of the first error is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_gets_400_with_line_and_column() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let cases: &[(&[u8], &str, (u64, u64))] = &[
        (
            b"{\n  \"taskId\": \"a\",\n  oops\n}",
            "application/json",
            (3, 3),
        ),
        (
            b"[\n  {\"taskId\": \"a\"},\n  {\"taskId\": }\n]",
            "application/json",
            (3, 14),
        ),
        (b"hello", "application/json", (1, 1)),
        (b"not json\nstill not\n", "application/x-ndjson", (1, 2)),
    ];
    for (body, ct, want) in cases {
        let (status, r) = send(&app, body.to_vec(), ct).await;
        let got = assert_line_column(status, &r, &String::from_utf8_lossy(body));
        assert_eq!(got, *want, "{r}");
        let msg = r["error"].as_str().unwrap();
        assert!(
            msg.contains(&format!("line {} column {}", want.0, want.1)),
            "{msg}"
        );
    }
    // two objects on two lines sent as JSON: the answer points at NDJSON
    let body = format!("{}\n{}", update("a", "SCHEDULED"), update("b", "SCHEDULED"));
    let (status, r) = send(&app, body.into_bytes(), "application/json").await;
    let (line, _) = assert_line_column(status, &r, "two objects");
    assert_eq!(line, 2, "{r}");
    assert!(r["error"].as_str().unwrap().contains("x-ndjson"), "{r}");
}

async fn an_update_older_than_the_stored_one_is_stale(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.throttle.progress_min_interval = Duration::from_millis(200);
    })
    .await;
    let at = |t: i64, extra: Value| {
        with(
            update("stale-1", "IN_PROGRESS"),
            with(json!({"updateTime": t}), extra),
        )
    };
    assert_counts(
        &app.ingest(&at(2_000, json!({"progressPercent": 10}))).await,
        1,
        0,
        0,
    );

    let r = app.ingest(&at(1_000, json!({"progressPercent": 20}))).await;
    assert_counts(&r, 0, 0, 1);
    assert_eq!(rejection(&r, 0)["reason"], "stale", "{r}");
    assert_eq!(rejection(&r, 0)["taskId"], "stale-1", "{r}");
    let r = app
        .ingest(&at(
            1_500,
            json!({"status": "COMPLETED", "progressPercent": 100}),
        ))
        .await;
    assert_counts(&r, 0, 0, 1);
    assert_eq!(rejection(&r, 0)["reason"], "stale", "{r}");
    let t = app.task("stale-1").await;
    assert_eq!(t["status"], "IN_PROGRESS", "{t}");
    assert_eq!(t["progressPercent"], 10.0, "{t}");
    assert_eq!(t["updateTime"], 2_000, "{t}");

    // an equal updateTime is not stale: progress, then a status change
    let r = app.ingest(&at(2_000, json!({"progressPercent": 30}))).await;
    assert_counts(&r, 1, 0, 0);
    assert_eq!(app.task("stale-1").await["progressPercent"], 30.0);
    let r = app.ingest(&at(2_000, json!({"status": "SCHEDULED"}))).await;
    assert_counts(&r, 1, 0, 0);
    assert_eq!(app.task("stale-1").await["status"], "SCHEDULED");

    // the status change is written like progress: within one throttle interval
    app.settle_throttled().await;
    let rec = app.stored("stale-1").await.expect("stored");
    assert_eq!(rec.status.as_str(), "SCHEDULED");
    assert_eq!(rec.update_time, Some(2_000));
    assert_eq!(rec.progress, Some(30.0));
    let history = app.task("stale-1").await["history"].clone();
    let stale: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "rejected")
        .collect();
    // rejections within one interval share a history line that counts them
    let counted: u64 = stale.iter().map(|e| e["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(counted, 2, "{history}");
    assert!(stale.iter().all(|e| e["reason"] == "stale"), "{history}");
}
store_test!(an_update_older_than_the_stored_one_is_stale);

async fn identical_repeats_are_duplicates_not_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let running = with(
        update("dup-1", "IN_PROGRESS"),
        json!({"progressPercent": 50, "progressMessage": "half", "workerId": "w-1",
               "updateTime": 1_000, "retryCount": 0}),
    );
    assert_counts(&app.ingest(&running).await, 1, 0, 0);
    assert_counts(&app.ingest(&running).await, 0, 1, 0);
    assert_counts(
        &app.ingest(&json!([running.clone(), running.clone()])).await,
        0,
        2,
        0,
    );
    app.settle().await;
    let version = app.stored_version("dup-1").await;

    let done = with(
        update("dup-1", "COMPLETED"),
        json!({"progressPercent": 100, "updateTime": 2_000, "workerId": "w-1"}),
    );
    assert_counts(&app.ingest(&done).await, 1, 0, 0);
    app.settle().await;
    let done_version = app.stored_version("dup-1").await;
    assert!(done_version > version);
    for _ in 0..3 {
        assert_counts(&app.ingest(&done).await, 0, 1, 0);
    }
    app.settle().await;
    assert_eq!(
        app.stored_version("dup-1").await,
        done_version,
        "duplicates are not written"
    );
    let rec = app.stored("dup-1").await.expect("stored");
    assert_eq!(rec.status.as_str(), "COMPLETED");
    assert_eq!(rec.progress, Some(100.0));
    let rejected = app
        .metric_value(
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "COMPLETED")],
        )
        .await;
    assert!(
        rejected.is_none() || rejected == Some(0.0),
        "a duplicate is not a rejected transition: {rejected:?}"
    );
    let history = app.task("dup-1").await["history"].clone();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "accepted"),
        "{history}"
    );
}
store_test!(identical_repeats_are_duplicates_not_errors);

async fn the_api_needs_the_bearer_token_when_one_is_set(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.auth_token = Some(Secret("s3cret-token".into()));
    })
    .await;
    let body = update("auth-1", "IN_PROGRESS");
    let post = |auth: Option<&'static str>| {
        let mut req = app.client.post(app.url("/api/v1/updates")).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-token-and-more"),
        Some("Bearer s3cret-toke"),
        Some("Bearer "),
        Some("s3cret-token"),
        Some("Basic czNjcmV0LXRva2Vu"),
    ] {
        let resp = post(bad).await.expect("request sent");
        assert_eq!(resp.status(), 401, "POST with {bad:?}");
        assert!(
            resp.headers().contains_key("www-authenticate"),
            "401 says how to authenticate"
        );
    }
    // nothing of the refused requests was applied
    app.settle().await;
    assert!(app.stored("auth-1").await.is_none());

    let get = |path: &str, auth: Option<&'static str>| {
        let mut req = app.client.get(app.url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for path in ["/api/v1/tasks", "/api/v1/tasks/auth-1"] {
        for bad in [None, Some("Bearer wrong")] {
            let resp = get(path, bad).await.expect("request sent");
            assert_eq!(resp.status(), 401, "GET {path} with {bad:?}");
        }
    }

    let resp = post(Some("Bearer s3cret-token"))
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert_counts(&r, 1, 0, 0);
    let resp = get("/api/v1/tasks", Some("Bearer s3cret-token"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["count"], 1, "{list}");
    let resp = get("/api/v1/tasks/auth-1", Some("Bearer s3cret-token"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // the sidecar's own health and metrics need no token
    for path in ["/metrics", "/healthz", "/readyz"] {
        let resp = get(path, None).await.expect("request sent");
        assert_eq!(resp.status(), 200, "{path}");
    }
    // the refused requests were not counted as ingested updates
    let scrape = app.scrape().await;
    let count = |outcome| {
        crate::helpers::metric_value(
            &scrape,
            "taskpulse_updates_total",
            &[("source", "api"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("accepted"), Some(1.0));
    assert_eq!(count("rejected"), Some(0.0));
}
store_test!(the_api_needs_the_bearer_token_when_one_is_set);

async fn updates_total_counts_every_outcome(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let counts = |scrape: &prometheus_parse::Scrape| -> [Option<f64>; 3] {
        ["accepted", "duplicate", "rejected"].map(|outcome| {
            crate::helpers::metric_value(
                scrape,
                "taskpulse_updates_total",
                &[("source", "api"), ("outcome", outcome)],
            )
        })
    };
    // the series exist before anything is sent
    assert_eq!(counts(&app.scrape().await), [Some(0.0); 3]);

    let a = with(update("cnt-a", "IN_PROGRESS"), json!({"updateTime": 1_000}));
    // 2 accepted, 1 duplicate, 2 rejected
    let r = app
        .ingest(&json!([
            a.clone(),
            update("cnt-b", "IN_PROGRESS"),
            a.clone(),
            with(
                update("cnt-c", "IN_PROGRESS"),
                json!({"progressPercent": 101})
            ),
            without(update("cnt-d", "IN_PROGRESS"), "taskType"),
        ]))
        .await;
    assert_counts(&r, 2, 1, 2);
    // NDJSON: 1 accepted, 2 rejected (stale, broken line)
    let body = format!(
        "{}\n{}\n{{broken\n",
        with(a.clone(), json!({"updateTime": 500, "progressPercent": 5})),
        update("cnt-b", "COMPLETED"),
    );
    let (status, r) = send(&app, body.into_bytes(), "application/x-ndjson").await;
    assert_eq!(status, 200, "{r}");
    assert_counts(&r, 1, 0, 2);
    // 1 rejected (terminal), 1 duplicate
    let r = app
        .ingest(&json!([
            update("cnt-b", "IN_PROGRESS"),
            update("cnt-b", "COMPLETED"),
        ]))
        .await;
    assert_counts(&r, 0, 1, 1);
    // a body that is not JSON carries no updates to count
    let (status, _) = send(&app, b"{nope".to_vec(), "application/json").await;
    assert_eq!(status, 400);

    let scrape = app.scrape().await;
    assert_eq!(counts(&scrape), [Some(3.0), Some(2.0), Some(5.0)]);
    assert_eq!(
        crate::helpers::metric_value(
            &scrape,
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")],
        ),
        Some(1.0)
    );
}
store_test!(updates_total_counts_every_outcome);

/// An engine that reports each attempt with its own state (Kestra's `attempts[]`), and the
/// task's parent and loop value: kept and shown; a wrong attempt names its field.
#[tokio::test]
async fn reported_attempts_and_loop_fields_are_kept() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let mut u = update("looped", "IN_PROGRESS");
    u["retryCount"] = json!(1);
    u["workerId"] = json!("w-b");
    u["parentTaskId"] = json!("each-region");
    u["iterationValue"] = json!("eu-west\u{7}");
    u["attempts"] = json!([
        {"attempt": 0, "workerId": "w-a", "status": "FAILED", "startTime": 1000, "endTime": 2000},
        {"attempt": 1, "workerId": "w-b", "status": "IN_PROGRESS", "startTime": 3000}
    ]);
    let r = app.ingest(&u).await;
    assert_eq!(r["accepted"], 1, "{r}");
    app.settle().await;
    let v = app.task("looped").await;
    assert_eq!(v["parentTaskId"], "each-region");
    assert_eq!(v["iterationValue"], "eu-west", "control characters dropped");
    let a = v["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{v:#}");
    assert_eq!(
        (
            &a[0]["workerId"],
            &a[0]["status"],
            &a[0]["startTime"],
            &a[0]["endTime"]
        ),
        (&json!("w-a"), &json!("FAILED"), &json!(1000), &json!(2000))
    );
    assert_eq!(
        (&a[1]["workerId"], &a[1]["status"]),
        (&json!("w-b"), &json!("IN_PROGRESS"))
    );
    assert!(a[1].get("endTime").is_none());
    // kept in the store: a restart shows the same
    let stored = app.stored("looped").await.unwrap();
    assert_eq!(stored.parent_task_id.as_deref(), Some("each-region"));

    for (attempts, named) in [
        (
            json!([{"attempt": 0, "status": "FAILED"}]),
            "attempts[0].workerId",
        ),
        (
            json!([{"attempt": 0, "workerId": "w", "status": "BROKEN"}]),
            "attempts[0].status",
        ),
        (
            json!([{"attempt": -1, "workerId": "w"}]),
            "attempts[0].attempt",
        ),
    ] {
        let mut bad = update("bad-attempt", "IN_PROGRESS");
        bad["attempts"] = attempts;
        let resp = app.post_updates(&bad).await;
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body.to_string().contains(named), "{named}: {body}");
    }
    app.shutdown().await;
}
