//! The worker proxy against a caller who knows its way around HTTP: a dummy credential header
//! proves nothing to a Conductor that checks none, and every spelling of an update's path
//! (matrix parameters, a trailing slash, percent-encoding) is guarded and recorded like the
//! plain one, because the engine's server reads them all as the same endpoint.

use serde_json::json;

use super::auth::{heartbeat, poll, proxied, raw_status, view, TOKEN};
use super::serve;
use crate::conductor::{Emulator, TaskSpec};

/// Open-source Conductor checks no credentials, so it answers 2xx to anyone: with a token set,
/// a caller who adds `Cookie: a=b` or `X-Authorization: x` instead of the token gets its polls
/// and updates through to the engine, and nothing of them recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dummy_credential_header_proves_nothing() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--auth-token", TOKEN, "--conductor-url", &emu.url()],
    )
    .await;
    let client = reqwest::Client::new();
    let id = emu.start_task(TaskSpec::new("encode"));
    let now = taskpulse::now_ms();
    for dummy in [
        ("cookie", "a=b"),
        ("x-authorization", "x"),
        ("authorization", "Basic eDp4"),
    ] {
        let headers = [dummy];
        assert_eq!(poll(&client, &server, "w-evil", &headers).await.0, 200);
        let hb = heartbeat(&id, "w-evil", 50.0, now);
        assert_eq!(proxied(&client, &server, &hb, &headers).await, 200);
        assert_eq!(
            view(&client, &server, &id).await,
            None,
            "recorded with only {dummy:?}"
        );
    }
    assert!(!emu.updates_for(&id).is_empty(), "the engine got them");
    // the token proves the caller (the engine hands the task out again after its lease)
    let by_header = [("x-taskpulse-token", TOKEN)];
    let id = emu.start_task(TaskSpec::new("encode"));
    assert_eq!(poll(&client, &server, "w-1", &by_header).await, (200, 1));
    let hb = heartbeat(&id, "w-1", 60.0, taskpulse::now_ms());
    assert_eq!(proxied(&client, &server, &hb, &by_header).await, 200);
    let t = view(&client, &server, &id).await.expect("recorded");
    assert_eq!(
        (t["workerId"].as_str(), t["progressPercent"].as_f64()),
        (Some("w-1"), Some(60.0))
    );
}

/// A completion through the proxy, then a late IN_PROGRESS sent to every spelling of the
/// update endpoints: none reaches the engine (the conductor-oss#176 guard), each is recorded as
/// a rejected transition. Spellings the engine's server would read differently, or not at all,
/// are refused; taskpulse's own API is not forwarded in any spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_an_update_is_guarded_and_recorded() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--auth-token", TOKEN, "--conductor-url", &emu.url()],
    )
    .await;
    let client = reqwest::Client::new();
    let id = emu.start_task(TaskSpec::new("encode"));
    let auth = [("x-taskpulse-token", TOKEN)];
    assert_eq!(poll(&client, &server, "w-1", &auth).await, (200, 1));
    let now = taskpulse::now_ms();
    let mut done = heartbeat(&id, "w-1", 100.0, now);
    done["status"] = json!("COMPLETED");
    done["extendLease"] = json!(false);
    let r = client
        .post(server.url("/api/tasks;jsessionid=1/"))
        .header(auth[0].0, auth[0].1)
        .json(&done)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = view(&client, &server, &id).await.unwrap();
    assert_eq!(
        t["status"], "COMPLETED",
        "recorded through a matrix parameter: {t:#}"
    );
    let upstream = emu.updates_for(&id).len();

    let late = heartbeat(&id, "w-1", 50.0, now + 10);
    let spellings = [
        "/api/tasks;x=1",
        "/api/tasks/",
        "/api/%74asks",
        "/api//tasks",
        "/api/tasks/update-v2;x=1",
        "/api/tasks/update-v2/",
        "/api/tasks/%75pdate-v2",
    ];
    for path in spellings {
        let r = client
            .post(server.url(path))
            .header(auth[0].0, auth[0].1)
            .json(&late)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(
            emu.updates_for(&id).len(),
            upstream,
            "{path}: a late IN_PROGRESS reached the engine after its completion"
        );
    }
    let rejected = server
        .scrape()
        .await
        .samples
        .into_iter()
        .find(|s| {
            s.metric == "taskpulse_transitions_rejected_total"
                && s.labels.get("from") == Some("COMPLETED")
                && s.labels.get("to") == Some("IN_PROGRESS")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        });
    assert_eq!(rejected, Some(spellings.len() as f64), "each one recorded");
    assert_eq!(emu.task(&id).unwrap().status, "COMPLETED");

    // what the engine's server would read differently, or refuse: refused here too
    for path in [
        "/api/tasks%2F",
        "/api/tasks%2fupdate-v2",
        "/api/tasks%5c",
        "/api/%ff",
    ] {
        assert_eq!(raw_status(&server, "POST", path).await, 400, "{path}");
    }
    // taskpulse's own API in any spelling: not forwarded
    for path in [
        "/api/%76%31/updates",
        "/api/v1;x=1/updates",
        "/api//v1/updates",
    ] {
        let status = raw_status(&server, "POST", path).await;
        assert!(matches!(status, 401 | 404), "{path}: {status}");
    }
    let forwarded: Vec<String> = emu.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        forwarded
            .iter()
            .all(|p| !p.contains("v1") && !p.contains(';') && !p.contains('%')),
        "{forwarded:?}"
    );
}
