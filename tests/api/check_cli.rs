//! `taskpulse check [--repair] [--json]` as a user runs it (`docs/contract.md` §1, the checker's
//! metrics in `docs/metrics.md`): one pass
//! over the store, exit 0 (clean), 1 (violations) or 2 (error). Rows are written straight into
//! a fresh store so each case holds exactly the state it names; repairs are checked in the
//! store itself and in its audit table.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskpulse::model::Status;
use taskpulse::model::TaskRecord;
use taskpulse::store::{Batch, Store};

use crate::helpers::{stored_version, update, Backend, TestDb};
use crate::process::{run, Server, EXIT_TIMEOUT};

/// A task row as taskpulse would have stored it, seen last at `last_seen`.
fn row(id: &str, workflow: &str, task_type: &str, status: Status, last_seen: i64) -> TaskRecord {
    TaskRecord {
        task_id: id.into(),
        workflow_id: workflow.into(),
        task_type: task_type.into(),
        workflow_type: Some("media".into()),
        reference_task_name: Some(format!("{id}_ref").into()),
        seq: None,
        iteration: None,
        retry_count: Some(0),
        status,
        progress: None,
        progress_message: None,
        worker_id: Some("worker-1".into()),
        start_time: None,
        update_time: Some(last_seen),
        timeout_seconds: None,
        response_timeout_seconds: None,
        wait_until: None,
        parent_task_id: None,
        iteration_value: None,
        end_time: None,
        reopened_at: None,
        first_seen: last_seen,
        last_seen,
        progress_changed: last_seen,
        terminal_at: status.is_terminal().then_some(last_seen),
    }
}

/// A migrated, empty store.
async fn migrated(backend: Backend) -> (TestDb, Store) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    store.migrate().await.expect("migrate");
    (db, store)
}

async fn write(store: &Store, tasks: Vec<TaskRecord>) {
    let conflicts = store
        .write_batch(&Batch {
            tasks,
            ..Default::default()
        })
        .await
        .expect("write rows");
    assert!(conflicts.is_empty(), "rows not written: {conflicts:?}");
}

/// `taskpulse check ARGS --database URL`: (exit code, stdout, stderr).
async fn check(cwd: &Path, url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["check", "--database", url];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run(cwd, &all, &[], EXIT_TIMEOUT).await;
    (status.code(), stdout, stderr)
}

