//! Airflow's metadata database followed (`--airflow-db`), read-only: every task instance's
//! transitions, the host of each try, and the WAIT queue of deferred task instances and
//! reschedule-mode sensors (`docs/engines/airflow.md` §7).
//!
//! - **What changed.** `task_instance.updated_at` has no index, so a poll never filters on it.
//!   Each poll lists what is in flight through Airflow's own indexes: the DAG runs queued or
//!   running (two partial indexes) and those created since the last poll (primary key), and the
//!   task instances in an unfinished state (`ti_state`). A task instance followed and no
//!   longer listed has finished: it is read again by its key
//!   (`task_instance_composite_key`). A DAG run that ended has its task instances read once
//!   (`ti_dag_run`), for those that finished between two polls unseen. An idle poll therefore
//!   reads what is in flight, never the history.
//! - **Once per transition.** A task instance is submitted (`source="airflow_db"`) only when
//!   its state, try, host or `updated_at` changed; its earlier tries (`task_instance_history`,
//!   by key) are read only then, and only when it has had more than one.
//! - **Waits.** A deferred task instance is due at its `DateTimeTrigger`'s moment (from the
//!   trigger's kwargs when they are not encrypted), else at its `trigger_timeout`; a
//!   reschedule-mode sensor at its newest `task_reschedule.reschedule_date`. Both are read when
//!   the task instance changes, and its wake-up lag observed when it is scheduled again.
//! - **Start.** The first poll reads what is in flight, and the current row of every task
//!   taskpulse holds in flight under an Airflow id: finished history is not replayed.
//! - **Failures** never end the reader: it keeps its state, says so in `/readyz`, and retries
//!   with backoff (`store_source::run`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::instance::{self, is_finished, is_waiting};
use super::metrics::AirflowMetrics;
use super::rows::{self, Instance, Key, Try};
use crate::engines::store_source::{self, read_only_pool, Health, Poller};
use crate::error::{Error, Result};
use crate::ingest::TaskUpdate;
use crate::pipeline::Pipeline;
use crate::store::Store;
use crate::wait::{WaitMetrics, WaitSnapshot, WaitTally};

/// The `source` of updates read from Airflow's database.
pub const SOURCE: &str = "airflow_db";
/// `application_name` of taskpulse's sessions on Airflow's database.
pub const APPLICATION_NAME: &str = "taskpulse-airflow";
/// Hosts remembered as recorded in taskpulse's store, at most (then recorded again).
const MAX_HOSTS: usize = 10_000;
/// Tasks' `execution_timeout`s remembered per DAG version, at most (then read again).
const MAX_TIMEOUTS: usize = 100_000;

/// What taskpulse takes from a task instance; submitted again only when this changed.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    state: Option<String>,
    try_number: i32,
    host: Option<String>,
    updated: Option<i64>,
}

impl Seen {
    fn of(i: &Instance) -> Seen {
        Seen {
            state: i.state.clone(),
            try_number: i.try_number,
            host: i.hostname.clone(),
            updated: i.updated,
        }
    }
}

/// A task instance followed: what was submitted, and its wait.
#[derive(Clone, Debug)]
struct Followed {
    seen: Seen,
    scheduled: Option<i64>,
    /// When it is due to wake, while it waits (deferred, up for reschedule).
    due: Option<i64>,
}

/// What the waits of changed task instances are read from.
#[derive(Default)]
struct Dues {
    moments: HashMap<i32, Option<i64>>,
    reschedules: HashMap<String, i64>,
}

/// What the pieces of one poll read.
struct Read {
    rows: Vec<Instance>,
    in_flight: HashSet<(String, String)>,
    /// The highest `dag_run.id` listed, taken once the poll succeeded (a failed poll lists the
    /// same new runs again).
    last_run: i64,
}

pub struct AirflowReader {
    pool: PgPool,
    pipeline: Arc<Pipeline>,
    store: Store,
    followed: HashMap<Key, Followed>,
    /// DAG runs queued or running at the last poll.
    runs: HashSet<(String, String)>,
    /// The highest `dag_run.id` seen.
    last_run: i64,
    hosts: HashSet<String>,
    /// `execution_timeout` (seconds) per (DAG version, task id), read once each.
    timeouts: HashMap<(String, String), Option<f64>>,
    unknown: HashSet<String>,
    unsent: Vec<TaskUpdate>,
    wait_metrics: WaitMetrics,
    wait_tx: watch::Sender<WaitSnapshot>,
    grace: Duration,
    metrics: AirflowMetrics,
    health: Health,
}

