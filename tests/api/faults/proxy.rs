//! The engine unreachable behind the Conductor proxy: down (502) or silent (504).

use super::*;

/// What a worker sees through the proxy: a poll and a task update, each as (request, status,
/// body, how long it took). Each request gives up after 15 s, so a hang fails the test.
async fn worker_calls(app: &TestApp) -> Vec<(String, u16, String, Duration)> {
    let mut out = Vec::new();
    for (method, path, body) in [
        ("GET", "/api/tasks/poll/encode?workerid=w1", None),
        (
            "POST",
            "/api/tasks",
            Some(json!({"taskId": "px-1", "workflowInstanceId": "wf-px", "status": "IN_PROGRESS"})),
        ),
    ] {
        let started = Instant::now();
        let mut req = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .timeout(Duration::from_secs(15));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("the proxy answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        out.push((format!("{method} {path}"), status, text, started.elapsed()));
    }
    out
}

/// The engine down behind the Conductor proxy: workers get 502 at once, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_proxy_answers_502_quickly_when_the_engine_is_down() {
    let db = TestDb::new(Backend::Sqlite).await;
    let closed = free_port();
    let app = TestApp::spawn_with(&db, |s| {
        s.engines.conductor.url = Some(format!("http://127.0.0.1:{closed}"));
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    for (what, status, _, took) in worker_calls(&app).await {
        assert_eq!(status, 502, "{what}");
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    }
    app.shutdown().await;
}

/// The engine slow behind the Conductor proxy (it takes the connection and never answers):
/// workers get 504 after `--conductor-timeout`, never a hang, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_proxy_answers_504_when_the_engine_is_silent() {
    use tokio::io::AsyncReadExt;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = silent.accept().await {
            // Read what arrives, answer nothing.
            held.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
    });
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.engines.conductor.url = Some(format!("http://{engine}"));
        s.engines.conductor.timeout = Duration::from_secs(1);
        s.check_loop.check_interval = Duration::ZERO;
    })
    .await;
    for (what, status, text, took) in worker_calls(&app).await {
        assert_eq!(status, 504, "{what}");
        assert!(text.contains("--conductor-timeout"), "{text}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "{what} took {took:?}"
        );
    }
    // taskpulse itself stays responsive meanwhile.
    assert_eq!(status_of(&app, "/healthz").await, 200);
    app.shutdown().await;
    hold.abort();
}
