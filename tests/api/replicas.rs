//! Several replicas on one PostgreSQL: real `taskpulse serve` processes sharing one
//! fresh database. Exactly one leads (advisory lock), a late IN_PROGRESS sent to one replica
//! after another accepted the completion never wins, only the leader exports the state gauges
//! (refreshed from the store, so nothing is counted twice), and after kill -9 of the leader
//! another one takes over within two check intervals.
//!
//! Every child process is killed when its test ends (`Proc`'s `Drop`), and every wait is
//! deadline-bounded (see `process`).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use taskpulse::model::Status;
use taskpulse::store::Store;
use tokio::time::Instant;

use crate::helpers::{metric_value, update, Backend, TestDb};
use crate::process::Server;

/// Check interval of the replicas under test: the election period is half of it.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `taskpulse_checker_leader` of a replica (`None` if it does not answer).
async fn leader_gauge(server: &Server) -> Option<f64> {
    let scrape = server.try_scrape().await?;
    metric_value(&scrape, "taskpulse_checker_leader", &[])
}

/// `n` replicas of `serve` on one database, with a 1 s check interval (election every 500 ms)
/// and a 200 ms throttle interval.
async fn replicas(cwd: &Path, db: &TestDb, n: usize) -> Vec<Server> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Server::start(
                cwd,
                &[
                    "--database",
                    &db.url,
                    "--check-interval",
                    "1s",
                    "--progress-min-interval",
                    "200ms",
                ],
                &[],
            )
            .await,
        );
    }
    out
}

/// Every replica's `taskpulse_checker_leader` (None for one that does not answer).
async fn leader_gauges(servers: &[&Server]) -> Vec<Option<f64>> {
    let mut out = Vec::with_capacity(servers.len());
    for s in servers {
        out.push(leader_gauge(s).await);
    }
    out
}

