//! Every DAG of `tests/airflow/dags/` run by the real Airflow, followed by taskpulse through a
//! read-only role: each transition Airflow writes must show in taskpulse's API within
//! [`TRANSITION_LIMIT`], with the tries, hosts, map indexes, progress, waits and the reopen of
//! a cleared task instance (`docs/engines/airflow.md`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{PgPool, Row};
use tokio::sync::Mutex;

use crate::engine::{self, Airflow};
use crate::helpers::{parse_scrape, Backend, TestApp, TestDb};

/// The run each `@once` DAG gets (its start date as logical date).
const RUN: &str = "scheduled__2025-01-01T00:00:00+00:00";
/// How long after Airflow wrote a finished state taskpulse may show it.
const TRANSITION_LIMIT: Duration = Duration::from_secs(5);
/// How long the engine may take to run its first task (parsing, scheduling, a worker).
const FIRST_TASK: Duration = Duration::from_secs(180);
/// How long any later step may take.
const STEP: Duration = Duration::from_secs(90);

fn id(dag: &str, task: &str, map_index: i32) -> String {
    format!("{dag}/{RUN}/{task}/{map_index}")
}

/// What the watcher saw: per finished (task, state, try) of Airflow's, how long taskpulse took
/// to show it; and the WAIT gauges seen per DAG.
#[derive(Default)]
struct Watched {
    pending: BTreeMap<(String, String, i32), Instant>,
    followed: BTreeSet<(String, String, i32)>,
    latencies: Vec<(String, String, Duration)>,
    waiting_seen: HashMap<String, f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_airflow_is_followed_end_to_end() {
    let Some(bin) = engine::find() else { return };
    let started = Instant::now();
    let mut airflow = Airflow::migrate(&bin).await;
    let db = TestDb::new(Backend::Postgres).await;
    let url = airflow.read_only_url.clone();
    let app = Arc::new(
        TestApp::spawn_with(&db, move |s| {
            s.engines.airflow.db = Some(url);
            s.engines.airflow.poll_interval = Duration::from_millis(200);
        })
        .await,
    );
    // Prometheus scrapes the app from the start, while Airflow comes up
    let scraper = crate::dashboards::Scraper::start(&app).await;
    // blocks while the API server comes up (std threads and sockets)
    tokio::task::block_in_place(|| airflow.start(&app.url("")));
    let watched = Arc::new(Mutex::new(Watched::default()));
    let watcher = tokio::spawn(watch(airflow.pool.clone(), app.clone(), watched.clone()));

    let ok = id("tp_ok", "succeed", -1);
    let view = until(&mut airflow, &app, &ok, FIRST_TASK, |v| {
        v["status"] == "COMPLETED"
    })
    .await;
    eprintln!(
        "airflow: first task instance followed to COMPLETED {:.1} s after the test began",
        started.elapsed().as_secs_f64()
    );
    let host = host_of(&airflow.pool, "tp_ok").await;
    assert_eq!(view["workerId"], host.as_str(), "{view}");
    assert_eq!(view["taskType"], "succeed");
    assert_eq!(view["workflowType"], "tp_ok");
    assert_eq!(view["workflowId"], format!("tp_ok/{RUN}"));
    app.settle().await;
    let to = accepted_statuses(&app.task_by_id(&ok).await);
    assert!(
        to.ends_with(&["IN_PROGRESS".to_string(), "COMPLETED".to_string()]),
        "the running try shows before its end: {to:?}"
    );

    deadline_from_execution_timeout(&mut airflow, &app).await;
    let tries = retried_twice_with_hosts(&mut airflow, &app, &host).await;
    // the status page's task view of it, in a browser, while the other DAGs run
    let (url, flaky, rows) = (app.url(""), id("tp_retry", "flaky", -1), tries.len());
    let page =
        tokio::task::spawn_blocking(move || crate::status_page::task_view(&url, &flaky, rows));
    failed_and_mapped(&mut airflow, &app).await;
    progress_from_the_task(&mut airflow, &app).await;
    waits_followed(&mut airflow, &app, &watched).await;
    cleared_and_run_again(&mut airflow, &app).await;

    // every finished state Airflow wrote showed in taskpulse within the limit
    tokio::time::sleep(TRANSITION_LIMIT).await;
    watcher.abort();
    let w = watched.lock().await;
    assert!(
        w.pending.is_empty(),
        "finished in Airflow, never shown by taskpulse: {:?}",
        w.pending.keys().collect::<Vec<_>>()
    );
    let slowest = w.latencies.iter().map(|l| l.2).max().unwrap_or_default();
    eprintln!(
        "airflow: {} finished states followed, slowest {} ms after Airflow wrote it",
        w.latencies.len(),
        slowest.as_millis()
    );
    // eleven task instances, and the cleared one's second try
    assert_eq!(w.latencies.len(), 12, "{:?}", w.latencies);
    for (task, state, took) in &w.latencies {
        assert!(
            *took <= TRANSITION_LIMIT,
            "{task} {state} showed {} ms after Airflow wrote it",
            took.as_millis()
        );
    }
    drop(w);
    let text = app.metrics_text().await;
    let scrape = parse_scrape(&text);
    let ingested = crate::helpers::metric_value(
        &scrape,
        "taskpulse_updates_total",
        &[("source", "airflow_db"), ("outcome", "accepted")],
    );
    assert!(ingested.is_some_and(|n| n >= 20.0), "{ingested:?}");
    the_page_shows_the_tries(page.await.expect("the browser's task"), &tries);
    if let Some(scraper) = &scraper {
        scraper.check(&app, &id("tp_progress", "crunch", -1)).await;
    }
    airflow.halt();
    stuck_task_instances_are_reported(&airflow, &app).await;
    airflow.stop().await;
}

/// `tp_timeout.bounded` has `execution_timeout=5 min`: its deadline is its start plus that,
/// read from the serialized DAG.
async fn deadline_from_execution_timeout(airflow: &mut Airflow, app: &TestApp) {
    let bounded = id("tp_timeout", "bounded", -1);
    let view = until(airflow, app, &bounded, STEP, |v| v["status"] == "COMPLETED").await;
    assert_eq!(view["timeoutSeconds"], 300, "{view}");
    let start = view["startTime"].as_i64().expect("startTime");
    assert_eq!(view["deadline"], start + 300_000, "{view}");
    let ok = app.task_by_id(&id("tp_ok", "succeed", -1)).await;
    assert!(
        ok["deadline"].is_null(),
        "no execution_timeout, no deadline: {ok}"
    );
}

/// `tp_retry.flaky` fails its first try and succeeds on the second: two attempts, each with
/// its host (the first from `task_instance_history`), exactly as Airflow recorded them, in the
/// answer the status page draws its attempts table from (`GET /api/v1/task?taskId=`: attempt,
/// worker and the worker's host). Returns Airflow's tries.
async fn retried_twice_with_hosts(
    airflow: &mut Airflow,
    app: &TestApp,
    host: &str,
) -> Vec<(i64, String, String)> {
    let flaky = id("tp_retry", "flaky", -1);
    let view = until(airflow, app, &flaky, STEP, |v| v["status"] == "COMPLETED").await;
    assert_eq!(view["retryCount"], 1, "{view}");
    app.settle().await;
    let view = app.task_by_id(&flaky).await;
    let attempts: Vec<(i64, String, String)> = view["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["workerId"].as_str().unwrap_or("").to_string(),
                a["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let recorded = tries_in_airflow(&airflow.pool, "tp_retry").await;
    assert_eq!(
        attempts, recorded,
        "taskpulse's attempts against Airflow's tries: {view}"
    );
    // the page's Host column: the host Airflow recorded for each try, kept by taskpulse
    let hosts: Vec<&str> = view["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["host"].as_str())
        .collect();
    let want: Vec<&str> = recorded.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(hosts, want, "the attempts' hosts: {view}");
    let second = (1, host.to_string(), "COMPLETED".to_string());
    let first = (0, host.to_string(), "FAILED".to_string());
    if recorded.len() == 1 {
        // Airflow failed the first try before it ran (a worker that could not start in time
        // on a starved machine): no host, no history row, nothing for taskpulse to show
        assert_eq!(recorded, [second]);
        eprintln!("airflow: tp_retry's first try never ran; its attempt has no host to show");
    } else {
        assert_eq!(recorded, [first, second]);
    }
    recorded
}

/// The task view of `tp_retry.flaky` in a browser lists each of Airflow's `tries` (attempt,
/// worker, host, status) in its attempts table, as a person reads it.
fn the_page_shows_the_tries(page: Option<Value>, tries: &[(i64, String, String)]) {
    let Some(page) = page else { return };
    let rows: Vec<Vec<String>> = page["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r.as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .take(4)
                .map(|c| c.as_str().unwrap_or("").to_string())
                .collect()
        })
        .collect();
    let want: Vec<Vec<String>> = tries
        .iter()
        .map(|(n, host, status)| vec![n.to_string(), host.clone(), host.clone(), status.clone()])
        .collect();
    assert_eq!(rows, want, "the attempts table of the task view: {page}");
    assert_eq!(page["errors"], serde_json::json!([]), "{page}");
}

/// The tries Airflow recorded for the task instance of `dag` with a host, as taskpulse's
/// attempts: `task_instance_history`, then the live row.
async fn tries_in_airflow(pool: &PgPool, dag: &str) -> Vec<(i64, String, String)> {
    let rows = sqlx::query(
        "SELECT try_number, hostname, state FROM task_instance_history \
         WHERE dag_id = $1 AND hostname IS NOT NULL \
         UNION ALL SELECT try_number, hostname, state FROM task_instance \
         WHERE dag_id = $1 AND hostname IS NOT NULL ORDER BY 1",
    )
    .bind(dag)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            let state = match r.get::<String, _>(2).as_str() {
                "success" => "COMPLETED",
                _ => "FAILED",
            };
            (
                i64::from(r.get::<i32, _>(0) - 1),
                r.get::<String, _>(1),
                state.to_string(),
            )
        })
        .collect()
}

/// `tp_fail.broken` fails (no retries); `tp_mapped.double` runs as three map indexes.
async fn failed_and_mapped(airflow: &mut Airflow, app: &TestApp) {
    let broken = id("tp_fail", "broken", -1);
    let view = until(airflow, app, &broken, STEP, |v| v["status"] == "FAILED").await;
    assert_eq!(view["retryCount"], 0, "{view}");
    for n in 0..3 {
        let task = id("tp_mapped", "double", n);
        let view = until(airflow, app, &task, STEP, |v| v["status"] == "COMPLETED").await;
        assert_eq!(view["iteration"], n, "{view}");
        assert_eq!(view["taskType"], "double");
    }
    let unexpanded = app
        .get(&format!(
            "/api/v1/task?taskId={}",
            urlencode(&id("tp_mapped", "double", -1))
        ))
        .await;
    assert_eq!(
        unexpanded.status(),
        404,
        "no task for the mapped task itself"
    );
}

/// `tp_progress.crunch` posts its progress to taskpulse under its own id while it runs (25, 50,
/// 75 %, 1.5 s apart; every DAG runs at once, so it may have finished by now: its samples
/// tell).
async fn progress_from_the_task(airflow: &mut Airflow, app: &TestApp) {
    let crunch = id("tp_progress", "crunch", -1);
    let view = until(airflow, app, &crunch, STEP, |v| v["status"] == "COMPLETED").await;
    let samples: Vec<f64> = view["progressSamples"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s[1].as_f64())
        .collect();
    assert_eq!(
        samples,
        [25.0, 50.0, 75.0],
        "progress from the task: {view}"
    );
    assert_eq!(view["progressMessage"], "step 3 of 4", "{view}");
    assert_eq!(view["workflowType"], "tp_progress");
}

/// The deferred task instance and the reschedule-mode sensor show in the WAIT gauges while
/// they wait, are followed to success, and their wake-up lag is observed.
async fn waits_followed(airflow: &mut Airflow, app: &TestApp, watched: &Mutex<Watched>) {
    for (dag, task) in [
        ("tp_deferred", "sleep_deferred"),
        ("tp_reschedule", "poke_reschedule"),
    ] {
        let view = until(airflow, app, &id(dag, task, -1), STEP, |v| {
            v["status"] == "COMPLETED" || v["status"] == "FAILED"
        })
        .await;
        let state: String = sqlx::query_scalar("SELECT state FROM task_instance WHERE dag_id = $1")
            .bind(dag)
            .fetch_one(&airflow.pool)
            .await
            .unwrap();
        if view["status"] == "FAILED" && state == "failed" {
            // Airflow's own race (apache/airflow#71172's shape): the next poke's worker was
            // refused while the last one's was finishing, and the sensor marked failed
            eprintln!("airflow: {dag} was failed by Airflow itself; taskpulse shows it so");
        } else {
            assert_eq!(
                (view["status"].as_str(), state.as_str()),
                (Some("COMPLETED"), "success")
            );
        }
        assert_eq!(view["retryCount"], 0, "one try, however many pokes: {view}");
        let seen = watched.lock().await.waiting_seen.get(dag).copied();
        assert_eq!(
            seen,
            Some(1.0),
            "{dag} in taskpulse_wait_tasks while it waited"
        );
        let text = app.metrics_text().await;
        let prefix = format!("taskpulse_wait_wakeup_lag_seconds_count{{workflow_type=\"{dag}\"}} ");
        let woke: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.trim().parse().ok());
        assert!(
            woke.is_some_and(|n| n >= 1.0),
            "{dag} wake-up lag: {woke:?}"
        );
    }
}

