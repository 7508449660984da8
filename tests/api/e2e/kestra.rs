//! The Kestra workload: the dashboards show Kestra's task runs.

use super::*;

/// Panels that stay empty with Kestra input alone, and why: Kestra task runs report no
/// progress (so no progress, prediction, stall or per-task series, and no throttled writes),
/// carry no timeouts, and Kestra has no WAIT queue, worker proxy or lease to repair. Every
/// other panel must show Kestra's task runs, through a real Prometheus, filtered to Kestra's
/// namespace by the `namespace` variable.
const EMPTY_WITH_KESTRA: &[&str] = &[
    // no progress: no per-task series, no stall, no coalesced writes
    "dashboards/taskpulse-overview.json panel `Running tasks` (A)",
    "dashboards/taskpulse-overview.json panel `Running tasks` (B)",
    "dashboards/taskpulse-overview.json panel `Running tasks` (C)",
    "dashboards/taskpulse-overview.json panel `Running tasks` (D)",
    "dashboards/taskpulse-overview.json panel `Running tasks` (E)",
    "dashboards/taskpulse-overview.json panel `Stalled tasks` (A)",
    "dashboards/taskpulse-overview.json panel `Store writes saved by the throttle` (A)",
    "dashboards/taskpulse-task.json panel `Progress of $task_id` (A)",
    "dashboards/taskpulse-task.json panel `Progress` (A)",
    // no timeouts: no deadline, so no prediction against one
    "dashboards/taskpulse-overview.json panel `Tasks predicted to time out` (A)",
    "dashboards/taskpulse-task.json panel `Deadline and predicted completion` (A)",
    "dashboards/taskpulse-task.json panel `Deadline and predicted completion` (B)",
    "dashboards/taskpulse-task.json panel `Deadline` (A)",
    "dashboards/taskpulse-task.json panel `Predicted completion minus deadline` (A)",
    "dashboards/taskpulse-task.json panel `Predicted completion` (A)",
    "dashboards/taskpulse-task.json panel `Predicted minus deadline` (A)",
    "dashboards/taskpulse-task.json panel `Time left to deadline` (A)",
    // no WAIT queue
    "dashboards/taskpulse-overview.json panel `Due within a minute` (A)",
    "dashboards/taskpulse-overview.json panel `Overdue` (A)",
    "dashboards/taskpulse-overview.json panel `Waiting` (A)",
    "dashboards/taskpulse-overview.json panel `WAIT queue depth by workflow type` (A)",
    "dashboards/taskpulse-overview.json panel `WAIT queue depth by workflow type` (B)",
    "dashboards/taskpulse-overview.json panel `WAIT queue depth by workflow type` (C)",
    "dashboards/taskpulse-overview.json panel `Wake-up lag p50 / p90 / p99` (A)",
    "dashboards/taskpulse-overview.json panel `Wake-up lag p50 / p90 / p99` (B)",
    "dashboards/taskpulse-overview.json panel `Wake-up lag p50 / p90 / p99` (C)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_show_kestra_task_runs_through_prometheus() {
    use crate::kestra::{at, attempt, execution, state, task_run, Kestra, WORKER_A, WORKER_B};
    let Some((prometheus, _)) = tools() else {
        return;
    };
    let k = Kestra::new().await;
    k.register_worker(WORKER_A, "worker-a.example").await;
    let t = taskpulse::now_ms() - 20_000;
    let failed_first = attempt(
        &[("RUNNING", &at(t, 1.0)), ("FAILED", &at(t, 2.0))],
        WORKER_A,
    );
    let run = |current: Vec<Value>, st: Value| task_run("tr-k-load", "ex-k1", "load", current, st);
    let done = task_run(
        "tr-k-extract",
        "ex-k1",
        "extract",
        vec![attempt(
            &[("RUNNING", &at(t, 0.1)), ("SUCCESS", &at(t, 0.9))],
            WORKER_A,
        )],
        state(&[
            ("CREATED", &at(t, 0.0)),
            ("RUNNING", &at(t, 0.1)),
            ("SUCCESS", &at(t, 0.9)),
        ]),
    );
    let running = execution(
        "ex-k1",
        vec![
            done.clone(),
            run(
                vec![
                    failed_first.clone(),
                    attempt(&[("RUNNING", &at(t, 3.0))], WORKER_B),
                ],
                state(&[
                    ("CREATED", &at(t, 0.95)),
                    ("RUNNING", &at(t, 1.0)),
                    ("RETRYING", &at(t, 2.1)),
                    ("RUNNING", &at(t, 3.0)),
                ]),
            ),
        ],
        state(&[("CREATED", &at(t, 0.0)), ("RUNNING", &at(t, 0.05))]),
    );
    k.persist(&running).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let kestra_url = k.url.clone();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.kestra.db = Some(kestra_url);
        s.engines.kestra.poll_interval = Duration::from_millis(200);
        // checker passes to show (none of the rules finds anything in Kestra task runs)
        s.check_loop.check_interval = Duration::from_millis(300);
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    let (prom, prom_url) = start_prometheus(
        &client,
        &prometheus,
        dir.path(),
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n",
        app.addr,
        &[],
    )
    .await;
    wait_for_data(
        &client,
        &prom_url,
        "taskpulse_tasks{workflow_type=\"company.team/etl\"}",
        Duration::from_secs(15),
    )
    .await;
    // Kestra finishes the retried task run: a transition, a duration, a finished count
    let finished = execution(
        "ex-k1",
        vec![
            done,
            run(
                vec![
                    failed_first,
                    attempt(
                        &[("RUNNING", &at(t, 3.0)), ("SUCCESS", &at(t, 4.0))],
                        WORKER_B,
                    ),
                ],
                state(&[
                    ("CREATED", &at(t, 0.95)),
                    ("RUNNING", &at(t, 1.0)),
                    ("RETRYING", &at(t, 2.1)),
                    ("RUNNING", &at(t, 3.0)),
                    ("SUCCESS", &at(t, 4.0)),
                ]),
            ),
        ],
        state(&[
            ("CREATED", &at(t, 0.0)),
            ("RUNNING", &at(t, 0.05)),
            ("SUCCESS", &at(t, 4.1)),
        ]),
    );
    k.persist(&finished).await;
    wait_for_data(
        &client,
        &prom_url,
        "taskpulse_task_duration_seconds_count{task_type=\"load\"}",
        Duration::from_secs(15),
    )
    .await;
    // and a new one starts, so the in-flight panels have a task run again
    let next = execution(
        "ex-k2",
        vec![task_run(
            "tr-k-next",
            "ex-k2",
            "extract",
            vec![attempt(&[("RUNNING", &at(t, 5.0))], WORKER_A)],
            state(&[("CREATED", &at(t, 4.9)), ("RUNNING", &at(t, 5.0))]),
        )],
        state(&[("CREATED", &at(t, 4.8)), ("RUNNING", &at(t, 4.85))]),
    );
    k.persist(&next).await;
    // a second `load` finishes a few scrapes later: the duration quantiles need an increase
    let second = |st: &str, at_s: f64| {
        let mut runs = vec![("CREATED", at(t, 5.0)), ("RUNNING", at(t, 5.1))];
        if st == "SUCCESS" {
            runs.push(("SUCCESS", at(t, at_s)));
        }
        let runs: Vec<(&str, &str)> = runs.iter().map(|(s, d)| (*s, d.as_str())).collect();
        execution(
            "ex-k3",
            vec![task_run(
                "tr-k-load2",
                "ex-k3",
                "load",
                vec![attempt(&runs[1..], WORKER_A)],
                state(&runs),
            )],
            state(&runs),
        )
    };
    k.persist(&second("RUNNING", 0.0)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    k.persist(&second("SUCCESS", 9.0)).await;

    let queries = dashboard_queries(
        &format!("http://{}", app.addr),
        &[("namespace", "company.team"), ("task_id", "tr-k-next")],
    );
    let expected: BTreeSet<String> = EMPTY_WITH_KESTRA.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let empty = loop {
        let empty = empty_queries(&client, &prom_url, &queries).await;
        if empty == expected || Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(
        empty,
        expected,
        "panels without data from Kestra's task runs (namespace company.team)\n{}",
        prom.tail()
    );
    // the namespace variable filters: another namespace leaves the Kestra panels empty
    let (place, expr) = queries
        .iter()
        .find(|(_, e)| e.starts_with("sum(taskpulse_tasks{"))
        .expect("the in-flight stat");
    let other = expr.replace("company.team(/.*)?", "elsewhere(/.*)?");
    assert!(
        !matches!(query(&client, &prom_url, &other).await, Ok(r) if has_finite(&r)),
        "{place} with another namespace: {other}"
    );
    drop(prom);
    app.shutdown().await;
}
