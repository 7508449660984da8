//! Kestra's `executions` table followed (`--kestra-db`), read-only: every task run's
//! transitions, with the worker of each attempt resolved to its host through
//! `service_instance` (`docs/engines/kestra.md` §1, §5, §8, §11).
//!
//! - **What changed.** `executions` has no modification column, and every state change
//!   rewrites the row. Each poll *lists* the active set (`state_current` among the database's
//!   own non-terminal `state_type` labels, read from `pg_enum` at start, since the enum
//!   differs by version) plus the executions that ended since the last successful poll minus
//!   [`OVERLAP`] (`end_date`), both through Kestra's indexes: key, row version and stored size
//!   only ([`rows::list`]), no JSON. It then fetches the JSON of the executions whose version
//!   changed, and of those it followed that left the listing unfinished (ended outside the
//!   window, deleted): an idle poll reads no document, however many executions run.
//! - **Bounds.** A document over `--kestra-db-max-document-bytes` is not read (counted, logged
//!   once per execution); one poll fetches at most `--kestra-db-max-poll-bytes` (as stored),
//!   in queries of at most [`FETCH_BATCH`] rows and [`BATCH_BYTES`]; the rest waits for the
//!   next poll, longest waiting first.
//! - **Time zone.** `end_date` is Kestra's wall time in its JVM's zone; the window is computed
//!   in `--kestra-db-time-zone`, checked at start and on every fetched row against the JSON's
//!   instants ([`rows::check_zone`]): rows that disagree fail the start, or the poll, naming
//!   the setting.
//! - **Once per transition.** In an execution that changed, a task run is submitted
//!   (`source="kestra_db"`) only when what taskpulse takes from it changed (status, last
//!   change, attempt, worker).
//! - **Start.** The first poll reads the active set only, and the current state of every task
//!   taskpulse holds in flight (by execution id): finished history is not replayed.
//! - **Workers.** A worker id (a UUID) seen for the first time is looked up in
//!   `service_instance` (`value.server.hostname`) and its host recorded in taskpulse's store,
//!   where it stays after the worker's row is gone (kestra-io/kestra#7799).
//! - **Failures** never end the reader: it keeps its state, says so in `/readyz`, and retries
//!   with backoff; the next good poll reads everything that ended in between.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use super::execution::{is_terminated, Execution};
use super::metrics::KestraMetrics;
use super::rows::{self, Fetched, Listed};
use super::KestraSettings;
use crate::engines::store_source::{self, read_only_pool, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::TaskUpdate;
use crate::pipeline::Pipeline;
use crate::store::Store;

/// The `source` of updates read from Kestra's database.
pub const SOURCE: &str = "kestra_db";
/// `application_name` of taskpulse's sessions on Kestra's database.
pub const APPLICATION_NAME: &str = "taskpulse-kestra";
/// How far before the last successful poll the ended executions are listed again: longer than
/// a poll and a commit take, and than the clocks of Kestra's hosts and its database differ.
/// `end_date` is Kestra's wall time in `--kestra-db-time-zone` (docs/engines/kestra.md §1.3).
pub const OVERLAP: Duration = Duration::from_secs(60);
/// Workers whose host is remembered in memory (looked up once each), at most.
const MAX_WORKERS: usize = 100_000;
/// Executions fetched per query, at most.
pub const FETCH_BATCH: usize = 1_000;
/// Bytes (as stored) of the executions fetched per query, at most (one larger document is
/// fetched alone).
pub const BATCH_BYTES: i64 = 8 * 1024 * 1024;
/// Executions named in the log for a skipped document, remembered at most (then forgotten).
const MAX_NOTED: usize = 10_000;

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

/// An execution followed: the row version last read, whether it had ended, and what was
/// submitted per task run.
#[derive(Debug, Default)]
struct Followed {
    version: String,
    ended: bool,
    runs: HashMap<String, Seen>,
}

/// An execution to fetch: its key, stored size, and the poll it has waited since.
struct Wanted {
    key: String,
    stored: i64,
    since: u64,
}

pub struct KestraReader {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    store: Store,
    /// `None`: executions without a tenant (Kestra 0.22 and earlier).
    tenant: Option<String>,
    /// Kestra's JVM zone (`--kestra-db-time-zone`).
    zone: String,
    max_document: i64,
    max_poll: i64,
    /// The database's non-terminal `state_type` labels.
    active: Vec<String>,
    followed: HashMap<String, Followed>,
    /// Executions changed but not fetched yet, with the poll that first saw them so.
    waiting: HashMap<String, u64>,
    polls: u64,
    /// Worker id to host (`None`: not registered when looked up).
    workers: HashMap<String, Option<String>>,
    /// Kestra states this version of taskpulse doesn't know, logged once each.
    unknown: HashSet<String>,
    /// Executions whose document was skipped, logged once each.
    noted: HashSet<String>,
    /// When the last successful poll began, to bound the ended executions read next.
    last_ok: Option<Instant>,
    unsent: Vec<TaskUpdate>,
    metrics: KestraMetrics,
    health: Health,
}

impl KestraReader {
    /// Connects read-only, reads the enum labels, checks the time zone and runs the first
    /// pass. A database that can't be reached, has no Kestra tables, or whose rows show
    /// another zone than `--kestra-db-time-zone`, stops start-up.
    pub async fn start(
        settings: &KestraSettings,
        url: &str,
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
        let tenant = &settings.tenant;
        let tenant = (!tenant.is_empty()).then(|| tenant.to_string());
        let max_document = i64::try_from(settings.max_document_bytes.as_u64()).unwrap_or(i64::MAX);
        rows::check_zone(&pool, &tenant, &settings.time_zone, max_document).await?;
        let mut reader = KestraReader {
            pool,
            pipeline,
            store,
            tenant,
            zone: settings.time_zone.clone(),
            max_document,
            max_poll: i64::try_from(settings.max_poll_bytes.as_u64()).unwrap_or(i64::MAX),
            active,
            followed: HashMap::new(),
            waiting: HashMap::new(),
            polls: 0,
            workers: HashMap::new(),
            unknown: HashSet::new(),
            noted: HashSet::new(),
            last_ok: None,
            unsent: Vec::new(),
            metrics,
            health: Health::new("Kestra's database (--kestra-db)"),
        };
        let n = reader.first_pass().await?;
        tracing::info!(
            task_runs = n,
            active_states = ?reader.active,
            time_zone = %reader.zone,
            "following Kestra's executions (--kestra-db)"
        );
        Ok(reader)
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    async fn first_pass(&mut self) -> Result<usize> {
        let started = Instant::now();
        let listed = rows::list(&self.pool, &self.tenant, &self.active, None).await?;
        let known: HashSet<&str> = listed.iter().map(|l| l.key.as_str()).collect();
        // The executions of tasks taskpulse holds in flight, as they are now.
        let mut extra: Vec<String> = self
            .pipeline
            .tracker()
            .select(|r| !r.status.is_terminal())
            .into_iter()
            .map(|r| r.workflow_id.to_string())
            .filter(|id| !known.contains(id.as_str()))
            .collect();
        extra.sort();
        extra.dedup();
        let n = self.follow(listed, extra).await?;
        self.last_ok = Some(started);
        Ok(n)
    }

    /// One poll; returns the number of task runs submitted.
    pub async fn poll(&mut self) -> Result<usize> {
        let started = Instant::now();
        let pending = std::mem::take(&mut self.unsent);
        self.submit(pending).await;
        let since = self.last_ok.map_or(Duration::ZERO, |t| t.elapsed()) + OVERLAP;
        let listed = rows::list(
            &self.pool,
            &self.tenant,
            &self.active,
            Some((since, &self.zone)),
        )
        .await?;
        let keys: HashSet<&str> = listed.iter().map(|l| l.key.as_str()).collect();
        // followed and unfinished, no longer listed (ended outside the window, deleted): read
        // once more, by key, for how it ended, then forgotten
        self.followed
            .retain(|k, f| keys.contains(k.as_str()) || !f.ended);
        let gone: Vec<String> = self
            .followed
            .keys()
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        drop(keys);
        let n = self.follow(listed, gone.clone()).await?;
        for key in gone {
            self.followed.remove(&key);
        }
        self.last_ok = Some(started);
        Ok(n)
    }

    /// Fetches, within the byte budget, the listed executions whose version changed and the
    /// `extra` ones (by key), and submits what changed in them.
    async fn follow(&mut self, listed: Vec<Listed>, extra: Vec<String>) -> Result<usize> {
        self.polls += 1;
        self.metrics.rows_listed.inc_by(listed.len() as u64);
        let mut wanted = Vec::new();
        for l in listed {
            if self
                .followed
                .get(&l.key)
                .is_some_and(|f| f.version == l.version)
            {
                continue;
            }
            if l.stored > self.max_document {
                self.skip(&l.key, l.version, l.stored, "too_large");
                continue;
            }
            wanted.push(self.wanted(l.key, l.stored));
        }
        for key in extra {
            wanted.push(self.wanted(key, 0));
        }
        let kept: HashSet<&str> = wanted.iter().map(|w| w.key.as_str()).collect();
        self.waiting.retain(|k, _| kept.contains(k.as_str()));
        wanted.sort_by_key(|w| w.since);
        let (now, later) = budget(wanted, self.max_poll);
        self.metrics.deferred.set(later as i64);
        let mut n = 0;
        for batch in batches(&now) {
            let fetched = rows::fetch(&self.pool, &batch, self.max_document, &self.zone).await?;
            n += self.take(fetched).await?;
        }
        Ok(n)
    }

    fn wanted(&mut self, key: String, stored: i64) -> Wanted {
        let since = *self.waiting.entry(key.clone()).or_insert(self.polls);
        Wanted { key, stored, since }
    }

    /// Records a document not read (so it is not tried again until it changes), counts it,
    /// and names the execution in the log once.
    fn skip(&mut self, key: &str, version: String, len: i64, reason: &'static str) {
        self.metrics.skipped.with_label_values(&[reason]).inc();
        let f = self.followed.entry(key.to_string()).or_default();
        f.version = version;
        if self.noted.len() >= MAX_NOTED {
            self.noted.clear();
        }
        if self.noted.insert(key.to_string()) {
            tracing::warn!(
                execution = key,
                bytes = len,
                reason,
                limit = self.max_document,
                "kestra: an execution's JSON is not read (--kestra-db-max-document-bytes); its task runs are not followed while it is so"
            );
        }
    }

    /// Diffs the fetched executions against what was submitted, submits the changes, records
    /// new workers.
    async fn take(&mut self, fetched: Vec<Fetched>) -> Result<usize> {
        // checked before any row is taken, so a failed poll leaves nothing half recorded
        if let Some(row) = fetched.iter().find(|r| r.zone_ok == Some(false)) {
            return Err(rows::zone_mismatch(&self.pool, &self.zone, row.shown_offset).await);
        }
        let mut updates = Vec::new();
        let mut new_workers: Vec<String> = Vec::new();
        let mut unknown = Vec::new();
        for row in fetched {
            self.waiting.remove(&row.key);
            self.metrics.documents_fetched.inc();
            let Some(json) = row.json else {
                self.skip(&row.key, row.version, row.len, "too_large");
                continue;
            };
            self.metrics.fetched_bytes.inc_by(json.len() as u64);
            let ex = match Execution::parse(&json) {
                Ok(ex) => ex,
                Err(_) => {
                    self.skip(&row.key, row.version, row.len, "unreadable");
                    continue;
                }
            };
            drop(json);
            for w in ex.worker_ids() {
                if !self.workers.contains_key(w) {
                    new_workers.push(w.to_string());
                }
            }
            let f = self.followed.entry(row.key).or_default();
            f.version = row.version;
            f.ended = ex.state.as_ref().is_some_and(|s| is_terminated(&s.current));
            for run in ex.updates(&mut unknown) {
                let now = Seen::of(&run);
                if f.runs.get(&run.task_id) == Some(&now) {
                    continue;
                }
                f.runs.insert(run.task_id.clone(), now);
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
        new_workers.sort();
        new_workers.dedup();
        // the updates are recorded as seen above, so they go out even if the look-up fails
        let resolved = self.resolve_workers(new_workers).await;
        let n = updates.len();
        self.submit(updates).await;
        resolved.map(|()| n)
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
        self.metrics.polls.observe(took, failed);
    }
}

/// Splits `wanted` (in order) into what one poll fetches, within `max` bytes as stored (at
/// least one), and the number left for later.
fn budget(wanted: Vec<Wanted>, max: i64) -> (Vec<Wanted>, usize) {
    let mut total = 0i64;
    let mut now = Vec::new();
    let mut later = 0;
    for w in wanted {
        if !now.is_empty() && total.saturating_add(w.stored) > max {
            later += 1;
            continue;
        }
        total = total.saturating_add(w.stored);
        now.push(w);
    }
    (now, later)
}

/// The keys of `wanted` in queries of at most [`FETCH_BATCH`] rows and [`BATCH_BYTES`].
fn batches(wanted: &[Wanted]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0i64;
    for w in wanted {
        let full = out
            .last()
            .is_none_or(|b| b.len() >= FETCH_BATCH || bytes.saturating_add(w.stored) > BATCH_BYTES);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes = bytes.saturating_add(w.stored);
        if let Some(b) = out.last_mut() {
            b.push(w.key.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, stored: i64, since: u64) -> Wanted {
        Wanted {
            key: key.into(),
            stored,
            since,
        }
    }

    #[test]
    fn a_poll_fetches_within_its_budget_and_at_least_one() {
        let (now, later) = budget(vec![w("a", 60, 0), w("b", 50, 0), w("c", 40, 1)], 100);
        let keys: Vec<&str> = now.iter().map(|w| w.key.as_str()).collect();
        assert_eq!((keys, later), (vec!["a", "c"], 1));
        let (now, later) = budget(vec![w("huge", 500, 0)], 100);
        assert_eq!((now.len(), later), (1, 0));
    }

    #[test]
    fn batches_hold_at_most_their_rows_and_bytes() {
        let many: Vec<Wanted> = (0..2_500).map(|i| w(&i.to_string(), 10, 0)).collect();
        let sizes: Vec<usize> = batches(&many).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        let big = vec![w("a", BATCH_BYTES, 0), w("b", 1, 0), w("c", BATCH_BYTES, 0)];
        let sizes: Vec<usize> = batches(&big).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
        assert!(batches(&[]).is_empty());
    }
}
