//! Updates racing across replicas: a late or older update never wins.

use super::*;

/// The late IN_PROGRESS (conductor-oss#176) sent to replica B after replica A accepted the
/// COMPLETED does not win: not when B has to look the task up in the store, not when B still
/// holds an older state of the task in memory (a status change, which waits for its commit and
/// conflicts), and not when B's update is a progress-only update acknowledged from memory (its
/// throttled write conflicts and B's memory follows the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_in_progress_on_another_replica_does_not_win() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let servers = replicas(dir.path(), &db, 2).await;
    let refs: Vec<&Server> = servers.iter().collect();
    // B is the follower: a follower does not fold the store into its memory, so what B has in
    // memory is exactly what it was sent.
    let leader = wait_for_single_leader(&refs, Duration::from_secs(3)).await;
    let (a, b) = (refs[leader], refs[1 - leader]);
    let store = db.store().await;

    // 1. B has never seen the task: it reads the store before deciding.
    let r = a.ingest(&progress_update("late-1", 50.0, 1000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = a.ingest(&status_update("late-1", "COMPLETED", 3000)).await;
    assert_eq!(r["accepted"], 1, "A accepts the completion: {r}");
    assert_eq!(
        stored_status(&store, "late-1").await,
        Some(Status::Completed)
    );
    for t in [2000, 4000] {
        let r = b.ingest(&progress_update("late-1", 60.0, t)).await;
        assert_eq!(
            r["accepted"], 0,
            "late IN_PROGRESS (updateTime {t}) on B: {r}"
        );
        assert_eq!(
            rejected_reasons(&r),
            vec!["terminal".to_string()],
            "late IN_PROGRESS (updateTime {t}) on B: {r}"
        );
    }
    assert_eq!(
        stored_status(&store, "late-1").await,
        Some(Status::Completed)
    );
    for (name, s) in [("A", a), ("B", b)] {
        let task = s.get_json("/api/v1/tasks/late-1").await;
        assert_eq!(task["status"], "COMPLETED", "replica {name}: {task}");
    }
    let rejected = |scrape: &prometheus_parse::Scrape| {
        metric_value(
            scrape,
            "taskpulse_transitions_rejected_total",
            &[("from", "COMPLETED"), ("to", "IN_PROGRESS")],
        )
    };
    assert_eq!(
        rejected(&b.scrape().await),
        Some(2.0),
        "B counts both late updates"
    );

    // 2. B holds the task as SCHEDULED; the late IN_PROGRESS is a status change for B, which
    //    is written like progress (acknowledged from memory): its write conflicts with A's
    //    COMPLETED, and B then counts it rejected and follows the store.
    let r = b.ingest(&status_update("late-2", "SCHEDULED", 1000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = a.ingest(&status_update("late-2", "COMPLETED", 3000)).await;
    assert_eq!(r["accepted"], 1, "A accepts the completion: {r}");
    tokio::time::sleep(Duration::from_millis(300)).await; // past B's throttle interval
    b.ingest(&progress_update("late-2", 70.0, 4000)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert_eq!(
            stored_status(&store, "late-2").await,
            Some(Status::Completed),
            "the store keeps A's COMPLETED"
        );
        let task = b.get_json("/api/v1/tasks/late-2").await;
        if task["status"] == "COMPLETED" && rejected(&b.scrape().await) == Some(3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's memory does not follow the stored COMPLETED, or the conflict is not counted: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. B holds the task as IN_PROGRESS; the late IN_PROGRESS with a newer updateTime is a
    //    progress-only update for B: acknowledged from memory, its throttled write conflicts.
    let r = b.ingest(&progress_update("late-3", 10.0, 1000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = a.ingest(&status_update("late-3", "COMPLETED", 3000)).await;
    assert_eq!(r["accepted"], 1, "A accepts the completion: {r}");
    // past B's throttle interval, so B writes the progress at once
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (B answers from memory before the write; what the contract promises is that the write
    // does not win and B stops showing the task as running)
    b.ingest(&progress_update("late-3", 80.0, 4000)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stored = store.get_task("late-3").await.expect("store read").unwrap();
        assert_eq!(
            (stored.status, stored.update_time),
            (Status::Completed, Some(3000)),
            "the store keeps A's COMPLETED: {stored:?}"
        );
        let task = b.get_json("/api/v1/tasks/late-3").await;
        if task["status"] == "COMPLETED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's memory still says {} 3 s after its write lost to the stored COMPLETED: {task}",
            task["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and it stays so: nothing B holds is written over the completion later
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_status(&store, "late-3").await,
        Some(Status::Completed)
    );
    for (name, s) in [("A", a), ("B", b)] {
        let task = s.get_json("/api/v1/tasks/late-3").await;
        assert_eq!(task["status"], "COMPLETED", "replica {name}: {task}");
    }

    store.close().await;
    for s in servers {
        let (status, stderr) = s.terminate().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}

/// An older update sent to replica B after replica A stored a newer one does not overwrite it,
/// whether B answers it from memory (progress-only: its throttled write conflicts and B's
/// memory follows the store) or after the commit (a status change: rejected as `stale`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_update_on_another_replica_does_not_overwrite_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let servers = replicas(dir.path(), &db, 2).await;
    let refs: Vec<&Server> = servers.iter().collect();
    let leader = wait_for_single_leader(&refs, Duration::from_secs(3)).await;
    let (a, b) = (refs[leader], refs[1 - leader]);
    let store = db.store().await;
    let stored = |id: &'static str| {
        let store = store.clone();
        async move {
            let r = store.get_task(id).await.expect("store read").unwrap();
            (r.status, r.update_time, r.progress)
        }
    };

    // progress-only on B
    let r = b.ingest(&progress_update("newer-1", 10.0, 1000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = a.ingest(&progress_update("newer-1", 50.0, 5000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let newest = (Status::InProgress, Some(5000), Some(50.0));
    let deadline = Instant::now() + Duration::from_secs(3);
    while stored("newer-1").await != newest {
        assert!(
            Instant::now() < deadline,
            "A's update never reached the store: {:?}",
            stored("newer-1").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await; // past B's throttle interval
    b.ingest(&progress_update("newer-1", 20.0, 3000)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert_eq!(
            stored("newer-1").await,
            newest,
            "the older update overwrote the newer one"
        );
        let task = b.get_json("/api/v1/tasks/newer-1").await;
        if task["updateTime"] == 5000 && task["progressPercent"] == 50.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's memory does not follow the newer stored row after 3 s: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stored("newer-1").await, newest);

    // a status change on B, written like progress: it never overwrites the newer stored row,
    // and B's memory follows the store
    let r = b.ingest(&status_update("newer-2", "SCHEDULED", 1000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = a.ingest(&progress_update("newer-2", 50.0, 5000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while stored("newer-2").await != newest {
        assert!(
            Instant::now() < deadline,
            "A's update never reached the store: {:?}",
            stored("newer-2").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await; // past B's throttle interval
    b.ingest(&progress_update("newer-2", 20.0, 3000)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert_eq!(stored("newer-2").await, newest, "the older write won");
        let task = b.get_json("/api/v1/tasks/newer-2").await;
        if (task["status"].clone(), task["updateTime"].clone())
            == (json!("IN_PROGRESS"), json!(5000))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's memory does not follow the newer stored row after 3 s: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    store.close().await;
    for s in servers {
        let (status, stderr) = s.terminate().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}
