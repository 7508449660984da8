//! The auth token: never in the logs; and the worker proxy, which records only what the engine
//! accepted and, with a token set, only what an authenticated caller sent.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{eventually, serve};
use crate::conductor::{Emulator, TaskSpec};
use crate::helpers::{binary, update};
use crate::process::Server;

/// The token, from a file, never reaches the logs, even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_token_from_a_file_never_appears_in_logs() {
    const TOKEN: &str = "tok-Zq8v1-never-log-me";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stderr_path = dir.path().join("stderr");
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let child = Command::new(binary())
        .args(["serve", "--listen", &addr.to_string(), "--database", &db])
        .env("TASKPULSE_AUTH_TOKEN_FILE", &token_file)
        .env("TASKPULSE_LOG", "trace")
        .env_remove("TASKPULSE_AUTH_TOKEN")
        .env_remove("TASKPULSE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _guard = Kill(child);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://{addr}/api/v1/updates");
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "taskpulse did not start: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |auth: Option<String>| {
        let mut req = client.post(&url).json(&update("t1", "SCHEDULED"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(
        send(Some(format!("Bearer {TOKEN}x")))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        send(Some(format!("Bearer {TOKEN}")))
            .await
            .unwrap()
            .status(),
        200
    );
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .contains("bye")
    })
    .await;
    let logs = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(logs.contains("DEBUG") || logs.contains("TRACE"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token is in the logs:\n{logs}");
    assert!(!logs.contains("never-log-me"));

    // a bad token file stops start-up with a clear message (and no token)
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--auth-token-file", "/nonexistent/token"])
        .env_remove("TASKPULSE_AUTH_TOKEN")
        .env_remove("TASKPULSE_AUTH_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth-token-file"), "{err}");
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--auth-token", TOKEN])
        .env("TASKPULSE_AUTH_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
}

pub(super) const TOKEN: &str = "s3cret";

/// A worker's lease heartbeat for `id` (as the SDK sends it), with progress and an engine time.
pub(super) fn heartbeat(
    id: &str,
    worker: &str,
    progress: f64,
    update_time: i64,
) -> serde_json::Value {
    json!({"taskId": id, "workflowInstanceId": format!("wf-{id}"), "workerId": worker,
           "status": "IN_PROGRESS", "extendLease": true, "updateTime": update_time,
           "outputData": {"progress": progress}})
}

/// `POST /api/tasks` through the proxy with `headers`: the status.
pub(super) async fn proxied(
    client: &reqwest::Client,
    server: &Server,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> u16 {
    let mut req = client.post(server.url("/api/tasks")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// `GET /api/tasks/poll/batch/encode` through the proxy for `worker`: the status and how many
/// tasks came back.
pub(super) async fn poll(
    client: &reqwest::Client,
    server: &Server,
    worker: &str,
    headers: &[(&str, &str)],
) -> (u16, usize) {
    let mut req = client.get(server.url(&format!(
        "/api/tasks/poll/batch/encode?workerid={worker}&count=1&timeout=100"
    )));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let tasks = r
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    (status, tasks)
}

/// Whether `/metrics` has a progress series for the task.
pub(super) async fn progress_exported(server: &Server, id: &str) -> bool {
    server
        .scrape()
        .await
        .samples
        .iter()
        .any(|s| s.metric == "taskpulse_task_progress_ratio" && s.labels.get("task_id") == Some(id))
}

/// taskpulse's view of a task, read with the token: `None` when it knows nothing of it.
pub(super) async fn view(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
) -> Option<serde_json::Value> {
    let r = client
        .get(server.url(&format!("/api/v1/tasks/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(r.json().await.unwrap()),
        404 => None,
        other => panic!("GET /api/v1/tasks/{id}: {other}"),
    }
}

/// An engine with authentication on (it wants `X-Authorization: engine-jwt`). A caller without
/// credentials or with wrong ones gets the engine's 403, and nothing it said is recorded, even
/// a heartbeat the proxy would otherwise coalesce; the worker with the engine's credentials is
/// recorded, coalesced heartbeats included, and its completion is not made stale by an
/// attacker's far-future time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_records_nothing_the_engine_refused() {
    let emu = Emulator::start().await;
    emu.require_header("x-authorization", "engine-jwt");
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &[
            "--auth-token",
            TOKEN,
            "--conductor-url",
            &emu.url(),
            // the operator says this engine checks credentials (as Orkes Conductor does)
            "--conductor-proxy-trust-engine-auth",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let id = emu.start_task(TaskSpec::new("encode").response_timeout(600));
    const FAR: i64 = 32_503_680_000_000; // the year 3000

    // the worker polls its task through taskpulse with the engine's credentials
    let creds = [("x-authorization", "engine-jwt")];
    assert_eq!(poll(&client, &server, "attacker", &[]).await, (403, 0));
    assert_eq!(poll(&client, &server, "w1", &creds).await, (200, 1));
    let t = view(&client, &server, &id)
        .await
        .expect("the polled task is known");
    assert_eq!(t["workerId"], "w1");

    // the attacker, who read the task id off /metrics
    let evil = heartbeat(&id, "evil", 99.0, FAR);
    assert_eq!(proxied(&client, &server, &evil, &[]).await, 403);
    let wrong = [("x-authorization", "guess")];
    assert_eq!(proxied(&client, &server, &evil, &wrong).await, 403);
    let t = view(&client, &server, &id).await.unwrap();
    assert_eq!(
        (t["progressPercent"].as_f64(), t["workerId"].as_str()),
        (None, Some("w1")),
        "recorded from a refused request: {t:#}"
    );
    assert!(!progress_exported(&server, &id).await);

    // the worker's first heartbeat goes upstream and is recorded
    let now = taskpulse::now_ms();
    assert_eq!(
        proxied(&client, &server, &heartbeat(&id, "w1", 30.0, now), &creds).await,
        200
    );
    let t = view(&client, &server, &id).await.unwrap();
    assert_eq!(
        (t["progressPercent"].as_f64(), t["workerId"].as_str()),
        (Some(30.0), Some("w1"))
    );
    assert!(progress_exported(&server, &id).await);
    let upstream = emu.heartbeats_for(&id).len();

    // a heartbeat now would be coalesced (answered without the engine), but only for the
    // credentials the engine accepted: the attacker's still go upstream and get the 403
    assert_eq!(proxied(&client, &server, &evil, &[]).await, 403);
    assert_eq!(proxied(&client, &server, &evil, &wrong).await, 403);
    let hb = heartbeat(&id, "w1", 40.0, now + 1);
    assert_eq!(proxied(&client, &server, &hb, &creds).await, 200);
    assert_eq!(
        emu.heartbeats_for(&id).len(),
        upstream + 2,
        "the attacker's two went upstream, the worker's was coalesced"
    );
    let t = view(&client, &server, &id).await.unwrap();
    assert_eq!(
        (t["progressPercent"].as_f64(), t["workerId"].as_str()),
        (Some(40.0), Some("w1"))
    );

    // the completion is accepted: nothing the attacker sent moved the task's time
    let mut done = heartbeat(&id, "w1", 100.0, now + 2);
    done["status"] = json!("COMPLETED");
    done["extendLease"] = json!(false);
    assert_eq!(proxied(&client, &server, &done, &creds).await, 200);
    let t = view(&client, &server, &id).await.unwrap();
    assert_eq!(t["status"], "COMPLETED", "{t:#}");
    assert_eq!(emu.task(&id).unwrap().status, "COMPLETED");
}

/// An engine without authentication, taskpulse with a token: the engine takes what it is sent,
/// but only what carried taskpulse's token (`X-Taskpulse-Token` or a bearer token, neither
/// passed upstream) is recorded. `/api/v1/` is never forwarded, and paths with dot segments
/// are refused before they reach the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_the_proxy_records_only_authenticated_callers() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--auth-token", TOKEN, "--conductor-url", &emu.url()],
    )
    .await;
    let client = reqwest::Client::new();
    let a = emu.start_task(TaskSpec::new("encode"));
    let b = emu.start_task(TaskSpec::new("encode"));

    // unauthenticated: the engine answers (and takes it), taskpulse records nothing
    assert_eq!(poll(&client, &server, "w1", &[]).await, (200, 1));
    let now = taskpulse::now_ms();
    assert_eq!(
        proxied(&client, &server, &heartbeat(&a, "w1", 10.0, now), &[]).await,
        200
    );
    assert_eq!(emu.heartbeats_for(&a).len(), 1);
    assert_eq!(view(&client, &server, &a).await, None);
    let mut done = heartbeat(&a, "w1", 100.0, now);
    done["status"] = json!("COMPLETED");
    done["extendLease"] = json!(false);
    assert_eq!(proxied(&client, &server, &done, &[]).await, 200);
    assert_eq!(view(&client, &server, &a).await, None);
    assert!(!progress_exported(&server, &a).await);

    // with taskpulse's token, either way of sending it
    let by_header = [("x-taskpulse-token", TOKEN)];
    assert_eq!(poll(&client, &server, "w2", &by_header).await, (200, 1));
    assert_eq!(view(&client, &server, &b).await.unwrap()["workerId"], "w2");
    let now = taskpulse::now_ms();
    let bearer = format!("Bearer {TOKEN}");
    let by_bearer = [("authorization", bearer.as_str())];
    assert_eq!(
        proxied(
            &client,
            &server,
            &heartbeat(&b, "w2", 20.0, now),
            &by_header
        )
        .await,
        200
    );
    assert_eq!(
        view(&client, &server, &b).await.unwrap()["progressPercent"],
        20.0
    );
    // a far-future time on an authenticated heartbeat is refused as clock skew, so it
    // cannot block the completion either
    let far = heartbeat(&b, "w2", 30.0, 32_503_680_000_000);
    assert_eq!(proxied(&client, &server, &far, &by_bearer).await, 200);
    let mut done_b = heartbeat(&b, "w2", 100.0, now + 1);
    done_b["status"] = json!("COMPLETED");
    done_b["extendLease"] = json!(false);
    assert_eq!(proxied(&client, &server, &done_b, &by_bearer).await, 200);
    let t = view(&client, &server, &b).await.unwrap();
    assert_eq!(t["status"], "COMPLETED", "{t:#}");
    assert_eq!(t["progressPercent"], 100.0);
    for r in emu.requests() {
        assert!(
            !r.headers.contains_key("x-taskpulse-token")
                && !r.headers.contains_key("authorization"),
            "taskpulse's token went upstream: {r:?}"
        );
    }

    // taskpulse's own API is never forwarded, with or without the token
    let unknown = server.url("/api/v1/unknown");
    assert_eq!(client.get(&unknown).send().await.unwrap().status(), 401);
    let r = client
        .get(&unknown)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // dot segments, raw or encoded, are refused (reqwest would resolve them; a raw request
    // goes as it is written)
    for path in [
        "/api/tasks/../v1/updates",
        "/api/%2e%2e/admin",
        "/api/./tasks",
    ] {
        let status = raw_status(&server, "POST", path).await;
        assert_eq!(status, 400, "{path}");
    }
    let forwarded: Vec<String> = emu.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        forwarded.iter().all(|p| !p.contains("/v1")
            && !p.contains("..")
            && !p.contains("/./")
            && !p.to_ascii_lowercase().contains("%2e")),
        "{forwarded:?}"
    );
}

/// One request on a raw connection, the path as written: the answer's status code.
pub(super) async fn raw_status(server: &Server, method: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"))
}