/// `airflow tasks clear` runs a finished task instance again: taskpulse reopens it and
/// follows the new try.
async fn cleared_and_run_again(airflow: &mut Airflow, app: &TestApp) {
    let once = id("tp_clear", "once", -1);
    until(airflow, app, &once, STEP, |v| v["status"] == "COMPLETED").await;
    airflow.cli(&["tasks", "clear", "tp_clear", "--yes"]);
    let view = until(airflow, app, &once, STEP, |v| {
        v["status"] == "COMPLETED" && v["retryCount"] == 1
    })
    .await;
    assert!(view["reopenedAt"].is_i64(), "{view}");
    app.settle().await;
    let lines: Vec<(String, String)> = app.task_by_id(&once).await["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["outcome"].as_str().unwrap_or("").to_string(),
                h["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        lines.contains(&(
            "reopened".to_string(),
            "reopened by the engine (clear)".to_string()
        )),
        "{lines:?}"
    );
    let reopens = app
        .metric_value("taskpulse_task_reopens_total", &[("kind", "clear")])
        .await;
    assert_eq!(reopens, Some(1.0));
}

/// A task instance left `queued` for an hour (what a lost executor leaves, apache/airflow#23432)
/// and one `running` whose heartbeat stopped an hour ago (a dead worker) are reported by
/// `airflow_queued_too_long` and `airflow_heartbeat_stopped` with both sides; two tries whose
/// success turned to a failure in the same try by `airflow_success_overwritten`; and nothing
/// is repaired. Run with Airflow stopped, so its own handling does not move the rows meanwhile:
/// the rows are set as Airflow leaves them (`docs/engines/airflow.md` §4.4, §9).
async fn stuck_task_instances_are_reported(airflow: &Airflow, app: &TestApp) {
    use taskpulse::checker::{CheckSettings, Checker, CheckerMetrics, Context};
    use taskpulse::engines::airflow::{Airflow as Engine, AirflowSettings};
    use taskpulse::engines::Engine as _;
    for sql in [
        "UPDATE task_instance SET state = 'queued', queued_dttm = now() - interval '1 hour', \
         start_date = NULL, end_date = NULL, hostname = NULL, pid = NULL WHERE dag_id = 'tp_ok'",
        "UPDATE task_instance SET state = 'running', end_date = NULL, \
         last_heartbeat_at = now() - interval '1 hour' WHERE dag_id = 'tp_fail'",
        // a user marked the succeeded `tp_timeout.bounded` failed through the REST API
        // (`mark_tasks.set_state`: same try, end kept, nothing archived) with its audit line
        "UPDATE task_instance SET state = 'failed', updated_at = now() \
         WHERE dag_id = 'tp_timeout'",
        "INSERT INTO log (dttm, dag_id, task_id, run_id, event, owner, extra) \
         SELECT now(), dag_id, task_id, run_id, 'patch_task_instance', 'admin', \
         '{\"new_state\": \"failed\", \"method\": \"PATCH\"}' \
         FROM task_instance WHERE dag_id = 'tp_timeout'",
        // apache/airflow#71172: the executor's success for a poke of `tp_reschedule`, drained
        // once the next poke was scheduled in the same try, taken as a task killed externally:
        // `state mismatch`, then `handle_failure` (`failed`, no tries left)
        "UPDATE task_instance SET state = 'failed', end_date = now(), updated_at = now() \
         WHERE dag_id = 'tp_reschedule'",
        "INSERT INTO log (dttm, dag_id, task_id, run_id, map_index, try_number, event, extra) \
         SELECT now(), dag_id, task_id, run_id, map_index, try_number, e.event, e.extra \
         FROM task_instance, (VALUES (1, 'state mismatch', 'Executor \
         LocalExecutor(parallelism=32) reported that the task instance <TaskInstance: \
         tp_reschedule.poke_reschedule [scheduled]> finished with state success, but the \
         task instance''s state attribute is scheduled.'), (2, 'failed', NULL)) \
         AS e(n, event, extra) WHERE dag_id = 'tp_reschedule' ORDER BY e.n",
        // a failure in a later try than the one taskpulse followed is neither
        "UPDATE task_instance SET state = 'failed', try_number = try_number + 1, \
         end_date = now(), updated_at = now() WHERE dag_id = 'tp_mapped' AND map_index = 1",
    ] {
        sqlx::query(sql).execute(&airflow.pool).await.unwrap();
    }
    let settings = AirflowSettings {
        db: Some(airflow.read_only_url.clone()),
        ..Default::default()
    };
    let checker = Checker::new(
        Engine::new(&settings).rules(),
        CheckerMetrics::unregistered(),
        taskpulse::store::StoreMetrics::unregistered(),
    );
    let ctx = Context {
        store: app.store.clone(),
        tracker: Some(app.tracker.clone()),
        now: taskpulse::now_ms(),
        settings: CheckSettings {
            repair: true,
            max_repairs_per_run: 100,
            lease_grace: Duration::from_secs(5),
            wait_grace: Duration::from_secs(30),
            retention: Duration::ZERO,
        },
    };
    let report = checker.run_pass(&ctx).await.expect("a checker pass");
    for (rule, task, held) in [
        (
            "airflow_queued_too_long",
            id("tp_ok", "succeed", -1),
            "COMPLETED",
        ),
        (
            "airflow_heartbeat_stopped",
            id("tp_fail", "broken", -1),
            "FAILED",
        ),
    ] {
        let found: Vec<_> = report
            .violations
            .iter()
            .filter(|v| v.rule == rule)
            .collect();
        assert_eq!(found.len(), 1, "{rule}: {:?}", report.violations);
        let v = found[0];
        assert_eq!(v.task_id, task);
        assert_eq!(v.evidence["taskpulse"]["status"], held, "{}", v.evidence);
        let overdue = v.evidence["airflow"]["forSeconds"].as_f64().unwrap_or(0.0);
        assert!(overdue >= 3599.0, "{}", v.evidence);
    }
    success_overwritten_is_reported(&report.violations);
    assert!(report.repairs.is_empty(), "report only");
}