/// Polls until exactly one of `servers` reports `taskpulse_checker_leader 1` (and the others
/// 0); returns its index. Fails after `limit`.
async fn wait_for_single_leader(servers: &[&Server], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let gauges = leader_gauges(servers).await;
        let leaders: Vec<usize> = (0..gauges.len())
            .filter(|i| gauges[*i] == Some(1.0))
            .collect();
        if leaders.len() == 1
            && gauges
                .iter()
                .all(|g| matches!(g, Some(v) if *v == 0.0 || *v == 1.0))
        {
            return leaders[0];
        }
        if Instant::now() > deadline {
            let stderr: Vec<String> = servers.iter().map(|s| s.stderr()).collect();
            panic!(
                "no single leader within {limit:?}: taskpulse_checker_leader = {gauges:?}\nstderr:\n{}",
                stderr.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Over `span`, scraping every 100 ms, the leader gauges stay exactly `expected`.
async fn assert_leader_stays(servers: &[&Server], expected: usize, span: Duration) {
    let until = Instant::now() + span;
    let mut rounds = 0;
    while Instant::now() < until {
        let gauges = leader_gauges(servers).await;
        let want: Vec<Option<f64>> = (0..servers.len())
            .map(|i| Some(if i == expected { 1.0 } else { 0.0 }))
            .collect();
        assert_eq!(
            gauges, want,
            "taskpulse_checker_leader must be 1 on replica {expected} only (round {rounds})"
        );
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rounds >= 5, "only {rounds} scrape rounds in {span:?}");
}

fn progress_update(id: &str, percent: f64, update_time: i64) -> Value {
    let mut u = update(id, "IN_PROGRESS");
    u["progressPercent"] = json!(percent);
    u["workerId"] = json!("worker-1");
    u["updateTime"] = json!(update_time);
    u
}

fn status_update(id: &str, status: &str, update_time: i64) -> Value {
    let mut u = update(id, status);
    u["workerId"] = json!("worker-1");
    u["updateTime"] = json!(update_time);
    u
}

/// What the store holds for a task, read directly.
async fn stored_status(store: &Store, id: &str) -> Option<Status> {
    store
        .get_task(id)
        .await
        .expect("store read")
        .map(|r| r.status)
}

fn rejected_reasons(answer: &Value) -> Vec<String> {
    answer["rejected"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["reason"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Samples of one metric family in a scrape, as (task_id label, value).
fn task_series(scrape: &prometheus_parse::Scrape, name: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (s.labels.get("task_id").unwrap_or("").to_string(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Sum of every sample of a family (e.g. `taskpulse_tasks` over all label sets).
fn family_sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    task_series(scrape, name).iter().map(|(_, v)| v).sum()
}

fn family_present(scrape: &prometheus_parse::Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}

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

/// Only the leader exports the state gauges, and they cover the tasks other replicas took in
/// (refreshed from the store), each counted once. Every replica exports its own ingest counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_exports_state_gauges_and_counts_each_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let servers = replicas(dir.path(), &db, 2).await;
    let refs: Vec<&Server> = servers.iter().collect();
    let leader = wait_for_single_leader(&refs, Duration::from_secs(3)).await;
    let (l, f) = (refs[leader], refs[1 - leader]);

    let now = taskpulse::now_ms();
    let r = l
        .ingest(&json!([
            progress_update("gauge-l1", 10.0, now),
            progress_update("gauge-l2", 20.0, now)
        ]))
        .await;
    assert_eq!(r["accepted"], 2, "{r}");
    let mut wait = update("gauge-wait", "IN_PROGRESS");
    wait["taskType"] = json!("WAIT");
    wait["waitUntil"] = json!(now + 3_600_000);
    let r = f
        .ingest(&json!([
            progress_update("gauge-f1", 30.0, now),
            progress_update("gauge-f2", 40.0, now),
            wait
        ]))
        .await;
    assert_eq!(r["accepted"], 3, "{r}");

    // the leader shows every task, those taken in by the follower included
    let want = vec![
        ("gauge-f1".to_string(), 0.3),
        ("gauge-f2".to_string(), 0.4),
        ("gauge-l1".to_string(), 0.1),
        ("gauge-l2".to_string(), 0.2),
    ];
    let close = |got: &[(String, f64)], want: &[(String, f64)]| {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| g.0 == w.0 && (g.1 - w.1).abs() < 1e-6)
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let scrape = l.scrape().await;
        let ratios = task_series(&scrape, "taskpulse_task_progress_ratio");
        let tasks = family_sum(&scrape, "taskpulse_tasks");
        let waiting = family_sum(&scrape, "taskpulse_wait_tasks");
        if close(&ratios, &want) && tasks == 5.0 && waiting == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader's state gauges after 4 s: progress {ratios:?}, taskpulse_tasks sum {tasks} (want 5), taskpulse_wait_tasks sum {waiting} (want 1)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // the follower exports no state gauge, but its own ingest counters
    let fs = f.scrape().await;
    for name in [
        "taskpulse_tasks",
        "taskpulse_task_progress_ratio",
        "taskpulse_task_deadline_timestamp_seconds",
        "taskpulse_tasks_stalled",
        "taskpulse_wait_tasks",
        "taskpulse_wait_overdue_tasks",
        "taskpulse_wait_due_next_minute_tasks",
        "taskpulse_worker_tasks",
        "taskpulse_task_predicted_completion_timestamp_seconds",
        "taskpulse_tasks_predicted_timeout",
    ] {
        assert!(
            !family_present(&fs, name),
            "the follower exports {name}: {:?}",
            task_series(&fs, name)
        );
    }
    let accepted = |s: &prometheus_parse::Scrape| {
        metric_value(
            s,
            "taskpulse_updates_total",
            &[("source", "api"), ("outcome", "accepted")],
        )
    };
    assert_eq!(
        accepted(&fs),
        Some(3.0),
        "the follower counts what it took in"
    );
    assert_eq!(
        accepted(&l.scrape().await),
        Some(2.0),
        "the leader counts only what it took in"
    );

    // changes made through the follower reach the leader's gauges: new progress, and a
    // completion that removes the task (counted once, never left behind)
    tokio::time::sleep(Duration::from_millis(250)).await; // past the follower's throttle
    let r = f.ingest(&progress_update("gauge-f1", 85.0, now + 1)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let r = f
        .ingest(&json!([
            status_update("gauge-f2", "COMPLETED", now + 2),
            status_update("gauge-l2", "FAILED", now + 2)
        ]))
        .await;
    assert_eq!(r["accepted"], 2, "{r}");
    let want = vec![
        ("gauge-f1".to_string(), 0.85),
        ("gauge-l1".to_string(), 0.1),
    ];
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let scrape = l.scrape().await;
        let ratios = task_series(&scrape, "taskpulse_task_progress_ratio");
        let tasks = family_sum(&scrape, "taskpulse_tasks");
        if close(&ratios, &want) && tasks == 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader's state gauges 4 s after the follower's changes: progress {ratios:?}, taskpulse_tasks sum {tasks} (want 3)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fs = f.scrape().await;
    assert!(!family_present(&fs, "taskpulse_tasks"));
    assert!(!family_present(&fs, "taskpulse_task_progress_ratio"));

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
