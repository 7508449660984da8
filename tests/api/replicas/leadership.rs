//! Who leads: exactly one replica, handed over on a lost connection, a kill -9 or a database
//! restart.

use super::*;

/// Exactly one of three replicas leads, and stays the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_three_replicas_leads() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let servers = replicas(dir.path(), &db, 3).await;
    let refs: Vec<&Server> = servers.iter().collect();
    let leader = wait_for_single_leader(&refs, Duration::from_secs(3)).await;
    // several election rounds (every 500 ms) must not produce a second leader or none
    assert_leader_stays(&refs, leader, Duration::from_secs(2)).await;
    for s in servers {
        let (status, stderr) = s.terminate().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}

/// The leader's election connection is closed by the server (a PostgreSQL restart, a network
/// cut, an idle-session killer): it loses the advisory lock, and the replicas hand over without
/// ever showing two leaders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_losing_its_connection_hands_over_without_two_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let servers = replicas(dir.path(), &db, 2).await;
    let refs: Vec<&Server> = servers.iter().collect();
    let admin = sqlx::PgPool::connect(&db.url).await.expect("connect");
    // Each round the new leader may take the lock before the old one's next election round
    // notices its connection is gone (both run every 500 ms, in unrelated phases); eight rounds
    // make a handover with two leaders all but certain to be seen if it can happen.
    for round in 0..8 {
        let leader = wait_for_single_leader(&refs, Duration::from_secs(3)).await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&admin)
        .await
        .expect("terminate the lock holder");
        assert_eq!(
            killed,
            vec![true],
            "round {round}: one backend holds the lock"
        );
        let cut = Instant::now();
        let mut samples = Vec::new();
        // both election rounds come within 500 ms of the cut
        while cut.elapsed() < Duration::from_millis(700) {
            // The other replica first, the old leader second: the other cannot stop leading
            // in between, so two 1s mean both led at the moment of the second scrape.
            let g = leader_gauges(&[refs[1 - leader], refs[leader]]).await;
            samples.push((cut.elapsed().as_millis(), g.clone()));
            assert!(
                g != [Some(1.0), Some(1.0)],
                "round {round}: two leaders at once {}ms after the leader lost its connection; \
                 (ms, [other, old leader]): {samples:?}",
                cut.elapsed().as_millis()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now_leader = wait_for_single_leader(&refs, CHECK_INTERVAL * 2).await;
        eprintln!("round {round}: leader {leader} -> {now_leader}");
    }
    admin.close().await;
    for s in servers {
        let (status, stderr) = s.terminate().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}

/// kill -9 of the leader: another replica takes over within two check intervals, only one,
/// and it runs the checker and exports the state gauges (including tasks the dead leader took
/// in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_kill_9_within_two_check_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let mut servers = replicas(dir.path(), &db, 3).await;
    let refs: Vec<&Server> = servers.iter().collect();
    let leader = wait_for_single_leader(&refs, Duration::from_secs(3)).await;

    let runs_ok = |s: &prometheus_parse::Scrape| {
        metric_value(s, "taskpulse_checker_runs_total", &[("outcome", "ok")]).unwrap_or(0.0)
    };
    // the leader runs the checker; the followers don't
    let deadline = Instant::now() + Duration::from_secs(3);
    while runs_ok(&refs[leader].scrape().await) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the leader ran no checker pass in 3 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, s) in refs.iter().enumerate() {
        if i != leader {
            assert_eq!(
                runs_ok(&s.scrape().await),
                0.0,
                "follower {i} ran the checker"
            );
        }
    }
    let r = refs[leader]
        .ingest(&progress_update("failover-1", 55.0, taskpulse::now_ms()))
        .await;
    assert_eq!(r["accepted"], 1, "{r}");

    let dead = servers.remove(leader);
    let killed_at = Instant::now();
    dead.kill9().await;
    let survivors: Vec<&Server> = servers.iter().collect();
    let new_leader = wait_for_single_leader(&survivors, Duration::from_secs(5)).await;
    let took = killed_at.elapsed();
    eprintln!("failover: a replica took over {took:?} after kill -9 of the leader");
    let limit = CHECK_INTERVAL * 2 + Duration::from_millis(300);
    assert!(
        took <= limit,
        "a replica took over {took:?} after kill -9 of the leader; the limit is two check intervals ({:?}) plus a margin",
        CHECK_INTERVAL * 2
    );
    assert_leader_stays(&survivors, new_leader, Duration::from_millis(1500)).await;

    // the new leader runs the checker, and exports the task the dead leader took in
    let l = survivors[new_leader];
    let before = runs_ok(&l.scrape().await);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let scrape = l.scrape().await;
        let ratios = task_series(&scrape, "taskpulse_task_progress_ratio");
        let ran = runs_ok(&scrape);
        if ran > before
            && ratios.len() == 1
            && ratios[0].0 == "failover-1"
            && (ratios[0].1 - 0.55).abs() < 1e-6
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 s after taking over: checker runs ok {ran} (was {before}), progress series {ratios:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = survivors[1 - new_leader];
    assert_eq!(
        runs_ok(&other.scrape().await),
        0.0,
        "the remaining follower runs no checker pass"
    );

    for s in servers {
        let (status, stderr) = s.terminate().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
}

/// Two replicas on a private PostgreSQL cluster under steady load: the database stops and
/// starts again, then the leader is killed with -9 and a new replica joins. Afterwards exactly
/// one replica leads and stays the only one, every acknowledged completion is stored as
/// COMPLETED (the late IN_PROGRESS sent to the other replica after each one never overwrote
/// it), every expired lease was repaired exactly once, and `taskpulse check` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_a_database_restart_and_a_leader_kill() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let Some(pg) = crate::pgcluster::PgCluster::start() else {
        eprintln!("no PostgreSQL server binaries under /usr/lib/postgresql; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url();
    let args = [
        "--database",
        &url,
        "--check-interval",
        "1s",
        "--progress-min-interval",
        "200ms",
        "--lease-grace",
        "1s",
    ];
    let mut servers = vec![
        Server::start(dir.path(), &args, &[]).await,
        Server::start(dir.path(), &args, &[]).await,
    ];
    // Tasks whose lease runs out within seconds: the checker times each out, once.
    let leases: Vec<String> = (0..10).map(|i| format!("lease-{i}")).collect();
    for (i, id) in leases.iter().enumerate() {
        let mut u = progress_update(id, 10.0, taskpulse::now_ms());
        u["responseTimeoutSeconds"] = json!(1);
        servers[i % 2].ingest(&u).await;
    }

    // Steady load on both replicas: each task's progress and completion go to one replica, and
    // a late IN_PROGRESS (newer updateTime, the conductor-oss#176 shape) to the other.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let load = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("steady-{n}");
                let (a, b) = (addrs[n % 2], addrs[(n + 1) % 2]);
                let post = |addr: std::net::SocketAddr, body: Value| {
                    client
                        .post(format!("http://{addr}/api/v1/updates"))
                        .json(&body)
                        .send()
                };
                let t = taskpulse::now_ms();
                let _ = post(a, progress_update(&id, 40.0, t)).await;
                if let Ok(r) = post(a, status_update(&id, "COMPLETED", t + 1)).await {
                    if r.status() == 200 {
                        let body: Value = r.json().await.unwrap_or_default();
                        if body["accepted"] == 1 || body["duplicates"] == 1 {
                            acked.lock().unwrap().push(id.clone());
                        }
                    }
                }
                let _ = post(b, progress_update(&id, 60.0, t + 2)).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refs: Vec<&Server> = servers.iter().collect();
    wait_for_single_leader(&refs, Duration::from_secs(5)).await;

    // The database goes away for two seconds and comes back.
    tokio::task::block_in_place(|| pg.stop());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.start_again());
    let leader = wait_for_single_leader(&refs, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The leader dies; a new replica joins.
    let dead = servers.remove(leader);
    dead.kill9().await;
    servers.push(Server::start(dir.path(), &args, &[]).await);
    let refs: Vec<&Server> = servers.iter().collect();
    let leader = wait_for_single_leader(&refs, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), load)
        .await
        .expect("the load stops")
        .unwrap();
    assert_leader_stays(&refs, leader, Duration::from_millis(1500)).await;

    let store = Store::connect(&url).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 20,
        "the load ran: {} completions",
        acked.len()
    );
    for id in &acked {
        assert_eq!(
            stored_status(&store, id).await,
            Some(Status::Completed),
            "acknowledged completion of {id}"
        );
    }
    // Every lease ends TIMED_OUT, repaired once, whoever led at the time.
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in &leases {
        while stored_status(&store, id).await != Some(Status::TimedOut) {
            assert!(
                Instant::now() < deadline,
                "{id} not timed out by the checker"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let Store::Postgres(pool) = &store else {
        unreachable!()
    };
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT task_id, rule, count(*) FROM repairs WHERE outcome = 'repaired' \
         GROUP BY task_id, rule HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        twice.is_empty(),
        "repairs applied more than once: {twice:?}"
    );
    let (repaired,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT task_id) FROM repairs WHERE outcome = 'repaired' AND task_id LIKE 'lease-%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(repaired, leases.len() as i64, "each lease repaired");
    store.close().await;
    eprintln!(
        "{} acknowledged completions, {} leases repaired once each",
        acked.len(),
        repaired
    );

    for s in servers {
        let (status, stderr) = s.terminate().await;
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
    let (status, out, err) = crate::process::run(
        dir.path(),
        &["check", "--database", &url],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(status.code(), Some(0), "taskpulse check:\n{out}{err}");
}