impl AirflowReader {
    /// Connects read-only and runs the first pass. A database that can't be reached, or that
    /// has no Airflow 3 tables, stops start-up.
    pub async fn start(
        url: &str,
        pipeline: Arc<Pipeline>,
        store: Store,
        metrics: AirflowMetrics,
        wait_metrics: WaitMetrics,
        grace: Duration,
    ) -> Result<(AirflowReader, watch::Receiver<WaitSnapshot>)> {
        let pool = read_only_pool("airflow-db", APPLICATION_NAME, url)?
            .connect()
            .await?;
        let has: bool = sqlx::query_scalar(
            "SELECT count(*) = 2 FROM information_schema.columns WHERE table_schema = current_schema() \
             AND ((table_name = 'task_instance' AND column_name = 'id') \
             OR (table_name = 'task_instance_history' AND column_name = 'task_instance_id'))",
        )
        .fetch_one(&pool)
        .await?;
        if !has {
            return Err(Error::Config(
                "no Airflow 3 `task_instance` and `task_instance_history` tables in this database: is it Airflow's metadata database (Airflow 3.x, after `airflow db migrate`)?".into(),
            ));
        }
        let (wait_tx, wait_rx) = watch::channel(WaitSnapshot::default());
        let mut reader = AirflowReader {
            pool,
            pipeline,
            store,
            followed: HashMap::new(),
            runs: HashSet::new(),
            last_run: 0,
            hosts: HashSet::new(),
            timeouts: HashMap::new(),
            unknown: HashSet::new(),
            unsent: Vec::new(),
            wait_metrics,
            wait_tx,
            grace,
            metrics,
            health: Health::new("Airflow's metadata database (--airflow-db)"),
        };
        let n = reader.first_pass().await?;
        tracing::info!(
            task_instances = n,
            "following Airflow's task instances (--airflow-db)"
        );
        Ok((reader, wait_rx))
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    async fn first_pass(&mut self) -> Result<usize> {
        self.last_run = rows::last_run_id(&self.pool).await?;
        let runs = rows::runs(&self.pool, self.last_run).await?;
        let in_flight = runs.into_iter().map(|r| (r.dag_id, r.run_id)).collect();
        let mut listed = rows::in_flight(&self.pool).await?;
        let known: HashSet<String> = listed.iter().map(|i| i.key.task_id()).collect();
        // tasks taskpulse holds in flight under an Airflow id, as they are now
        let mut held: Vec<Key> = self
            .pipeline
            .tracker()
            .select(|r| !r.status.is_terminal())
            .into_iter()
            .filter(|r| !known.contains(r.task_id.as_ref()))
            .filter_map(|r| Key::parse(&r.task_id))
            .collect();
        held.sort();
        held.dedup();
        listed.extend(rows::by_key(&self.pool, &held).await?);
        let last_run = self.last_run;
        self.take(Read {
            rows: listed,
            in_flight,
            last_run,
        })
        .await
    }

    /// One poll; returns the number of task instances submitted.
    pub async fn poll(&mut self) -> Result<usize> {
        let pending = std::mem::take(&mut self.unsent);
        self.submit(pending).await;
        let read = self.read().await?;
        self.take(read).await
    }

    /// Lists what is in flight and reads what left it (§7 steps 1-3).
    async fn read(&mut self) -> Result<Read> {
        let runs = rows::runs(&self.pool, self.last_run).await?;
        let mut in_flight = HashSet::new();
        let mut ended: Vec<(String, String)> = Vec::new();
        let mut last_run = self.last_run;
        for r in &runs {
            last_run = last_run.max(r.id);
            let key = (r.dag_id.clone(), r.run_id.clone());
            if matches!(r.state.as_deref(), Some("queued" | "running")) {
                in_flight.insert(key);
            } else {
                ended.push(key); // created and ended since the last poll
            }
        }
        ended.extend(
            self.runs
                .iter()
                .filter(|r| !in_flight.contains(*r))
                .cloned(),
        );
        ended.sort();
        ended.dedup();
        let mut read = rows::in_flight(&self.pool).await?;
        let listed: HashSet<Key> = read.iter().map(|i| i.key.clone()).collect();
        let mut gone: Vec<Key> = self
            .followed
            .iter()
            .filter(|(k, f)| !listed.contains(*k) && !is_finished(f.seen.state.as_deref()))
            .map(|(k, _)| k.clone())
            .collect();
        gone.sort();
        let by_key = rows::by_key(&self.pool, &gone).await?;
        let found: HashSet<&Key> = by_key.iter().map(|i| &i.key).collect();
        for k in gone.iter().filter(|k| !found.contains(k)) {
            self.followed.remove(k); // its DAG run was deleted
        }
        let mut seen: HashSet<Key> = listed;
        seen.extend(by_key.iter().map(|i| i.key.clone()));
        read.extend(by_key);
        let of_runs = rows::of_runs(&self.pool, &ended).await?;
        read.extend(of_runs.into_iter().filter(|i| !seen.contains(&i.key)));
        self.metrics.rows.inc_by((runs.len() + read.len()) as u64);
        Ok(Read {
            rows: read,
            in_flight,
            last_run,
        })
    }

    /// Submits the rows that changed, with their earlier tries and waits; forgets what
    /// finished outside a DAG run in flight; publishes the WAIT queue.
    async fn take(&mut self, read: Read) -> Result<usize> {
        let changed: Vec<&Instance> = read
            .rows
            .iter()
            .filter(|i| self.followed.get(&i.key).map(|f| &f.seen) != Some(&Seen::of(i)))
            .collect();
        let with_tries: Vec<Key> = changed
            .iter()
            .filter(|i| i.try_number > 1 || (i.try_number == 1 && instance::attempt(i) == 1))
            .map(|i| i.key.clone())
            .collect();
        let tries = rows::history(&self.pool, &with_tries).await?;
        let dues = self.dues(&changed).await?;
        self.read_timeouts(&changed).await?;
        self.metrics.rows.inc_by(tries.len() as u64);
        let mut by_key: HashMap<&Key, Vec<&Try>> = HashMap::new();
        for t in &tries {
            by_key.entry(&t.key).or_default().push(t);
        }
        let now = crate::now_ms();
        let mut updates = Vec::new();
        let mut unknown = Vec::new();
        let mut hosts = Vec::new();
        for i in &changed {
            let earlier = by_key.get(&i.key).map(Vec::as_slice).unwrap_or_default();
            hosts.extend(earlier.iter().filter_map(|t| t.hostname.clone()));
            hosts.extend(i.hostname.clone());
            let timeout = i
                .dag_version
                .as_ref()
                .and_then(|v| self.timeouts.get(&(v.clone(), i.key.task_id.clone())))
                .copied()
                .flatten();
            if let Some(u) = instance::update(i, earlier, timeout, &mut unknown) {
                updates.push(u);
            }
            let due = due_of(i, &dues);
            self.woke(i, now);
            self.followed.insert(
                i.key.clone(),
                Followed {
                    seen: Seen::of(i),
                    scheduled: i.scheduled,
                    due,
                },
            );
        }
        self.note_unknown(unknown);
        let runs = read.in_flight;
        self.followed.retain(|k, f| {
            !is_finished(f.seen.state.as_deref())
                || runs.contains(&(k.dag_id.clone(), k.run_id.clone()))
        });
        self.runs = runs;
        self.last_run = read.last_run;
        self.publish(now);
        let n = updates.len();
        self.submit(updates).await;
        self.record_hosts(hosts).await?;
        Ok(n)
    }

    /// The trigger moments and reschedule dates of the changed task instances that wait.
    async fn dues(&mut self, changed: &[&Instance]) -> Result<Dues> {
        let triggers: Vec<i32> = changed
            .iter()
            .filter(|i| i.state.as_deref() == Some("deferred"))
            .filter_map(|i| i.trigger_id)
            .collect();
        let sensors: Vec<String> = changed
            .iter()
            .filter(|i| i.state.as_deref() == Some("up_for_reschedule"))
            .map(|i| i.id.clone())
            .collect();
        let kwargs = rows::triggers(&self.pool, &triggers).await?;
        let reschedules = rows::reschedules(&self.pool, &sensors).await?;
        self.metrics
            .rows
            .inc_by((kwargs.len() + reschedules.len()) as u64);
        Ok(Dues {
            moments: kwargs
                .into_iter()
                .map(|(id, k)| (id, k.as_deref().and_then(instance::trigger_moment)))
                .collect(),
            reschedules: reschedules.into_iter().collect(),
        })
    }

    /// Reads the `execution_timeout` of the changed task instances' tasks not known yet (once
    /// per DAG version and task, from the serialized DAG).
    async fn read_timeouts(&mut self, changed: &[&Instance]) -> Result<()> {
        let mut wanted: Vec<(String, String)> = changed
            .iter()
            .filter_map(|i| Some((i.dag_version.clone()?, i.key.task_id.clone())))
            .filter(|k| !self.timeouts.contains_key(k))
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let found = rows::timeouts(&self.pool, &wanted).await?;
        self.metrics.rows.inc_by(found.len() as u64);
        if self.timeouts.len() + wanted.len() > MAX_TIMEOUTS {
            self.timeouts.clear();
        }
        for k in wanted {
            self.timeouts.insert(k, None);
        }
        for (version, task, secs) in found {
            self.timeouts.insert((version, task), secs);
        }
        Ok(())
    }

    /// A task instance that waited with a due time and is scheduled again (or ended): its
    /// wake-up lag, from the due time to when Airflow scheduled it (§5).
    fn woke(&self, i: &Instance, now: i64) {
        let Some(before) = self.followed.get(&i.key) else {
            return;
        };
        let Some(due) = before.due else {
            return;
        };
        if is_waiting(i.state.as_deref()) || !is_waiting(before.seen.state.as_deref()) {
            return;
        }
        let at = i
            .scheduled
            .filter(|s| Some(*s) != before.scheduled)
            .unwrap_or(now);
        let lag = (at - due) as f64 / 1000.0;
        self.wait_metrics.woke(&i.key.dag_id, lag);
    }

    /// The WAIT queue: the followed task instances that wait, with their due times.
    fn publish(&self, now: i64) {
        let mut tally = WaitTally::new(now, self.grace);
        for (k, f) in &self.followed {
            if is_waiting(f.seen.state.as_deref()) {
                tally.add(&k.dag_id, f.due);
            }
        }
        self.wait_tx.send_replace(tally.finish());
    }

    fn note_unknown(&mut self, states: Vec<String>) {
        for state in states {
            if self.unknown.insert(state.clone()) {
                tracing::warn!(
                    state,
                    "airflow: a task instance state this taskpulse doesn't know; not followed"
                );
            }
        }
    }

    /// Records hosts not recorded yet as workers of their own name (the host is the worker).
    async fn record_hosts(&mut self, mut hosts: Vec<String>) -> Result<()> {
        hosts.sort();
        hosts.dedup();
        hosts.retain(|h| !self.hosts.contains(h));
        if hosts.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(String, String)> = hosts.iter().map(|h| (h.clone(), h.clone())).collect();
        self.store.record_workers(&pairs, crate::now_ms()).await?;
        if self.hosts.len() + hosts.len() > MAX_HOSTS {
            self.hosts.clear();
        }
        self.hosts.extend(hosts);
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

/// When a waiting task instance is due (§5): its trigger's moment, else its `trigger_timeout`;
/// its newest reschedule date. `None` for one that does not wait.
fn due_of(i: &Instance, dues: &Dues) -> Option<i64> {
    match i.state.as_deref() {
        Some("deferred") => i
            .trigger_id
            .and_then(|t| dues.moments.get(&t).copied().flatten())
            .or(i.trigger_timeout),
        Some("up_for_reschedule") => dues.reschedules.get(&i.id).copied(),
        _ => None,
    }
}

impl Poller for AirflowReader {
    const WHAT: &'static str = "Airflow's metadata database";

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
