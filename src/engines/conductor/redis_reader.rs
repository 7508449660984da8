//! A Redis-backed Conductor read (`--conductor-redis`), read-only: every task in flight and how
//! it ended, the WAIT queue, and every task queue's depth. Keys, types and scores follow
//! `docs/engines/conductor-redis.md` §1 to §4.
//!
//! - **Keys.** Execution keys are `{namespace}.{stack}[.{domain}].KIND.{id}` (blank parts left
//!   out); queue keys are `{queue namespace}.{stack}.QUEUE.{name}.{shard}` (no domain, no
//!   blank check). The defaults are Conductor's docker configuration: `conductor`,
//!   `conductor_queues`, `test`, `c`, no domain.
//! - **In flight.** `IN_PROGRESS_TASKS.{taskDefName}` sets hold the ids of SCHEDULED and
//!   IN_PROGRESS tasks. Each poll finds the sets (`SCAN MATCH`), their members (`SSCAN`), and
//!   reads every member's `TASK.{id}` JSON (`MGET`, [`BATCH`] keys at a time). A task that left
//!   the sets is read once more, to learn how it ended (COMPLETED by the async executor,
//!   TIMED_OUT by the decider, CANCELED with its workflow). As with the PostgreSQL tail, a task
//!   is submitted (`source="conductor_redis"`) only when what taskpulse takes from it changed.
//! - **WAIT queue.** Members of `QUEUE.WAIT.{shard}` are the waiting WAIT tasks; a score of at
//!   least 1e12 is the due time in epoch ms (plus a priority fraction, dropped), a smaller one
//!   means "due now" with no enqueue time. The task's own `waitTimeout` wins when positive, as
//!   with the PostgreSQL reader. Wake-up lag is observed as members leave the set.
//! - **Queue depths**: `ZCARD` and `ZCOUNT 0 now` of every `QUEUE.*` key, at most
//!   [`MAX_QUEUES`] queues (more are counted in the log, not exported). Redis deletes an
//!   empty queue's key; a queue seen before is then exported at 0.
//! - **Read-only.** Only `SCAN`, `SSCAN`, `MGET`, `ZRANGE`, `ZCARD` and `ZCOUNT` are sent;
//!   never the queue's pop script (it claims messages).
//! - **Failures.** Redis down or slow: the reader keeps its last snapshot, says so in
//!   `/readyz`, and retries with backoff; ingest from every other source goes on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::task_tail::{update_from_row, Seen};
use super::wait_queue::{snapshot_from_rows, wake_time, LagTracker, WaitRow, WAIT_QUEUE};
use crate::engines::store_source::{self, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::TaskUpdate;
use crate::metrics::{text, Budget, Collector};
use crate::pipeline::Pipeline;
use crate::wait::{WaitMetrics, WaitSnapshot, WaitSource};

/// The `source` of updates read from Conductor's Redis.
pub const SOURCE: &str = "conductor_redis";
/// Keys per `MGET`, members per `SSCAN` and keys per `SCAN` step.
pub const BATCH: usize = 1000;
/// Queues whose depth is exported, at most.
pub const MAX_QUEUES: usize = 1000;
/// A command that takes longer than this fails the read (retried with backoff).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where Conductor keeps its keys.
#[derive(Clone, Debug)]
pub struct Keys {
    pub namespace: String,
    pub queue_namespace: String,
    pub stack: String,
    pub shard: String,
    pub domain: Option<String>,
}

impl Keys {
    /// `{namespace}.{stack}[.{domain}].{kind}`, blank parts left out.
    fn execution(&self, kind: &str) -> String {
        [
            Some(self.namespace.as_str()),
            Some(self.stack.as_str()),
            self.domain.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|p| !p.trim().is_empty())
        .chain([kind])
        .collect::<Vec<_>>()
        .join(".")
    }

    pub fn task(&self, id: &str) -> String {
        format!("{}.{id}", self.execution("TASK"))
    }

    pub fn in_progress_pattern(&self) -> String {
        format!("{}.*", self.execution("IN_PROGRESS_TASKS"))
    }

    /// `{queue namespace}.{stack}.QUEUE.`: no blank check, no domain (as Conductor does it).
    fn queue_prefix(&self) -> String {
        format!("{}.{}.QUEUE.", self.queue_namespace, self.stack)
    }

    pub fn queue(&self, name: &str) -> String {
        format!("{}{name}.{}", self.queue_prefix(), self.shard)
    }
}

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

/// A connection to Conductor's Redis that reconnects on its own. `password`: from
/// `--conductor-redis-password-file`.
pub async fn connect(url: &str, password: Option<&str>) -> Result<ConnectionManager> {
    if !url.starts_with("redis://") {
        return Err(Error::Config(
            "--conductor-redis: expected a redis://HOST:PORT[/DB] URL (TLS, Sentinel and Cluster are not supported)".into(),
        ));
    }
    let mut info = url
        .into_connection_info()
        .map_err(|e| Error::Config(format!("--conductor-redis: {e}")))?;
    if let Some(pw) = password {
        let redis = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(redis);
    }
    let client = redis::Client::open(info).map_err(redis_error)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(redis_error)
}

fn redis_error(e: redis::RedisError) -> Error {
    Error::Engine(format!("Conductor's Redis: {e}"))
}

/// What the WAIT gauges need of a WAIT task: its workflow type and `waitTimeout`.
fn wait_info(u: &TaskUpdate) -> (String, Option<i64>) {
    (u.workflow_type.clone().unwrap_or_default(), u.wait_until)
}

/// The reader's state between polls.
pub struct RedisReader {
    con: ConnectionManager,
    keys: Keys,
    pipeline: Arc<Pipeline>,
    /// Per task in flight: a hash of its JSON as last read (an unchanged document is not
    /// parsed again) and what was last submitted.
    seen: HashMap<String, (u64, Option<Seen>)>,
    /// WAIT members' workflow type and `waitTimeout`: taken from the in-flight read, fetched
    /// only for members it did not cover.
    wait_info: HashMap<String, (String, Option<i64>)>,
    lag: LagTracker,
    wait_grace: Duration,
    wait_tx: watch::Sender<WaitSnapshot>,
    wakeup_lag: WaitMetrics,
    queues: QueueMetrics,
    exported_queues: HashSet<String>,
    health: Health,
    /// Updates the pipeline refused (overloaded), submitted again first.
    unsent: Vec<TaskUpdate>,
    poll_seconds: prometheus::Histogram,
}

/// What [`RedisReader::start`] gives the engine: the reader, the WAIT snapshot, readiness.
pub struct Started {
    pub reader: RedisReader,
    pub wait_queue: WaitSource,
    pub health: Health,
}

impl RedisReader {
    /// Connects and runs a first read; a Redis that can't be reached stops start-up.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        url: &str,
        password: Option<&str>,
        keys: Keys,
        pipeline: Arc<Pipeline>,
        wait_grace: Duration,
        poll_every: Duration,
        wakeup_lag: WaitMetrics,
        queues: QueueMetrics,
        poll_seconds: prometheus::Histogram,
    ) -> Result<Started> {
        let con = connect(url, password).await?;
        let (wait_tx, wait_queue) = watch::channel(WaitSnapshot::default());
        let health = Health::new("Conductor's Redis (--conductor-redis)");
        let mut reader = RedisReader {
            con,
            keys,
            pipeline,
            seen: HashMap::new(),
            wait_info: HashMap::new(),
            lag: LagTracker::new(poll_every * 2 + Duration::from_secs(2)),
            wait_grace,
            wait_tx,
            wakeup_lag,
            queues,
            exported_queues: HashSet::new(),
            health: health.clone(),
            unsent: Vec::new(),
            poll_seconds,
        };
        let n = reader.poll().await?;
        tracing::info!(
            in_flight = n,
            "reading Conductor's Redis (--conductor-redis)"
        );
        Ok(Started {
            reader,
            wait_queue,
            health,
        })
    }

    /// Every key matching `pattern` (`SCAN`, in steps of [`BATCH`]).
    async fn scan(&mut self, pattern: &str) -> Result<Vec<String>> {
        self.cursor(|c| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(c).arg("MATCH").arg(pattern).arg("COUNT").arg(BATCH);
            cmd
        })
        .await
    }

    /// Every member of a set (`SSCAN`).
    async fn members(&mut self, key: &str) -> Result<Vec<String>> {
        self.cursor(|c| {
            let mut cmd = redis::cmd("SSCAN");
            cmd.arg(key).arg(c).arg("COUNT").arg(BATCH);
            cmd
        })
        .await
    }

    /// Runs a cursor command (`SCAN`, `SSCAN`) from cursor 0 until Redis answers 0.
    async fn cursor(&mut self, step: impl Fn(u64) -> redis::Cmd) -> Result<Vec<String>> {
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, items): (u64, Vec<String>) = step(cursor)
                .query_async(&mut self.con)
                .await
                .map_err(redis_error)?;
            out.extend(items);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// The TASK JSON of these ids (`MGET`, [`BATCH`] keys per command), `None` where there is
    /// none.
    async fn tasks(&mut self, ids: &[String]) -> Result<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.task(id)).collect();
            let docs: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.con)
                .await
                .map_err(redis_error)?;
            out.extend(docs);
        }
        Ok(out)
    }

    /// One poll: tasks in flight and those that left, the WAIT queue, the queue depths.
    /// Returns the number of tasks in flight.
    pub async fn poll(&mut self) -> Result<usize> {
        let pending = std::mem::take(&mut self.unsent);
        self.submit(pending).await;
        let mut in_flight: Vec<String> = Vec::new();
        for set in self.scan(&self.keys.in_progress_pattern()).await? {
            in_flight.extend(self.members(&set).await?);
        }
        in_flight.sort_unstable();
        in_flight.dedup();
        let current: HashSet<&str> = in_flight.iter().map(String::as_str).collect();
        // those that left the sets: read once more, then forgotten
        let left: Vec<String> = self
            .seen
            .keys()
            .filter(|id| !current.contains(id.as_str()))
            .cloned()
            .collect();
        let n = in_flight.len();
        let mut ids = in_flight;
        ids.extend(left.iter().cloned());
        // a chunk at a time: at most BATCH documents are held at once
        for chunk in ids.chunks(BATCH) {
            let docs = self.tasks(chunk).await?;
            let mut updates = Vec::new();
            for (id, doc) in chunk.iter().zip(docs) {
                let Some(doc) = doc else { continue };
                let hash = {
                    use std::hash::{BuildHasher, Hasher};
                    let mut h = foldhash::fast::FixedState::default().build_hasher();
                    h.write(doc.as_bytes());
                    h.finish()
                };
                if self.seen.get(id).is_some_and(|(h, _)| *h == hash) {
                    continue;
                }
                let u = update_from_row(id, &doc);
                // a WAIT task's labels and timer, so the WAIT queue read needn't fetch it again
                if let Some(w) = u
                    .as_ref()
                    .filter(|u| u.task_type.as_deref() == Some(WAIT_QUEUE))
                {
                    self.wait_info.insert(id.clone(), wait_info(w));
                }
                let now = u.as_ref().map(Seen::of);
                let changed = self.seen.get(id).map(|(_, s)| s) != Some(&now);
                self.seen.insert(id.clone(), (hash, now));
                if let Some(u) = u.filter(|_| changed) {
                    updates.push(u);
                }
            }
            self.submit(updates).await;
        }
        for id in &left {
            self.seen.remove(id);
        }
        self.read_queues().await?;
        self.health.set(None);
        Ok(n)
    }

    async fn read_queues(&mut self) -> Result<()> {
        let now = crate::now_ms();
        let prefix = self.keys.queue_prefix();
        let suffix = format!(".{}", self.keys.shard);
        let mut queues: Vec<String> = self
            .scan(&format!("{prefix}*"))
            .await?
            .into_iter()
            .filter(|k| k.ends_with(&suffix))
            .collect();
        queues.sort_unstable();
        if queues.len() > MAX_QUEUES {
            tracing::warn!(
                queues = queues.len(),
                exported = MAX_QUEUES,
                "Conductor's Redis: more queues than are exported"
            );
            queues.truncate(MAX_QUEUES);
        }
        let mut exported = HashSet::new();
        for key in &queues {
            let name = &key[prefix.len()..key.len() - suffix.len()];
            let (depth, due): (i64, i64) = redis::pipe()
                .cmd("ZCARD")
                .arg(key)
                .cmd("ZCOUNT")
                .arg(key)
                .arg(0)
                .arg(now)
                .query_async(&mut self.con)
                .await
                .map_err(redis_error)?;
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
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.con)
            .await
            .map_err(redis_error)?;
        let unknown: Vec<String> = members
            .iter()
            .filter(|(id, _)| !self.wait_info.contains_key(id))
            .map(|(id, _)| id.clone())
            .collect();
        let docs = self.tasks(&unknown).await?;
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
        for w in self.lag.update(&rows, now) {
            self.wakeup_lag.woke(&w.workflow_type, w.lag_seconds);
        }
        self.wait_tx
            .send_replace(snapshot_from_rows(&rows, now, self.wait_grace));
        Ok(())
    }

    async fn submit(&mut self, updates: Vec<TaskUpdate>) {
        store_source::submit(&self.pipeline, SOURCE, updates, &mut self.unsent).await;
    }

    /// Polls every `every` until `stop` (see [`store_source::run`]).
    pub fn run(self, every: Duration, stop: CancellationToken) -> BoxFuture<'static, ()> {
        store_source::run(self, every, stop)
    }
}

