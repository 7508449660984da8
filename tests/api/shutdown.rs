//! Two-phase shutdown with the real binary: on the first SIGTERM `/readyz` answers 503 at once
//! while updates are still acknowledged for `--shutdown-grace`; then the process writes
//! everything and exits 0, with every acknowledged value stored. A second signal stops it at
//! once with a non-zero exit code.

use std::time::{Duration, Instant};

use serde_json::json;
use taskpulse::model::Status;
use taskpulse::store::Store;

use crate::process::Server;

fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("grace.db").display())
}

async fn status_of(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_keeps_serving_with_readiness_off_then_everything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path());
    let server = Server::start(
        dir.path(),
        &[
            "--database",
            &db,
            "--shutdown-grace",
            "3s",
            "--progress-min-interval",
            "1h",
        ],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    let progress = |id: &str, p: f64| {
        json!({"taskId": id, "workflowId": "wf", "taskType": "encode",
               "status": "IN_PROGRESS", "progressPercent": p})
    };
    server.ingest(&progress("before", 10.0)).await;
    server.ingest(&progress("before", 20.0)).await; // coalesced: only memory has it
    assert_eq!(status_of(&client, &server.url("/readyz")).await, Some(200));

    let signalled = Instant::now();
    server.proc.signal("-TERM");
    // readiness turns false at once...
    let deadline = signalled + Duration::from_millis(1500);
    loop {
        match status_of(&client, &server.url("/readyz")).await {
            Some(503) => break,
            other if Instant::now() > deadline => {
                panic!("/readyz still answered {other:?} 1.5 s after SIGTERM")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // ...while the API keeps taking updates, those that need a commit included
    let mut acknowledged = 0;
    while signalled.elapsed() < Duration::from_millis(2000) {
        let r = server
            .ingest(&progress("during", 30.0 + acknowledged as f64))
            .await;
        assert_eq!(r["accepted"], 1, "{r}");
        acknowledged += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = json!({"taskId": "finished-in-grace", "workflowId": "wf", "taskType": "encode",
                      "status": "COMPLETED"});
    let r = server.ingest(&done).await;
    assert_eq!(
        r["accepted"], 1,
        "a completion during the grace is committed: {r}"
    );
    assert_eq!(status_of(&client, &server.url("/healthz")).await, Some(200));

    let mut proc = server.proc;
    let status = proc.wait_exit(Duration::from_secs(15)).await;
    let stderr = proc.stderr();
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "exited before the grace was over; stderr:\n{stderr}"
    );

    let store = Store::connect(&db).await.unwrap();
    let get = |id: &'static str| {
        let store = store.clone();
        async move { store.get_task(id).await.unwrap() }
    };
    assert_eq!(
        get("before").await.unwrap().progress,
        Some(20.0),
        "the coalesced value"
    );
    let last = 30.0 + (acknowledged - 1) as f32;
    assert_eq!(
        get("during").await.unwrap().progress,
        Some(last),
        "the last value acknowledged during the grace"
    );
    assert_eq!(
        get("finished-in-grace").await.unwrap().status,
        Status::Completed
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_with_a_non_zero_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path());
    let server = Server::start(
        dir.path(),
        &["--database", &db, "--shutdown-grace", "60s"],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    server.proc.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    while status_of(&client, &server.url("/readyz")).await != Some(503) {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = Instant::now();
    server.proc.signal("-INT");
    let mut proc = server.proc;
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "took {:?} after the second signal",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(130), "stderr:\n{}", proc.stderr());
}
