//! Queue depths and the WAIT queue (`docs/engines/conductor-redis.md` §3).
//!
//! - **Queue depths**: `ZCARD` and `ZCOUNT 0 now` of every `QUEUE.*` key (pipelined), at
//!   most [`MAX_QUEUES`] queues (more are counted in the log, not exported). Redis deletes an
//!   empty queue's key; a queue seen before is then exported at 0.
//! - **WAIT queue.** Members of `QUEUE.WAIT.{shard}` (read by `ZSCAN` pages) are the waiting
//!   WAIT tasks; a score of at least 1e12 is the due time in epoch ms (plus a priority
//!   fraction, dropped), a smaller one means "due now" with no enqueue time. The task's own
//!   `waitTimeout` wins when positive, as with the PostgreSQL reader. Wake-up lag is observed
//!   as members leave the set. "Now" is Redis's clock (`TIME`), the clock the scores were
//!   written against.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use super::RedisReader;
use crate::engines::conductor::task_tail::update_from_row;
use crate::engines::conductor::wait_queue::{snapshot_from_rows, wake_time, WaitRow, WAIT_QUEUE};
use crate::error::Result;
use crate::ingest::TaskUpdate;
use crate::metrics::{text, Budget, Collector};

/// Queues whose depth is exported, at most.
pub const MAX_QUEUES: usize = 1000;

/// `taskpulse_conductor_queue_depth{queue}` and `taskpulse_conductor_queue_due{queue}`,
/// written at scrape time: both families are in every scrape (empty without
/// `--conductor-redis`), at most [`MAX_QUEUES`] series each.
#[derive(Clone, Debug, Default)]
pub struct QueueMetrics(Arc<Mutex<BTreeMap<String, (i64, i64)>>>);

impl QueueMetrics {
    fn set(&self, queue: &str, depth: i64, due: i64) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(queue.to_string(), (depth, due));
        }
    }

    fn remove(&self, queue: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(queue);
        }
    }
}

impl Collector for QueueMetrics {
    fn write_text(&self, out: &mut String, budget: &mut Budget) {
        let start = out.len();
        let queues = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        let fits = queues.len().min(budget.series / 2);
        for (name, help, pick) in [
            (
                "taskpulse_conductor_queue_depth",
                "Messages in each of Conductor's queues (ZCARD), read from its Redis.",
                0,
            ),
            (
                "taskpulse_conductor_queue_due",
                "Messages due now in each of Conductor's queues (ZCOUNT 0 now), read from its Redis.",
                1,
            ),
        ] {
            text::header(out, name, help, "gauge");
            for (queue, (depth, due)) in queues.iter().take(fits) {
                let v = if pick == 0 { *depth } else { *due };
                text::sample_i64(out, name, &[("queue", queue)], v);
            }
        }
        budget.series = budget.series.saturating_sub(2 * fits);
        budget.bytes = budget.bytes.saturating_sub(out.len() - start);
    }
}

/// What the WAIT gauges need of a WAIT task: its workflow type and `waitTimeout`.
pub(super) fn wait_info(u: &TaskUpdate) -> (String, Option<i64>) {
    (u.workflow_type.clone().unwrap_or_default(), u.wait_until)
}

impl RedisReader {
    /// Queue depths, then the WAIT queue; `now`: Redis's clock.
    pub(super) async fn read_queues(&mut self, now: i64) -> Result<()> {
        let prefix = self.keys.queue_prefix();
        let suffix = format!(".{}", self.keys.shard);
        let queues = self.known_queues();
        let depths = self.io.depths(&queues, now).await?;
        let mut exported = HashSet::new();
        for (key, depth) in queues.iter().zip(depths) {
            let Some((depth, due)) = depth else { continue };
            let name = &key[prefix.len()..key.len() - suffix.len()];
            self.queues.set(name, depth, due);
            exported.insert(name.to_string());
        }
        // Redis deletes a zset with its last member: a queue seen before stays at 0 (an
        // emptied queue is news, not "no data"), as long as the cap allows.
        let gone: Vec<String> = self
            .exported_queues
            .difference(&exported)
            .cloned()
            .collect();
        for name in gone {
            if exported.len() < MAX_QUEUES {
                self.queues.set(&name, 0, 0);
                exported.insert(name);
            } else {
                self.queues.remove(&name);
            }
        }
        self.exported_queues = exported;
        self.read_wait(now).await
    }

    async fn read_wait(&mut self, now: i64) -> Result<()> {
        let key = self.keys.queue(WAIT_QUEUE);
        let Some(read) = self.io.scored(&key).await? else {
            return Ok(());
        };
        let members = read.members;
        let unknown: Vec<String> = members
            .iter()
            .filter(|(id, _)| !self.wait_info.contains_key(id))
            .map(|(id, _)| id.clone())
            .collect();
        let keys: Vec<String> = unknown.iter().map(|id| self.keys.task(id)).collect();
        let docs = self.io.documents(&keys).await?;
        for (id, doc) in unknown.into_iter().zip(docs) {
            let info = doc
                .as_deref()
                .and_then(|d| update_from_row(&id, d))
                .map(|u| wait_info(&u))
                .unwrap_or_default();
            self.wait_info.insert(id, info);
        }
        let present: HashSet<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        self.wait_info.retain(|id, _| present.contains(id.as_str()));
        let rows: Vec<WaitRow> = members
            .iter()
            .map(|(id, score)| {
                let (workflow_type, wait_timeout) =
                    self.wait_info.get(id).cloned().unwrap_or_default();
                // a score below 1e12 is a priority: due now, with no enqueue time
                let due = if *score >= 1e12 {
                    score.floor() as i64
                } else {
                    now
                };
                WaitRow {
                    message_id: id.clone(),
                    workflow_type,
                    wake_at: wake_time(Some(due), wait_timeout, now),
                    popped: false,
                }
            })
            .collect();
        // a partial read can't tell a member that left from one not read: no lag from it
        if !read.partial {
            for w in self.lag.update(&rows, now) {
                self.wakeup_lag.woke(&w.workflow_type, w.lag_seconds);
            }
        }
        self.wait_tx
            .send_replace(snapshot_from_rows(&rows, now, self.wait_grace));
        Ok(())
    }
}
