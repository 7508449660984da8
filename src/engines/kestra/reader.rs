//! Kestra's `executions` table followed (`--kestra-db`), read-only: every task run's
//! transitions, with the worker of each attempt resolved to its host through
//! `service_instance` (`docs/engines/kestra.md` §1, §5, §8).
//!
//! - **What changed.** `executions` has no modification column, and every state change
//!   rewrites the row. Each poll reads the active set (`state_current` among the database's
//!   own non-terminal `state_type` labels, read from `pg_enum` at start, since the enum
//!   differs by version) plus the executions that ended since the last successful poll minus
//!   [`OVERLAP`] (`end_date`), both through Kestra's indexes
//!   (`executions_state_current`, `executions_end_date`, led by `deleted, tenant_id`).
//! - **Once per transition.** An execution whose JSON is byte for byte what was read last time
//!   is not parsed again; in one that changed, a task run is submitted (`source="kestra_db"`)
//!   only when what taskpulse takes from it changed (status, last change, attempt, worker).
//! - **Start.** The first poll reads the active set only, and the current state of every task
//!   taskpulse holds in flight (by execution id): finished history is not replayed.
//! - **Workers.** A worker id (a UUID) seen for the first time is looked up in
//!   `service_instance` (`value.server.hostname`) and its host recorded in taskpulse's store,
//!   where it stays after the worker's row is gone (kestra-io/kestra#7799).
//! - **Failures** never end the reader: it keeps its state, says so in `/readyz`, and retries
//!   with backoff; the next good poll reads everything that ended in between.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use super::execution::{is_terminated, Execution};
use super::metrics::KestraMetrics;
use crate::engines::store_source::{self, read_only_pool, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::TaskUpdate;
use crate::pipeline::Pipeline;
use crate::store::Store;

/// The `source` of updates read from Kestra's database.
pub const SOURCE: &str = "kestra_db";
/// `application_name` of taskpulse's sessions on Kestra's database.
pub const APPLICATION_NAME: &str = "taskpulse-kestra";
/// How far before the last successful poll the ended executions are read again: longer than
/// a poll and a commit take. `end_date` is a `TIMESTAMP` without time zone written in the
/// session time zone of Kestra's JDBC sessions; the comparison runs in taskpulse's session,
/// so both must use the server's default time zone (docs/engines/kestra.md §1.3).
pub const OVERLAP: Duration = Duration::from_secs(60);
/// Workers whose host is remembered in memory (looked up once each), at most.
const MAX_WORKERS: usize = 100_000;
/// Executions fetched by id per query (the first pass).
const FETCH_BATCH: usize = 1_000;

const LABELS: &str =
    "SELECT e.enumlabel::text FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid \
     WHERE t.typname = 'state_type' ORDER BY e.enumsortorder";
const HOSTS: &str = "SELECT service_id::text, value #>> '{server,hostname}' FROM service_instance \
     WHERE service_id = ANY($1)";

/// What taskpulse takes from a task run; submitted again only when this changed.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    status: crate::model::Status,
    changed: Option<i64>,
    attempt: Option<i32>,
    worker: Option<String>,
}

impl Seen {
    fn of(u: &TaskUpdate) -> Seen {
        Seen {
            status: u.status,
            changed: u.update_time,
            attempt: u.retry_count,
            worker: u.worker_id.clone(),
        }
    }
}

pub struct KestraReader {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    store: Store,
    /// `None`: executions without a tenant (Kestra 0.22 and earlier).
    tenant: Option<String>,
    /// The database's non-terminal `state_type` labels.
    active: Vec<String>,
    /// Per execution read: a hash of its JSON, and what was submitted per task run.
    seen: HashMap<String, (u64, HashMap<String, Seen>)>,
    /// Worker id to host (`None`: not registered when looked up).
    workers: HashMap<String, Option<String>>,
    /// Kestra states this version of taskpulse doesn't know, logged once each.
    unknown: HashSet<String>,
    /// When the last successful poll began, to bound the ended executions read next.
    last_ok: Option<Instant>,
    unsent: Vec<TaskUpdate>,
    metrics: KestraMetrics,
    health: Health,
}

