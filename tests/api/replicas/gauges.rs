//! The state gauges: exported by the leader only, each task counted once.

use super::*;

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
