//! A Redis-backed Conductor read (`--conductor-redis`), read-only: every task in flight and how
//! it ended, the WAIT queue, and every queue's depth. Keys, types and scores follow
//! `docs/engines/conductor-redis.md` §1 to §4.
//!
//! - **Keys** ([`keys`]). Execution keys are `{namespace}.{stack}[.{domain}].KIND.{id}` (blank
//!   parts left out); queue keys are `{queue namespace}.{stack}.QUEUE.{name}.{shard}` (no
//!   domain, no blank check). The defaults are Conductor's docker configuration: `conductor`,
//!   `conductor_queues`, `test`, `c`, no domain.
//! - **Tasks** ([`flight`]): every task of each workflow in `PENDING_WORKFLOWS.*` (so tasks
//!   created and finished between two polls are seen), and every member of
//!   `IN_PROGRESS_TASKS.*`; a document is read only when it may have changed. As with the
//!   PostgreSQL tail, a task is submitted (`source="conductor_redis"`) only when what
//!   taskpulse takes from it changed.
//! - **Queues** ([`queues`]): each queue's depth, and the WAIT queue, on Redis's clock
//!   (`TIME`, once per poll).
//! - **Bounded commands** ([`io`]): no command returns a whole large collection, documents
//!   are read in chunks bounded in keys and bytes, and a malformed key is skipped and counted,
//!   never the poll.
//! - **Read-only.** Only `TIME`, `SCAN`, `SSCAN`, `ZSCAN`, `STRLEN`, `MGET`, `ZCARD` and
//!   `ZCOUNT` are sent; never the queue's pop script (it claims messages).
//! - **Failures.** Redis down or slow: the reader keeps its last snapshot, says so in
//!   `/readyz`, and retries with backoff; ingest from every other source goes on.

mod discover;
mod flight;
mod io;
mod keys;
mod queues;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::wait_queue::LagTracker;
use crate::engines::store_source::{self, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::TaskUpdate;
use crate::pipeline::Pipeline;
use crate::wait::{WaitMetrics, WaitSnapshot, WaitSource};

pub use io::{connect, RedisMetrics, PAGE as BATCH};
pub use keys::Keys;
pub use queues::{QueueMetrics, MAX_QUEUES};

/// The `source` of updates read from Conductor's Redis.
pub const SOURCE: &str = "conductor_redis";

/// The reader's state between polls.
pub struct RedisReader {
    io: io::Io,
    keys: Keys,
    pipeline: Arc<Pipeline>,
    /// Every task followed (see [`flight`]).
    followed: HashMap<String, flight::Followed>,
    /// Polls that read documents, for the order of reads under the byte budget.
    polls: u64,
    /// The keyspace walks that find the sets and queues (see [`discover`]).
    discovery: discover::Discovery,
    /// The workflow ids in `PENDING_WORKFLOWS.*` at the last poll.
    workflows: HashSet<String>,
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
        metrics: RedisMetrics,
    ) -> Result<Started> {
        let con = connect(url, password).await?;
        let (wait_tx, wait_queue) = watch::channel(WaitSnapshot::default());
        let health = Health::new("Conductor's Redis (--conductor-redis)");
        let discovery = discover::Discovery::new(&keys);
        let mut reader = RedisReader {
            io: io::Io::new(con, metrics),
            keys,
            pipeline,
            followed: HashMap::new(),
            polls: 0,
            discovery,
            workflows: HashSet::new(),
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

    /// One poll: Redis's clock, the tasks followed, the queues. Returns the number of tasks
    /// in flight.
    pub async fn poll(&mut self) -> Result<usize> {
        let pending = std::mem::take(&mut self.unsent);
        self.submit(pending).await;
        self.io.begin_poll();
        let now = self.io.time_ms().await?;
        self.discover().await?;
        let n = self.read_tasks().await?;
        self.read_queues(now).await?;
        self.io.end_poll();
        Ok(n)
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

    fn observe(&mut self, took: Duration, _failed: Option<(&Error, u32)>) {
        self.poll_seconds.observe(took.as_secs_f64());
    }
}