/// `airflow_success_overwritten` names `tp_timeout.bounded` (taskpulse holds its try 1
/// `COMPLETED`, Airflow's row now `failed` in try 1, marked so through the REST API) and
/// `tp_reschedule.poke_reschedule` (Airflow's `log` has the executor's stale success for try 1
/// taken as a state mismatch), and not `tp_mapped.double[1]`, failed in a try taskpulse never
/// saw.
fn success_overwritten_is_reported(violations: &[taskpulse::checker::Violation]) {
    let mut found: Vec<_> = violations
        .iter()
        .filter(|v| v.rule == "airflow_success_overwritten")
        .collect();
    found.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let ids: Vec<&str> = found.iter().map(|v| v.task_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            id("tp_reschedule", "poke_reschedule", -1),
            id("tp_timeout", "bounded", -1)
        ],
        "{violations:?}"
    );
    for (v, shape, events) in [
        (
            found[0],
            "staleExecutorSuccess",
            &["state mismatch", "failed"][..],
        ),
        (found[1], "overwritten", &["patch_task_instance"][..]),
    ] {
        let (airflow, held) = (&v.evidence["airflow"], &v.evidence["taskpulse"]);
        assert_eq!(v.evidence["shape"], shape, "{}", v.evidence);
        assert_eq!(v.evidence["try"], 1, "{}", v.evidence);
        assert_eq!(airflow["state"], "failed", "{}", v.evidence);
        assert_eq!(airflow["archived"], false, "{}", v.evidence);
        let logged: Vec<&str> = airflow["log"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["event"].as_str())
            .collect();
        // Airflow's own lines of that try, if any, come before the replayed ones
        assert!(logged.ends_with(events), "{}", v.evidence);
        assert_eq!(held["retryCount"], 0, "{}", v.evidence);
        assert!(held["workerId"].is_string(), "{}", v.evidence);
    }
    assert_eq!(found[1].evidence["taskpulse"]["status"], "COMPLETED");
}

