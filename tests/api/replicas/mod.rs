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

mod conflicts;
mod gauges;
mod leadership;

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