impl Poller for RedisReader {
    const WHAT: &'static str = "Conductor's Redis";

    fn poll_once(&mut self) -> BoxFuture<'_, Result<()>> {
        async move { self.poll().await.map(|_| ()) }.boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn observe(&mut self, took: Duration, failed: Option<(&Error, u32)>) {
        self.poll_seconds.observe(took.as_secs_f64());
        if let Some((e, failures)) = failed {
            self.health.set(Some(format!(
                "Conductor's Redis unreadable ({failures} failed reads): {e}"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_conductors_composition() {
        let k = Keys {
            namespace: "conductor".into(),
            queue_namespace: "conductor_queues".into(),
            stack: "test".into(),
            shard: "c".into(),
            domain: None,
        };
        assert_eq!(k.task("t1"), "conductor.test.TASK.t1");
        assert_eq!(
            k.in_progress_pattern(),
            "conductor.test.IN_PROGRESS_TASKS.*"
        );
        assert_eq!(k.queue("WAIT"), "conductor_queues.test.QUEUE.WAIT.c");
        let k = Keys {
            namespace: String::new(),
            domain: Some("kd".into()),
            ..k
        };
        assert_eq!(
            k.task("t1"),
            "test.kd.TASK.t1",
            "a blank prefix is left out"
        );
        assert_eq!(
            k.queue("WAIT"),
            "conductor_queues.test.QUEUE.WAIT.c",
            "queues ignore the domain"
        );
    }
}