/// Polls taskpulse's view of `task` until `done` holds; on timeout, fails with the view and
/// Airflow's logs. Checks that Airflow's processes are alive meanwhile.
async fn until(
    airflow: &mut Airflow,
    app: &TestApp,
    task: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        airflow.check_alive();
        let resp = app
            .get(&format!("/api/v1/task?taskId={}", urlencode(task)))
            .await;
        if resp.status() == 200 {
            last = resp.json().await.unwrap();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = task_instances(&airflow.pool).await;
    panic!(
        "{task}: not as expected within {} s; taskpulse shows {last}\nAirflow's task_instance:\n{rows}\n{}",
        limit.as_secs(),
        airflow.logs()
    );
}

/// Every 100 ms: the finished states in Airflow's `task_instance` not seen before, checked
/// against taskpulse until it shows them; and the WAIT gauges per DAG.
async fn watch(pool: PgPool, app: Arc<TestApp>, watched: Arc<Mutex<Watched>>) {
    loop {
        let rows = sqlx::query(
            "SELECT dag_id, run_id, task_id, map_index, state, try_number FROM task_instance \
             WHERE state IN ('success', 'failed', 'skipped', 'upstream_failed', 'removed')",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let now = Instant::now();
        let mut w = watched.lock().await;
        for r in rows {
            let task = format!(
                "{}/{}/{}/{}",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<String, _>(2),
                r.get::<i32, _>(3)
            );
            let key = (task, r.get::<String, _>(4), r.get::<i32, _>(5));
            if !w.followed.contains(&key) {
                w.pending.entry(key).or_insert(now);
            }
        }
        let pending: Vec<((String, String, i32), Instant)> =
            w.pending.iter().map(|(k, v)| (k.clone(), *v)).collect();
        drop(w);
        for ((task, state, try_number), since) in pending {
            if shows(&app, &task, &state, try_number).await {
                let mut w = watched.lock().await;
                let key = (task.clone(), state.clone(), try_number);
                w.pending.remove(&key);
                w.followed.insert(key);
                w.latencies.push((task, state, since.elapsed()));
            }
        }
        let text = app.metrics_text().await;
        let scrape = parse_scrape(&text);
        for dag in ["tp_deferred", "tp_reschedule"] {
            let n = crate::helpers::metric_value(
                &scrape,
                "taskpulse_wait_tasks",
                &[("workflow_type", dag)],
            );
            if let Some(n) = n.filter(|n| *n > 0.0) {
                watched.lock().await.waiting_seen.insert(dag.into(), n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether taskpulse shows `task` in Airflow's finished `state` of try `try_number`: now, or
/// in its history (it may have been cleared since).
async fn shows(app: &TestApp, task: &str, state: &str, try_number: i32) -> bool {
    let want = match state {
        "success" => "COMPLETED",
        "failed" | "upstream_failed" => "FAILED",
        "skipped" => "SKIPPED",
        _ => "CANCELED",
    };
    let resp = app
        .get(&format!("/api/v1/task?taskId={}", urlencode(task)))
        .await;
    if resp.status() != 200 {
        return false;
    }
    let v: Value = resp.json().await.unwrap_or_default();
    if v["status"] == want && v["retryCount"] == try_number - 1 {
        return true;
    }
    v["retryCount"]
        .as_i64()
        .is_some_and(|n| n >= i64::from(try_number))
        && accepted_statuses(&v).iter().any(|s| s == want)
}

/// The statuses of the accepted transitions, oldest first.
fn accepted_statuses(view: &Value) -> Vec<String> {
    let mut out: Vec<String> = view["history"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|h| h["outcome"] == "accepted")
        .filter_map(|h| h["to"].as_str().map(str::to_string))
        .collect();
    out.reverse();
    out
}

async fn host_of(pool: &PgPool, dag: &str) -> String {
    sqlx::query_scalar("SELECT hostname FROM task_instance WHERE dag_id = $1")
        .bind(dag)
        .fetch_one(pool)
        .await
        .expect("the task instance's host")
}

async fn task_instances(pool: &PgPool) -> String {
    let rows = sqlx::query(
        "SELECT dag_id || ' ' || task_id || ' ' || map_index || ' ' || coalesce(state, 'none') \
         || ' try ' || try_number FROM task_instance ORDER BY dag_id, task_id, map_index",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

trait TaskById {
    async fn task_by_id(&self, id: &str) -> Value;
}

impl TaskById for TestApp {
    /// `GET /api/v1/task?taskId=` (an Airflow id holds `/` and `+`).
    async fn task_by_id(&self, id: &str) -> Value {
        let resp = self
            .get(&format!("/api/v1/task?taskId={}", urlencode(id)))
            .await;
        assert_eq!(resp.status(), 200, "task {id}");
        resp.json().await.unwrap()
    }
}