fn parse_json(stdout: &str, stderr: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

/// Violations in a `--json` report as (rule, taskId), sorted.
fn violations(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no `violations` array: {report}"))
        .iter()
        .map(|v| {
            (
                v["rule"].as_str().unwrap_or("").to_string(),
                v["taskId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(rule: &str, task: &str) -> (String, String) {
    (rule.to_string(), task.to_string())
}

/// Exit 0 and a clean summary on a freshly migrated store.
async fn check_is_clean_after_migrate(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend).await;
    let (status, stdout, stderr) = run(
        dir.path(),
        &["migrate", "--database", db.url.as_str()],
        &[],
        EXIT_TIMEOUT,
    )
    .await;
    assert_eq!(status.code(), Some(0), "migrate: {stdout}\n{stderr}");

    let (code, stdout, stderr) = check(dir.path(), &db.url, &[]).await;
    assert_eq!(
        code,
        Some(0),
        "check on a clean store:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("0 violation(s)"),
        "no clean summary:\n{stdout}\nstderr:\n{stderr}"
    );

    let (code, stdout, stderr) = check(dir.path(), &db.url, &["--json", "--repair"]).await;
    assert_eq!(
        code,
        Some(0),
        "check --json --repair:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = parse_json(&stdout, &stderr);
    assert_eq!(report["violations"], json!([]), "{report}");
    assert_eq!(report["repairs"], json!([]), "{report}");
    assert_eq!(report["skipped"], 0, "{report}");
}
crate::store_test!(check_is_clean_after_migrate);

/// A store written by `serve` that saw only healthy tasks is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_clean_after_serving_healthy_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let server = Server::start(
        dir.path(),
        &["--database", &db.url, "--check-interval", "0"],
        &[],
    )
    .await;
    let now = taskpulse::now_ms();
    let mut running = update("healthy-1", "IN_PROGRESS");
    running["progressPercent"] = json!(40.0);
    running["startTime"] = json!(now - 1_000);
    running["timeoutSeconds"] = json!(3600);
    running["responseTimeoutSeconds"] = json!(600);
    running["seq"] = json!(1);
    // A finished task of another workflow. (In the same workflow, a finished seq 2 that
    // appeared after seq 1's last update, with seq 1 still running, is the conductor-oss#176
    // shape that `successor_finished` reports.)
    let mut done = update("healthy-2", "COMPLETED");
    done["seq"] = json!(2);
    let mut waiting = update("healthy-wait", "IN_PROGRESS");
    waiting["taskType"] = json!("WAIT");
    waiting["waitUntil"] = json!(now + 3_600_000);
    let r = server.ingest(&json!([running, done, waiting])).await;
    assert_eq!(r["accepted"], 3, "{r}");
    let (status, stderr) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");

    let (code, stdout, stderr) = check(dir.path(), &db.url, &["--lease-grace", "0s"]).await;
    assert_eq!(
        code,
        Some(0),
        "check after healthy tasks:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("0 violation(s)"), "{stdout}");
}

/// A silent task past its deadline: exit 1 naming `lease_expired`; without --repair nothing
/// changes; `--repair --json` repairs it (TIMED_OUT, audited with before/after/evidence); a
/// second `--repair` finds the store clean.
async fn check_reports_then_repairs_lease_expired_idempotently(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = migrated(backend).await;
    let now = taskpulse::now_ms();
    let mut expired = row(
        "expired-1",
        "wf-expired",
        "encode",
        Status::InProgress,
        now - 600_000,
    );
    expired.start_time = Some(now - 3_600_000);
    expired.timeout_seconds = Some(60);
    expired.response_timeout_seconds = Some(1);
    expired.progress = Some(30.0);
    let mut healthy = row(
        "alive-1",
        "wf-alive",
        "encode",
        Status::InProgress,
        now - 1_000,
    );
    healthy.start_time = Some(now - 2_000);
    healthy.timeout_seconds = Some(3600);
    healthy.response_timeout_seconds = Some(600);
    write(&store, vec![expired, healthy]).await;
    let version = stored_version(&store, "expired-1").await;

    // report only
    let (code, stdout, stderr) = check(dir.path(), &db.url, &["--lease-grace", "0s"]).await;
    assert_eq!(
        code,
        Some(1),
        "violations found:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("lease_expired") && stdout.contains("expired-1"),
        "the finding names the rule and the task:\n{stdout}"
    );
    assert!(
        !stdout.contains("alive-1"),
        "a healthy task is reported:\n{stdout}"
    );
    let (code, stdout, stderr) =
        check(dir.path(), &db.url, &["--lease-grace", "0s", "--json"]).await;
    assert_eq!(code, Some(1), "{stdout}\nstderr:\n{stderr}");
    let report = parse_json(&stdout, &stderr);
    assert_eq!(
        violations(&report),
        vec![pair("lease_expired", "expired-1")]
    );
    assert_eq!(
        report["repairs"],
        json!([]),
        "no repair without --repair: {report}"
    );
    assert_eq!(report["skipped"], 1, "{report}");
    let evidence = &report["violations"][0]["evidence"];
    assert_eq!(evidence["status"], "IN_PROGRESS", "{evidence}");
    assert_eq!(evidence["inferred"], true, "{evidence}");
    let stored = store.get_task("expired-1").await.unwrap().unwrap();
    assert_eq!(
        stored.status,
        Status::InProgress,
        "report only changed the row"
    );
    assert_eq!(stored_version(&store, "expired-1").await, version);
    assert!(store.list_repairs(10, None).await.unwrap().is_empty());

    // repair
    let (code, stdout, stderr) = check(
        dir.path(),
        &db.url,
        &["--lease-grace", "0s", "--repair", "--json"],
    )
    .await;
    assert_eq!(
        code,
        Some(1),
        "violations were found (and repaired):\n{stdout}\nstderr:\n{stderr}"
    );
    let report = parse_json(&stdout, &stderr);
    assert_eq!(
        violations(&report),
        vec![pair("lease_expired", "expired-1")]
    );
    let repairs = report["repairs"].as_array().expect("repairs array");
    assert_eq!(repairs.len(), 1, "{report}");
    let audit = &repairs[0];
    assert_eq!(audit["rule"], "lease_expired", "{audit}");
    assert_eq!(audit["taskId"], "expired-1", "{audit}");
    assert_eq!(audit["workflowId"], "wf-expired", "{audit}");
    assert_eq!(audit["outcome"], "repaired", "{audit}");
    assert_eq!(audit["before"]["status"], "IN_PROGRESS", "{audit}");
    assert_eq!(audit["after"]["status"], "TIMED_OUT", "{audit}");
    assert_eq!(audit["evidence"]["inferred"], true, "{audit}");
    assert!(audit["at"].as_i64().is_some_and(|t| t >= now), "{audit}");
    assert!(
        audit["detail"]
            .as_str()
            .is_some_and(|d| d.contains("inferred")),
        "the audit says the status was inferred: {audit}"
    );
    assert_eq!(report["skipped"], 0, "{report}");

    let stored = store.get_task("expired-1").await.unwrap().unwrap();
    assert_eq!(stored.status, Status::TimedOut, "{stored:?}");
    assert!(stored.terminal_at.is_some(), "{stored:?}");
    assert_eq!(stored_version(&store, "expired-1").await, version + 1);
    let alive = store.get_task("alive-1").await.unwrap().unwrap();
    assert_eq!(
        alive.status,
        Status::InProgress,
        "a healthy task was touched"
    );
    let trail = store.list_repairs(10, None).await.unwrap();
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(
        (
            trail[0].rule.as_str(),
            trail[0].task_id.as_str(),
            trail[0].outcome.as_str()
        ),
        ("lease_expired", "expired-1", "repaired")
    );

    // idempotent: the repaired row no longer matches
    let (code, stdout, stderr) =
        check(dir.path(), &db.url, &["--lease-grace", "0s", "--repair"]).await;
    assert_eq!(
        code,
        Some(0),
        "after the repair:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("0 violation(s)"), "{stdout}");
    assert_eq!(stored_version(&store, "expired-1").await, version + 1);
    assert_eq!(store.list_repairs(10, None).await.unwrap().len(), 1);
    store.close().await;
}
crate::store_test!(check_reports_then_repairs_lease_expired_idempotently);

/// Errors exit 2: an unreachable database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_2_when_the_database_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (status, stdout, stderr) = run(
        dir.path(),
        &["check", "--database", "postgres://postgres@127.0.0.1:1/x"],
        &[],
        Duration::from_secs(30),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        status.code(),
        Some(2),
        "unreachable database ({took:?}):\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("error"), "{stderr}");
    eprintln!("check against a refused port failed after {took:?}");
}

/// Errors exit 2: a store without the schema (never migrated).
async fn check_exits_2_on_an_unmigrated_store(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend).await;
    for args in [&[][..], &["--repair", "--json"][..]] {
        let (code, stdout, stderr) = check(dir.path(), &db.url, args).await;
        assert_eq!(
            code,
            Some(2),
            "unmigrated store, check {args:?}:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(stderr.contains("error"), "{stderr}");
    }
}
crate::store_test!(check_exits_2_on_an_unmigrated_store);

/// On a store that was never migrated, the error says what to do, as `Store::ready` does for a
/// partly migrated one ("run `taskpulse migrate`"), rather than a raw "no such table".
async fn check_on_an_unmigrated_store_says_to_run_migrate(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend).await;
    let (code, stdout, stderr) = check(dir.path(), &db.url, &[]).await;
    assert_eq!(code, Some(2), "{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("taskpulse migrate"),
        "the message should tell the user to run `taskpulse migrate`:\n{stderr}"
    );
}
crate::store_test!(check_on_an_unmigrated_store_says_to_run_migrate);

/// `successor_finished` and `wait_overdue` are reported (exit 1) and never repaired, even with
/// --repair: there is no safe repair without the engine.
async fn report_only_rules_are_never_repaired(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = migrated(backend).await;
    let now = taskpulse::now_ms();
    let mut stuck = row(
        "succ-a",
        "wf-succ",
        "encode",
        Status::InProgress,
        now - 60_000,
    );
    stuck.seq = Some(1);
    stuck.iteration = Some(2);
    let mut next = row(
        "succ-b",
        "wf-succ",
        "publish",
        Status::Completed,
        now - 20_000,
    );
    next.seq = Some(2);
    next.iteration = Some(2);
    next.first_seen = now - 30_000;
    let mut wait = row(
        "wait-1",
        "wf-wait",
        "WAIT",
        Status::InProgress,
        now - 7_200_000,
    );
    wait.wait_until = Some(now - 3_600_000);
    write(&store, vec![stuck, next, wait]).await;
    let versions = [
        stored_version(&store, "succ-a").await,
        stored_version(&store, "succ-b").await,
        stored_version(&store, "wait-1").await,
    ];

    let (code, stdout, stderr) = check(dir.path(), &db.url, &["--repair", "--json"]).await;
    assert_eq!(code, Some(1), "{stdout}\nstderr:\n{stderr}");
    let report = parse_json(&stdout, &stderr);
    assert_eq!(
        violations(&report),
        vec![
            pair("successor_finished", "succ-a"),
            pair("wait_overdue", "wait-1")
        ],
        "{report}"
    );
    assert_eq!(
        report["repairs"],
        json!([]),
        "report-only rules repaired: {report}"
    );
    let succ = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["rule"] == "successor_finished")
        .unwrap();
    assert_eq!(succ["evidence"]["task"]["taskId"], "succ-a", "{succ}");
    assert_eq!(succ["evidence"]["successor"]["taskId"], "succ-b", "{succ}");
    assert_eq!(
        succ["evidence"]["successor"]["status"], "COMPLETED",
        "{succ}"
    );

    let (code, stdout, stderr) = check(dir.path(), &db.url, &["--repair"]).await;
    assert_eq!(code, Some(1), "{stdout}\nstderr:\n{stderr}");
    for line in stdout.lines().filter(|l| l.starts_with(['s', 'w'])) {
        assert!(
            line.ends_with("reported"),
            "not report-only: {line}\n{stdout}"
        );
    }
    assert!(stdout.contains("2 violation(s); 0 repaired"), "{stdout}");

    let after = [
        stored_version(&store, "succ-a").await,
        stored_version(&store, "succ-b").await,
        stored_version(&store, "wait-1").await,
    ];
    assert_eq!(after, versions, "a report-only rule changed a row");
    assert_eq!(
        store.get_task("succ-a").await.unwrap().unwrap().status,
        Status::InProgress
    );
    assert_eq!(
        store.get_task("wait-1").await.unwrap().unwrap().status,
        Status::InProgress
    );
    assert!(store.list_repairs(10, None).await.unwrap().is_empty());
    store.close().await;
}
crate::store_test!(report_only_rules_are_never_repaired);
