//! Bodies that are not JSON, too large or garbage: answered, and nothing else harmed.

use super::*;

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
