//! Slow clients against the header and body timeouts, `--max-connections` and
//! `--send-timeout`, and shutdown while they hold connections.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{in_progress, ndjson, post, serve};
use crate::helpers::{update, Backend, TestApp, TestDb};

/// Reads until EOF or error; `true` if the server closed the connection within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> (bool, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (closed, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_others() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.header_read_timeout = Duration::from_secs(2);
        s.http.body_read_timeout = Duration::from_secs(2);
    })
    .await;

    // slowloris: a request head, one byte every 100 ms, forever
    let mut slow_heads = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"P").await.unwrap();
        slow_heads.push(tokio::spawn(async move {
            let started = Instant::now();
            let head = b"OST /api/v1/updates HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut i = 0;
            loop {
                let byte = head.get(i).copied().unwrap_or(b'a');
                i += 1;
                if s.write_all(&[byte]).await.is_err() {
                    return started.elapsed();
                }
                // the server closing is seen on read as well
                let mut b = [0u8; 64];
                if let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await
                {
                    if matches!(r, Ok(0) | Err(_)) {
                        return started.elapsed();
                    }
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return started.elapsed();
                }
            }
        }));
    }
    // a slow body: a complete head promising 1000 bytes, then 10 of them
    let mut slow_body = TcpStream::connect(app.addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /api/v1/updates HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"taskId\"",
        )
        .await
        .unwrap();
    let body_started = Instant::now();

    // meanwhile everyone else is served normally
    for i in 0..5 {
        let started = Instant::now();
        let r = app.ingest(&update(&format!("fast-{i}"), "SCHEDULED")).await;
        assert_eq!(r["accepted"], 1);
        // served while the slow connections are still open (they are cut off after 2 s)
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for h in slow_heads {
        let took = h.await.unwrap();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
            "a slow head was cut off after {took:?}"
        );
    }
    let (closed, answer) = closed_within(&mut slow_body, Duration::from_secs(6)).await;
    assert!(closed, "slow body connection still open: {answer}");
    assert!(
        body_started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        body_started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-read-timeout"), "{answer}");

    // a connection that sends nothing at all is closed too
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let (closed, _) = closed_within(&mut idle, Duration::from_secs(6)).await;
    assert!(closed, "an idle connection stayed open");
    app.shutdown().await;
}

/// One `GET path` on a raw keep-alive connection; the status line.
async fn raw_get(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answer within 5s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_clients_wait_while_open_ones_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.max_connections = 2;
        s.http.header_read_timeout = Duration::from_secs(20);
    })
    .await;
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(raw_get(&mut first, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(raw_get(&mut second, "/healthz").await, "HTTP/1.1 200 OK");

    // a third client waits: both slots are taken
    let client = reqwest::Client::new();
    let url = app.url("/healthz");
    let third = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "a third connection was served");
    // the open ones keep working
    assert_eq!(raw_get(&mut first, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(raw_get(&mut second, "/readyz").await, "HTTP/1.1 200 OK");

    // one closes: the waiting client is served
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(second);
    app.shutdown().await;
}

/// A connection that pipelines `count` scrapes and never reads an answer, with a small
/// receive buffer so the server's writes stall soon.
async fn stalled_reader(addr: std::net::SocketAddr, count: usize) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(count);
    s.write_all(requests.as_bytes()).await.unwrap();
    s
}

/// Tracked tasks with progress, so that a scrape is a few hundred KB.
async fn track_with_progress(server: &crate::process::Server, n: usize, progress: f64) {
    let client = reqwest::Client::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(500) {
        let lines = batch
            .iter()
            .map(|i| in_progress(&format!("task-{i:05}"), progress, 1_000 + progress as i64));
        let (status, text) = post(
            &client,
            &server.url("/api/v1/updates"),
            ndjson(lines),
            "application/x-ndjson",
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
}

/// Four clients that pipeline scrapes and never read hold every connection `--max-connections
/// 4` allows; `--send-timeout` cuts each of them off once its answer has not moved for that
/// long, and new clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_cut_off_by_the_send_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--max-connections", "4", "--send-timeout", "1s"],
    )
    .await;
    track_with_progress(&server, 2_000, 10.0).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_reader(server.addr, 200).await);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let r = client.get(server.url("/healthz")).send().await;
    let waited = started.elapsed();
    assert_eq!(r.expect("a new client is served").status(), 200);
    assert!(
        waited < Duration::from_secs(6),
        "a new client waited {waited:?} (send timeout 1 s)"
    );
    // by now each stalled connection has been closed by the server (a slot may have been
    // taken by the ingest client's connection for a moment, so give the last one a second
    // round): reading it ends at once, after what the socket buffers held
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    for mut s in stalled {
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
        assert!(
            ended.is_ok(),
            "a stalled connection is still open ({} bytes read)",
            sink.len()
        );
        assert!(
            sink.len() < 16 << 20,
            "{} bytes sent to a stalled reader",
            sink.len()
        );
    }
}

/// SIGTERM while clients that never read hold the connections: the waiting progress values
/// reach the store at once, not after the connections drain, so a SIGKILL a few seconds later
/// (Kubernetes at the end of its grace period) loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_acknowledged_progress_before_slow_clients_drain() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--max-connections", "8", "--progress-min-interval", "1h"],
    )
    .await;
    const N: usize = 1_000;
    track_with_progress(&server, N, 10.0).await;
    // the second value of each task is coalesced: only memory has it
    track_with_progress(&server, N, 77.0).await;
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
    let stored_77 = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tasks WHERE progress = 77")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(stored_77().await, 0, "the second values are coalesced");
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_reader(server.addr, 200).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.proc.signal("-TERM");
    let signalled = Instant::now();
    let mut stored = 0;
    while signalled.elapsed() < Duration::from_secs(5) {
        stored = stored_77().await;
        if stored == N as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored, N as i64,
        "acknowledged values in the store 5 s after SIGTERM"
    );
    // Kubernetes' SIGKILL (the process may have finished by itself already)
    let mut proc = server.proc;
    proc.signal("-KILL");
    proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(stored_77().await, N as i64);
    pool.close().await;
    drop(stalled);
}
