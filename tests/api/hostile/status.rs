//! The status page's endpoints under load, with the real binary: event streams never take the
//! connections health probes, scrapes and ingest need, and the overview's walk of the tracked
//! tasks never holds up `/healthz`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{in_progress, ndjson, post, serve};

/// A client that holds no idle connection once a request is answered, so that one test
/// request never keeps a slot of a small `--max-connections` for the next.
fn one_shot_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap()
}

/// `GET path`: (status, body), or the error text when there was no answer in time.
async fn get(client: &reqwest::Client, url: String) -> Result<(u16, String), String> {
    match client.get(&url).send().await {
        Ok(r) => Ok((r.status().as_u16(), r.text().await.unwrap_or_default())),
        Err(e) => Err(format!("GET {url}: {e}")),
    }
}

/// `--max-connections 1`: no event stream at all (503 saying why), so the one connection is
/// always there for `/healthz`, `/metrics` and ingest. With 4, two streams at most, and
/// probes, scrapes and ingest are served while both are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_never_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    // idle keep-alive connections (the start-up probe's) give their slot back after 1 s
    let server = serve(
        dir.path(),
        &["--max-connections", "1", "--header-read-timeout", "1s"],
    )
    .await;
    // a stream on a connection of its own, kept open while the probe runs
    let streams = reqwest::Client::new();
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        streams.get(server.url("/api/v1/events")).send(),
    )
    .await
    .expect("the stream request is answered")
    .unwrap();
    assert_eq!(stream.status(), 503, "a stream took the only connection");
    let why = stream.text().await.unwrap();
    assert!(
        why.contains("--max-connections") && why.contains("event streams"),
        "{why}"
    );
    drop(streams);
    let probe = one_shot_client();
    for path in ["/healthz", "/metrics"] {
        let (status, body) = get(&probe, server.url(path)).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = post(
        &probe,
        &server.url("/api/v1/updates"),
        ndjson([in_progress("one", 10.0, taskpulse::now_ms())]),
        "application/x-ndjson",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--max-connections", "4", "--header-read-timeout", "1s"],
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..2 {
        // a client each: every stream on a connection of its own
        let r = reqwest::Client::new()
            .get(server.url("/api/v1/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let (status, why) = get(&one_shot_client(), server.url("/api/v1/events"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("event streams"), "{why}");
    for path in ["/healthz", "/metrics", "/readyz"] {
        let (status, body) = get(&probe, server.url(path)).await.unwrap();
        assert_eq!(status, 200, "{path} while two streams are open: {body}");
    }
    drop(open);
}

/// Tracked in-flight tasks with progress, `n` of them, in NDJSON bodies of 10,000.
async fn track(server: &crate::process::Server, n: usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let now = taskpulse::now_ms();
    for start in (0..n).step_by(10_000) {
        let lines = (start..(start + 10_000).min(n)).map(|i| {
            let mut u = in_progress(&format!("t{i:07}"), (i % 90) as f64, now);
            u["taskType"] = json!(format!("type-{}", i % 50));
            u
        });
        let (status, body) = post(
            &client,
            &server.url("/api/v1/updates"),
            ndjson(lines),
            "application/x-ndjson",
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The overview walks every tracked task. Computed while requests wait (on a lock, on the
/// async worker threads), every `/healthz` that arrives meanwhile waits about as long as one
/// walk. Measured side by side in the same process: how long one walk takes (the very first
/// overview request, which waits for it), and how long `/healthz` takes while several pages'
/// overview requests arrive with the last overview stale, so a walk runs. `/healthz` must take
/// a small fraction of a walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_does_not_wait_for_the_overview_walk() {
    const TASKS: usize = 200_000;
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--max-pending-writes", "1000000"]).await;
    track(&server, TASKS).await;
    // the store writes of the new tasks done first: they would compete for the CPU
    let deadline = Instant::now() + Duration::from_secs(300);
    while super::family_sum(&server.scrape().await, "taskpulse_store_pending_writes") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "store writes still pending after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let overview = server.url("/api/v1/overview");
    let started = Instant::now();
    let (status, body) = get(&client, overview.clone()).await.unwrap();
    let walk = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["inFlight"]["total"], TASKS, "{first}");

    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // a warm connection, so the probe measures the answer, not a connect
    get(&probe, server.url("/healthz")).await.unwrap();
    let mut waits = Vec::new();
    for _ in 0..ROUNDS {
        // the last overview is stale: the next requests start a walk
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let round = taskpulse::now_ms();
        let pages: Vec<_> = (0..4)
            .map(|_| {
                let (client, url) = (client.clone(), overview.clone());
                tokio::spawn(async move { get(&client, url).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let asked = Instant::now();
        let (status, _) = get(&probe, server.url("/healthz")).await.unwrap();
        waits.push(asked.elapsed());
        assert_eq!(status, 200);
        for p in pages {
            let (status, body) = p.await.unwrap().unwrap();
            assert_eq!(status, 200, "{body}");
        }
        // a walk did start in this round (its answer is stamped with when it began)
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = get(&client, overview.clone()).await.unwrap();
            let at = serde_json::from_str::<serde_json::Value>(&body).unwrap()["at"]
                .as_i64()
                .unwrap();
            if at >= round {
                break;
            }
            assert!(Instant::now() < deadline, "no overview computed this round");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    waits.sort();
    let median = waits[ROUNDS / 2];
    eprintln!("one walk of {TASKS} tasks: {walk:?}; /healthz meanwhile: {waits:?}");
    assert!(
        median * 5 < walk,
        "/healthz took {median:?} (median of {waits:?}) while the overview was computed; \
         one walk takes {walk:?}: health waits behind the walk"
    );
}
