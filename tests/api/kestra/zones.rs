//! Kestra's `start_date`/`end_date` are `TIMESTAMP` columns generated in the session zone of
//! the writer, which pgjdbc takes from Kestra's JVM (`docs/engines/kestra.md` §1.3): Kestra
//! here runs its sessions west of UTC, east of it and in UTC, and writes as
//! `PostgresRepository.persist` does.

use std::time::Duration;

use crate::conductor_tail::eventually;
use crate::helpers::{Backend, TestApp, TestDb};
use crate::process::{free_addr, run, EXIT_TIMEOUT};

use super::{at, attempt, execution, state, task_run, Kestra, WORKER_A};

/// An execution with one task run, whose (state, seconds after `t`) histories are `steps`.
fn one_run(id: &str, t: i64, steps: &[(&str, f64)]) -> serde_json::Value {
    let h: Vec<(&str, String)> = steps.iter().map(|(s, x)| (*s, at(t, *x))).collect();
    let h: Vec<(&str, &str)> = h.iter().map(|(s, d)| (*s, d.as_str())).collect();
    let run = task_run(
        &format!("tr-{id}"),
        id,
        "extract",
        vec![attempt(&h[h.len().saturating_sub(2)..], WORKER_A)],
        state(&h),
    );
    execution(id, vec![run], state(&h))
}

async fn followed_in(zone: &str) {
    let k = Kestra::in_zone(zone).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let t = taskpulse::now_ms() - 5_000;
    k.persist(&one_run(
        "ex-long",
        t,
        &[("CREATED", 0.0), ("RUNNING", 0.1)],
    ))
    .await;
    let url = k.url.clone();
    let zone_setting = zone.to_string();
    let app = TestApp::spawn_with(&db, move |s| {
        s.engines.kestra.db = Some(url);
        s.engines.kestra.poll_interval = Duration::from_millis(200);
        s.engines.kestra.time_zone = zone_setting;
    })
    .await;
    eventually(&app, "tr-ex-long", "running", |v| {
        v["status"] == "IN_PROGRESS"
    })
    .await;
    // created and ended between two polls: never in the active set, found by `end_date` only
    let now = taskpulse::now_ms();
    let short = one_run(
        "ex-short",
        now,
        &[("CREATED", 0.0), ("RUNNING", 0.01), ("SUCCESS", 0.05)],
    );
    k.persist(&short).await;
    eventually(
        &app,
        "tr-ex-short",
        &format!("ended between polls, Kestra in {zone}"),
        |v| v["status"] == "COMPLETED",
    )
    .await;
    k.persist(&one_run(
        "ex-long",
        t,
        &[("CREATED", 0.0), ("RUNNING", 0.1), ("FAILED", 5.0)],
    ))
    .await;
    eventually(&app, "tr-ex-long", "failed", |v| v["status"] == "FAILED").await;
    let failed = app
        .metric_value("taskpulse_kestra_db_polls_total", &[("outcome", "error")])
        .await
        .unwrap_or(0.0);
    assert_eq!(failed, 0.0, "no poll failed in {zone}");
}

/// West of UTC: Kestra's `end_date` is hours behind UTC wall time, so a window computed in
/// UTC never reaches the executions that just ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kestra_west_of_utc() {
    followed_in("America/Los_Angeles").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kestra_east_of_utc() {
    followed_in("Asia/Tokyo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kestra_in_utc() {
    followed_in("UTC").await;
}

/// Kestra's JVM in a zone that `--kestra-db-time-zone` doesn't name: the real binary refuses
/// to start, naming the setting and the offset the rows show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_zone_than_the_setting_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestDb::new(Backend::Sqlite).await;
    for (zone, setting, shown) in [
        ("America/Los_Angeles", "UTC", "UTC-0"),
        ("Asia/Tokyo", "America/Los_Angeles", "UTC+09:00"),
    ] {
        let k = Kestra::in_zone(zone).await;
        let t = taskpulse::now_ms();
        k.persist(&one_run("ex-1", t, &[("CREATED", 0.0), ("RUNNING", 0.1)]))
            .await;
        let listen = free_addr().to_string();
        let args = [
            "serve",
            "--listen",
            &listen,
            "--database",
            &store.url,
            "--kestra-db",
            &k.url,
            "--kestra-db-time-zone",
            setting,
        ];
        let (status, _, stderr) = run(dir.path(), &args, &[], EXIT_TIMEOUT).await;
        assert!(
            !status.success(),
            "Kestra in {zone}, set {setting}: {status}\n{stderr}"
        );
        assert!(
            stderr.contains("--kestra-db-time-zone") && stderr.contains(shown),
            "Kestra in {zone}: the message names the setting and {shown}:\n{stderr}"
        );
    }
    // a zone the database doesn't know is refused by name
    let k = Kestra::new().await;
    let listen = free_addr().to_string();
    let args = [
        "serve",
        "--listen",
        &listen,
        "--database",
        &store.url,
        "--kestra-db",
        &k.url,
        "--kestra-db-time-zone",
        "Mars/Olympus",
    ];
    let (status, _, stderr) = run(dir.path(), &args, &[], EXIT_TIMEOUT).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("Mars/Olympus"), "{stderr}");
}

/// Kestra moved to another zone while taskpulse runs (no rows at start to check against):
/// the first row written in it makes the polls fail, `/readyz` 503 naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kestra_moving_zone_makes_readyz_name_the_setting() {
    let mut k = Kestra::new().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = super::app_on(&k, &db).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    k.reconnect_in("America/Los_Angeles").await;
    let t = taskpulse::now_ms();
    k.persist(&one_run(
        "ex-moved",
        t,
        &[("CREATED", 0.0), ("RUNNING", 0.1)],
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.get("/readyz").await;
        let (code, body) = (r.status().as_u16(), r.text().await.unwrap());
        if code == 503 {
            assert!(
                body.contains("--kestra-db-time-zone") && body.contains("UTC-0"),
                "{body}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
