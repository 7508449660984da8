//! Crashes: kill -9 under load with the SQLite WAL in place, then SIGTERM.

use super::*;

/// One kill -9 under steady load, then a SIGTERM, with the SQLite WAL in place: every
/// acknowledged completion survives both restarts, and `taskpulse check` finds nothing illegal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_and_sigterm_keep_every_acknowledged_completion() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k9.db").display());
    let start = |port: u16| {
        let listen = format!("127.0.0.1:{port}");
        Proc::spawn(
            dir.path(),
            &[
                "serve",
                "--listen",
                &listen,
                "--database",
                &db,
                "--progress-min-interval",
                "200ms",
                "--check-interval",
                "0",
            ],
            &[],
        )
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let wait_healthy = |addr: SocketAddr, client: reqwest::Client| async move {
        until("server answers /healthz", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        })
        .await;
    };

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = start(port);
    wait_healthy(addr, client.clone()).await;

    // Steady load: tasks start, report progress, complete; completions acknowledged are kept.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            let url = format!("http://{addr}/api/v1/updates");
            for n in 0.. {
                let id = format!("k9-{n}");
                let mut body: Vec<Value> = (0..5).map(|p| progress(&id, p as f64 * 20.0)).collect();
                body.push(update(&id, "COMPLETED"));
                for (i, u) in body.iter().enumerate() {
                    match client.post(&url).json(u).send().await {
                        Ok(r) if r.status() == 200 && i == 5 => {
                            acked.lock().unwrap().push(id.clone())
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("-KILL");
    let mut server = server;
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3, "load ran: {} completions", acked.len());
    assert!(
        dir.path().join("k9.db-wal").exists(),
        "the crash leaves the WAL behind"
    );

    let check_stored = |acked: Vec<String>| {
        let db = db.clone();
        async move {
            let store = Store::connect(&db).await.unwrap();
            for id in &acked {
                let rec = store.get_task(id).await.unwrap();
                assert_eq!(
                    rec.map(|r| r.status.as_str()),
                    Some("COMPLETED"),
                    "acknowledged completion of {id}"
                );
            }
            store.close().await;
        }
    };

    // Restart after the crash, then stop it cleanly and start it once more.
    let mut server = start(port);
    wait_healthy(addr, client.clone()).await;
    check_stored(acked.clone()).await;
    let r = client
        .post(format!("http://{addr}/api/v1/updates"))
        .json(&update("after-crash", "COMPLETED"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    let mut server = start(port);
    wait_healthy(addr, client.clone()).await;
    let mut all = acked.clone();
    all.push("after-crash".into());
    check_stored(all).await;
    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());

    let (status, out, err) = run(
        dir.path(),
        &["check", "--database", &db],
        &[],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(status.code(), Some(0), "taskpulse check:\n{out}{err}");
}
