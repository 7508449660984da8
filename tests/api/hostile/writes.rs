//! What store writes an update may cost: rejected updates are folded into one history line
//! per task and interval, a non-terminal status or worker that flaps is throttled like
//! progress, history and attempts keep the newest N per task, and `--max-pending-writes` holds
//! across concurrent bodies.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::{family_sum, ndjson, post, serve};
use crate::helpers::update;
use crate::process::Server;

async fn sqlite(dir: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("t.db").display()))
        .await
        .unwrap()
}

async fn count(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Sends `lines` as NDJSON bodies of `per_body` lines; fails the test unless each is 200.
async fn send_all(server: &Server, lines: Vec<Value>, per_body: usize) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for body in lines.chunks(per_body) {
        let (status, text) = post(
            &client,
            &server.url("/api/v1/updates"),
            ndjson(body.iter().cloned()),
            "application/x-ndjson",
        )
        .await;
        assert_eq!(status, 200, "{text}");
        answers.push(serde_json::from_str(&text).unwrap());
    }
    answers
}

fn at(id: &str, status: &str, update_time: i64) -> Value {
    let mut u = update(id, status);
    u["updateTime"] = json!(update_time);
    u
}

/// 40,000 stale updates over 2,000 in-flight tasks, with a write queue of 1,000: every one is
/// counted, none is refused for want of room, and the store gets one folded history line per
/// task, not a row per rejection. A good completion in the middle of the flood is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejected_updates_costs_one_history_line_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &[
            "--max-pending-writes",
            "1000",
            "--progress-min-interval",
            "1h",
        ],
    )
    .await;
    const TASKS: usize = 2_000;
    const ROUNDS: usize = 20;
    let ids: Vec<String> = (0..TASKS).map(|i| format!("t{i}")).collect();
    send_all(
        &server,
        ids.iter().map(|id| at(id, "IN_PROGRESS", 10_000)).collect(),
        1000,
    )
    .await;
    let writes_before = family_sum(&server.scrape().await, "taskpulse_store_writes_total");

    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        stale.extend(
            ids.iter()
                .map(|id| at(id, "SCHEDULED", 5_000 + round as i64)),
        );
    }
    let half = stale.split_off(stale.len() / 2);
    let mut rejected: u64 = 0;
    for r in send_all(&server, stale, 2000).await {
        rejected += r["rejectedByReason"]["stale"].as_u64().unwrap();
    }
    // a good update in the middle of the flood
    let r = server.ingest(&at("good", "COMPLETED", 20_000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    for r in send_all(&server, half, 2000).await {
        rejected += r["rejectedByReason"]["stale"].as_u64().unwrap();
    }
    assert_eq!(rejected, (TASKS * ROUNDS) as u64);
    let scrape = server.scrape().await;
    let counted: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "taskpulse_updates_total" && s.labels.get("outcome") == Some("rejected")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(
        counted,
        (TASKS * ROUNDS) as f64,
        "the counters count every one"
    );
    let writes = family_sum(&scrape, "taskpulse_store_writes_total") - writes_before;
    assert!(
        writes <= 1.0,
        "{writes} task rows written for rejected updates"
    );

    // the folded lines reach the store at the latest at shutdown
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{stderr}");
    let pool = sqlite(dir.path()).await;
    let lines = count(
        &pool,
        "SELECT count(*) FROM task_events WHERE outcome = 'rejected'",
    )
    .await;
    assert!(
        lines <= TASKS as i64,
        "{lines} history lines for {TASKS} tasks"
    );
    let folded = count(
        &pool,
        "SELECT coalesce(sum(count), 0) FROM task_events WHERE outcome = 'rejected'",
    )
    .await;
    assert_eq!(
        folded,
        (TASKS * ROUNDS) as i64,
        "the folded lines count every rejection"
    );
    let last = count(
        &pool,
        "SELECT count(*) FROM task_events WHERE outcome = 'rejected' AND last_at IS NOT NULL",
    )
    .await;
    assert_eq!(last, lines, "a folded line says when the last one came");
    pool.close().await;
}

/// Conductor's normal flapping (a worker's IN_PROGRESS stored as SCHEDULED), a worker id that
/// alternates and a climbing retryCount: each is throttled like progress (a write per task
/// per interval at most, the newest value kept and written at shutdown), and the task keeps its
/// newest 50 history lines and 20 attempts (the store prunes to those once half again as many
/// were written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_is_throttled_and_history_and_attempts_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--progress-min-interval", "1h"]).await;
    const N: usize = 5_000;
    let flap: Vec<Value> = (0..N)
        .map(|i| {
            let status = if i % 2 == 0 {
                "SCHEDULED"
            } else {
                "IN_PROGRESS"
            };
            at("flap", status, 1_000 + i as i64)
        })
        .collect();
    let workers: Vec<Value> = (0..N)
        .map(|i| {
            let mut u = at("workers", "IN_PROGRESS", 1_000 + i as i64);
            u["workerId"] = json!(if i % 2 == 0 { "w-a" } else { "w-b" });
            u
        })
        .collect();
    let retries: Vec<Value> = (0..N)
        .map(|i| {
            let mut u = at("retries", "IN_PROGRESS", 1_000 + i as i64);
            u["retryCount"] = json!(i);
            u["workerId"] = json!(format!("w-{i}"));
            u
        })
        .collect();
    for lines in [flap, workers, retries] {
        for r in send_all(&server, lines, 500).await {
            assert_eq!(r["rejectedCount"], 0, "{r}");
        }
    }
    let writes = family_sum(&server.scrape().await, "taskpulse_store_writes_total");
    // the first update of each task is written at once; everything after waits for the interval
    assert!(
        writes <= 3.0,
        "{writes} task rows written for 15,000 updates of 3 tasks"
    );

    // memory has the newest of each, at once
    let t = server.get_json("/api/v1/tasks/flap").await;
    assert_eq!(t["status"], "IN_PROGRESS");
    let t = server.get_json("/api/v1/tasks/retries").await;
    assert_eq!(t["retryCount"], N - 1);
    let attempts = t["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 20, "the newest 20 attempts");
    assert_eq!(attempts.last().unwrap()["workerId"], format!("w-{}", N - 1));
    let client = reqwest::Client::new();
    let body = client
        .get(server.url("/api/v1/tasks/retries"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.len() < 32 * 1024, "a {} byte task view", body.len());

    // and the store after shutdown, within the bounds
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{stderr}");
    let pool = sqlite(dir.path()).await;
    let stored: (String, Option<String>) =
        sqlx::query_as("SELECT status, worker_id FROM tasks WHERE task_id = 'workers'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        ("IN_PROGRESS".into(), Some("w-b".into())),
        "the newest value"
    );
    let flap_status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = 'flap'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(flap_status, "IN_PROGRESS");
    for id in ["flap", "workers", "retries"] {
        let history = count(
            &pool,
            &format!("SELECT count(*) FROM task_events WHERE task_id = '{id}'"),
        )
        .await;
        // the newest 50 are kept; the store prunes once half again as many have been written
        assert!(history <= 75, "{history} history rows for {id}");
    }
    let attempts = count(
        &pool,
        "SELECT count(*) FROM task_attempts WHERE task_id = 'retries'",
    )
    .await;
    assert!(
        attempts <= 30,
        "{attempts} attempt rows (20 kept, pruned past 30)"
    );
    let newest: i64 =
        sqlx::query_scalar("SELECT max(attempt) FROM task_attempts WHERE task_id = 'retries'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(newest, N as i64 - 1);
    pool.close().await;
}

/// Four concurrent bodies of 4,000 new tasks against `--max-pending-writes 1000`: the queue
/// never holds more than the bound (a body that finds it full gets 503 part way, and its
/// retry finds what was taken a duplicate), and in the end every task is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_writes_bound_holds_across_concurrent_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(serve(dir.path(), &["--max-pending-writes", "1000"]).await);
    const BODY: usize = 4_000;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (server, done) = (server.clone(), done.clone());
        tokio::spawn(async move {
            let (mut peak, mut samples) = (0.0f64, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(s) = server.try_scrape().await {
                    peak = peak.max(family_sum(&s, "taskpulse_store_pending_writes"));
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak, samples)
        })
    };
    let bodies = (0..4).map(|b| {
        let server = server.clone();
        async move {
            let lines = (0..BODY).map(|i| update(&format!("b{b}-{i}"), "SCHEDULED"));
            let body = ndjson(lines);
            let client = reqwest::Client::new();
            let mut refused = 0;
            loop {
                let (status, text) = post(
                    &client,
                    &server.url("/api/v1/updates"),
                    body.clone(),
                    "application/x-ndjson",
                )
                .await;
                match status {
                    200 => return (refused, text),
                    503 => {
                        assert!(text.contains("--max-pending-writes"), "{text}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("{other}: {text}"),
                }
                assert!(refused < 200, "refused 200 times");
            }
        }
    });
    let answers = futures_util::future::join_all(bodies).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, samples) = watcher.await.unwrap();
    eprintln!("pending writes: peak {peak} in {samples} scrapes");
    assert!(samples >= 3, "{samples} scrapes while the bodies went in");
    assert!(
        peak <= 1000.0,
        "{peak} writes pending with --max-pending-writes 1000"
    );
    for (refused, text) in &answers {
        let r: Value = serde_json::from_str(text).unwrap();
        assert_eq!(r["rejectedCount"], 0, "{r}");
        eprintln!(
            "a body refused {refused} times, then {}",
            &text[..text.len().min(80)]
        );
    }
    let server = std::sync::Arc::try_unwrap(server)
        .ok()
        .expect("the watcher is done");
    let (status, stderr) = server.terminate().await;
    assert!(status.success(), "{stderr}");
    let pool = sqlite(dir.path()).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tasks").await,
        4 * BODY as i64
    );
    pool.close().await;
}