impl KestraReader {
    /// Connects read-only, reads the enum labels and runs the first pass. A database that
    /// can't be reached, or has no Kestra tables, stops start-up.
    pub async fn start(
        url: &str,
        tenant: &str,
        pipeline: Arc<Pipeline>,
        store: Store,
        metrics: KestraMetrics,
    ) -> Result<KestraReader> {
        let pool = read_only_pool("kestra-db", APPLICATION_NAME, url)?
            .connect()
            .await?;
        let labels: Vec<String> = sqlx::query_scalar(LABELS).fetch_all(&pool).await?;
        if labels.is_empty() {
            return Err(Error::Config(
                "no `state_type` enum in this database: is it Kestra's (JDBC PostgreSQL backend)?"
                    .into(),
            ));
        }
        let active: Vec<String> = labels.into_iter().filter(|l| !is_terminated(l)).collect();
        let mut reader = KestraReader {
            pool,
            pipeline,
            store,
            tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
            active,
            seen: HashMap::new(),
            workers: HashMap::new(),
            unknown: HashSet::new(),
            last_ok: None,
            unsent: Vec::new(),
            metrics,
            health: Health::new("Kestra's database (--kestra-db)"),
        };
        let n = reader.first_pass().await?;
        tracing::info!(
            task_runs = n,
            active_states = ?reader.active,
            "following Kestra's executions (--kestra-db)"
        );
        Ok(reader)
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The executions read by one query: active, or ended within `ended_within`.
    async fn read(&self, ended_within: Option<Duration>) -> Result<Vec<(String, String)>> {
        let tenant = match self.tenant {
            Some(_) => "tenant_id = $1",
            None => "tenant_id IS NULL AND $1::text IS NULL",
        };
        // Each arm a condition Kestra's indexes answer (a BitmapOr of
        // `executions_state_current` and `executions_end_date`); no arm that would make the
        // planner read the whole table.
        let ended = match ended_within {
            Some(_) => " OR end_date >= LOCALTIMESTAMP - make_interval(secs => $3)",
            None => "",
        };
        let sql = format!(
            "SELECT key::text, value::text FROM executions \
             WHERE deleted = false AND {tenant} \
               AND (state_current = ANY($2::text[]::state_type[]){ended})"
        );
        let mut query = sqlx::query(&sql).bind(&self.tenant).bind(&self.active);
        if let Some(d) = ended_within {
            query = query.bind(d.as_secs_f64());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn first_pass(&mut self) -> Result<usize> {
        let started = Instant::now();
        let mut rows = self.read(None).await?;
        let known: HashSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
        // The executions of tasks taskpulse holds in flight, as they are now.
        let mut wanted: Vec<String> = self
            .pipeline
            .tracker()
            .select(|r| !r.status.is_terminal())
            .into_iter()
            .map(|r| r.workflow_id.to_string())
            .filter(|id| !known.contains(id))
            .collect();
        wanted.sort();
        wanted.dedup();
        for ids in wanted.chunks(FETCH_BATCH) {
            let found = sqlx::query(
                "SELECT key::text, value::text FROM executions WHERE key = ANY($1) AND deleted = false",
            )
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
            for r in found {
                rows.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        let n = self.take(rows, true).await?;
        self.last_ok = Some(started);
        Ok(n)
    }

    /// One poll; returns the number of task runs submitted.
    pub async fn poll(&mut self) -> Result<usize> {
        let started = Instant::now();
        let pending = std::mem::take(&mut self.unsent);
        self.submit(pending).await;
        let since = self.last_ok.map_or(Duration::ZERO, |t| t.elapsed()) + OVERLAP;
        let rows = self.read(Some(since)).await?;
        let n = self.take(rows, false).await?;
        self.last_ok = Some(started);
        Ok(n)
    }

    /// Diffs what was read against what was submitted, submits the changes, records new
    /// workers. `keep_absent`: executions not in `rows` are kept (the first pass reads a part).
    async fn take(&mut self, rows: Vec<(String, String)>, keep_absent: bool) -> Result<usize> {
        let hasher = foldhash::fast::FixedState::default();
        let mut read: HashSet<String> = HashSet::with_capacity(rows.len());
        let mut updates = Vec::new();
        let mut new_workers: Vec<String> = Vec::new();
        let mut unknown = Vec::new();
        for (key, json) in rows {
            read.insert(key.clone());
            let hash = hasher.hash_one(json.as_bytes());
            if self.seen.get(&key).is_some_and(|(h, _)| *h == hash) {
                continue;
            }
            let ex = match Execution::parse(&json) {
                Ok(ex) => ex,
                Err(e) => {
                    tracing::debug!(execution = %key, error = %e, "kestra executions: unreadable value");
                    continue;
                }
            };
            for w in ex.worker_ids() {
                if !self.workers.contains_key(w) {
                    new_workers.push(w.to_string());
                }
            }
            let entry = self.seen.entry(key).or_default();
            entry.0 = hash;
            for run in ex.updates(&mut unknown) {
                let now = Seen::of(&run);
                if entry.1.get(&run.task_id) == Some(&now) {
                    continue;
                }
                entry.1.insert(run.task_id.clone(), now);
                updates.push(run);
            }
        }
        for state in unknown {
            if self.unknown.insert(state.clone()) {
                tracing::warn!(
                    state,
                    "kestra: a task run state this taskpulse doesn't know; treated as not finished"
                );
            }
        }
        if !keep_absent {
            self.seen.retain(|k, _| read.contains(k));
        }
        new_workers.sort();
        new_workers.dedup();
        self.resolve_workers(new_workers).await?;
        let n = updates.len();
        self.submit(updates).await;
        Ok(n)
    }

    /// Looks new workers up in `service_instance` and records their hosts.
    async fn resolve_workers(&mut self, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(HOSTS).bind(&ids).fetch_all(&self.pool).await?;
        let mut found = Vec::new();
        for r in rows {
            let (id, host): (String, Option<String>) = (r.try_get(0)?, r.try_get(1)?);
            if let Some(h) = host {
                found.push((id, h));
            }
        }
        self.store.record_workers(&found, crate::now_ms()).await?;
        if self.workers.len() + ids.len() > MAX_WORKERS {
            self.workers.clear(); // looked up again when seen again: bounded memory
        }
        let hosts: HashMap<String, String> = found.into_iter().collect();
        for id in ids {
            let host = hosts.get(&id).cloned();
            self.workers.insert(id, host);
        }
        Ok(())
    }

    async fn submit(&mut self, updates: Vec<TaskUpdate>) -> usize {
        store_source::submit(&self.pipeline, SOURCE, updates, &mut self.unsent).await
    }

    /// Polls every `every` until `stop` (see [`store_source::run`]).
    pub fn run(self, every: Duration, stop: CancellationToken) -> BoxFuture<'static, ()> {
        store_source::run(self, every, stop)
    }
}

impl Poller for KestraReader {
    const WHAT: &'static str = "Kestra's executions table";

    fn poll_once(&mut self) -> BoxFuture<'_, Result<()>> {
        async move { self.poll().await.map(|_| ()) }.boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn observe(&mut self, took: Duration, failed: Option<(&Error, u32)>) {
        self.metrics.poll_seconds.observe(took.as_secs_f64());
        match failed {
            None => {
                self.metrics.polls_ok.inc();
                self.health.set(None);
            }
            Some((e, n)) => {
                self.metrics.polls_failed.inc();
                self.health.set(Some(format!(
                    "Kestra's database (--kestra-db): {n} failed read(s) in a row: {e}"
                )));
            }
        }
    }
}
