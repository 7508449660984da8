//! Paging (issue 23 item 4): a WAIT queue of 50,000 members is read whole and right, in pages
//! (`ZSCAN ... COUNT 1000`), never in one `ZRANGE 0 -1`; no `SMEMBERS` or `KEYS` either.
//! Counted from Redis's side (`INFO commandstats`), not timed.

use std::collections::HashMap;
use std::time::Duration;

use super::{app_on, connect_when_up, now_ms, task_model, Conductor, RedisServer};
use crate::helpers::{free_port, metric_value, Backend, TestDb};

const MEMBERS: usize = 50_000;

impl Conductor {
    /// `cmdstat_*` calls from `INFO commandstats`, by command.
    pub(crate) async fn command_calls(&mut self) -> HashMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.con)
            .await
            .unwrap();
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    pub(crate) async fn reset_stats(&mut self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut self.con)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_queue_of_50000_members_is_read_in_pages() {
    let port = free_port();
    let Some(_redis) = RedisServer::start(port) else {
        return;
    };
    let base = format!("redis://127.0.0.1:{port}");
    let mut c = connect_when_up(&base).await;
    let now = now_ms();
    // Conductor's writes for each WAIT task (SET of its JSON, the queue's ZADD), pipelined
    for chunk in (0..MEMBERS).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            let id = format!("w-{i:05}");
            let doc = task_model(&id, "WAIT", "IN_PROGRESS", now);
            p.cmd("SET")
                .arg(format!("conductor.test.TASK.{id}"))
                .arg(doc.to_string())
                .ignore();
            // even: overdue by 5 minutes; odd: due in an hour
            let due = if i % 2 == 0 {
                now - 300_000
            } else {
                now + 3_600_000
            };
            p.cmd("ZADD")
                .arg("conductor_queues.test.QUEUE.WAIT.c")
                .arg(due)
                .arg(&id)
                .ignore();
        }
        let _: () = p.query_async(&mut c.con).await.unwrap();
    }
    c.reset_stats().await;

    let db = TestDb::new(Backend::Sqlite).await;
    let app = app_on(&format!("{base}/0"), &db).await;
    let media = [("workflow_type", "media")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = app.scrape().await;
        let v = |name: &str, labels: &[(&str, &str)]| metric_value(&scrape, name, labels);
        if v("taskpulse_wait_tasks", &media) == Some(MEMBERS as f64) {
            assert_eq!(
                v("taskpulse_wait_overdue_tasks", &media),
                Some((MEMBERS / 2) as f64)
            );
            assert_eq!(
                v("taskpulse_conductor_queue_depth", &[("queue", "WAIT")]),
                Some(MEMBERS as f64)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "WAIT queue not read within 30 s: {:?}",
            v("taskpulse_wait_tasks", &media)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shutdown().await;
    let calls = c.command_calls().await;
    for whole in ["zrange", "zrangebyscore", "smembers", "keys", "hgetall"] {
        assert_eq!(calls.get(whole), None, "{whole} sent: {calls:?}");
    }
    let zscan = calls.get("zscan").copied().unwrap_or(0);
    assert!(
        zscan >= (MEMBERS / 1000) as u64,
        "50,000 members in pages of about 1,000: {zscan} ZSCAN calls ({calls:?})"
    );
    let mget = calls.get("mget").copied().unwrap_or(0);
    assert!(
        mget >= (MEMBERS / 1000) as u64,
        "documents in MGETs of at most 1,000 keys: {mget} ({calls:?})"
    );
}
