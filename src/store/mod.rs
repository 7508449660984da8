//! The store: SQLite (the embedded default) or PostgreSQL, behind one type.
//!
//! Migrations for both are embedded in the binary. All writes go through one batching
//! [`writer`], so many tasks share one transaction (group commit). Every task write is
//! conditional: it never overwrites a terminal row or a row with a newer `updateTime`, so a
//! stale write from anywhere (a late batch, another replica) cannot undo a completion.

mod metrics;
mod postgres;
pub mod prune;
mod queries;
mod repairs;
mod rows;
mod sqlite;
pub mod writer;

use crate::error::{Error, Result};
use crate::model::{Attempt, TaskEvent, TaskRecord};
use rows::TaskRow;

pub use metrics::StoreMetrics;
pub use queries::VERSIONED_LIST;
pub use rows::TASK_COLUMNS;
pub use writer::{Commit, Op, WriteKind, WriterHandle};

/// A batch for one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub tasks: Vec<TaskRecord>,
    /// History written whatever happens to the rows (rejected updates).
    pub events: Vec<TaskEvent>,
    /// History of the task rows in this batch (accepted status changes), and the workers of
    /// their attempts: written only for rows the conditional upsert actually wrote.
    pub task_events: Vec<TaskEvent>,
    pub attempts: Vec<Attempt>,
    /// Tasks whose history beyond the newest lines, and attempts beyond the newest, are deleted
    /// in this transaction.
    pub prune_events: Vec<std::sync::Arc<str>>,
    pub prune_attempts: Vec<std::sync::Arc<str>>,
}

impl Batch {
    /// The events and attempts to store once `conflicts` (indexes into `tasks`) are known.
    pub(crate) fn history_after(&self, conflicts: &[usize]) -> (Vec<&TaskEvent>, Vec<&Attempt>) {
        let lost: std::collections::HashSet<&str> =
            conflicts.iter().map(|i| &*self.tasks[*i].task_id).collect();
        let events = self
            .events
            .iter()
            .chain(
                self.task_events
                    .iter()
                    .filter(|e| !lost.contains(&*e.task_id)),
            )
            .collect();
        let attempts = self
            .attempts
            .iter()
            .filter(|a| !lost.contains(&*a.task_id))
            .collect();
        (events, attempts)
    }
}

/// How long taking a PostgreSQL connection from the pool may wait, once running. sqlx retries a
/// refused connection until this runs out, so it is also how long a store outage takes to
/// surface as an error: the writer flags the store failing (and ingest answers 503 at once)
/// after this, not after the 10 s a starting service waits for its database.
const PG_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to PostgreSQL, waiting up to `timeout` for the server, with a pool whose acquire
/// timeout is the shorter [`PG_ACQUIRE_TIMEOUT`].
async fn connect_postgres(url: &str, timeout: std::time::Duration) -> Result<sqlx::PgPool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let this_try = left
            .min(PG_ACQUIRE_TIMEOUT)
            .max(std::time::Duration::from_millis(100));
        match postgres::connect(url, this_try).await {
            Err(Error::Database(sqlx::Error::PoolTimedOut))
                if tokio::time::Instant::now() < deadline => {}
            other => return other,
        }
    }
}

/// SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Connects to `sqlite://PATH` (created if absent) or `postgres://...`, waiting up to 10 s
    /// for the server.
    pub async fn connect(url: &str) -> Result<Store> {
        Self::connect_within(url, std::time::Duration::from_secs(10)).await
    }

    /// Connects, giving up after `timeout` (a one-shot command shouldn't wait as long as a
    /// service starting next to its database).
    pub async fn connect_within(url: &str, timeout: std::time::Duration) -> Result<Store> {
        if url.starts_with("sqlite:") {
            sqlite::connect(url, timeout).await.map(Store::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            connect_postgres(url, timeout).await.map(Store::Postgres)
        } else {
            Err(Error::UnsupportedDatabase(crate::settings::redact_url(url)))
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
            Store::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Reachable, and every embedded migration applied.
    pub async fn ready(&self) -> Result<()> {
        let expected = match self {
            Store::Sqlite(_) => sqlx::migrate!("migrations/sqlite").iter().count(),
            Store::Postgres(_) => sqlx::migrate!("migrations/postgres").iter().count(),
        } as i64;
        let has_table: bool = match self {
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')")
                    .fetch_one(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await?
            }
        };
        if !has_table {
            return Err(Error::NotMigrated(
                "the database has no taskpulse tables; run `taskpulse migrate` (or start `taskpulse serve`, which migrates)".into(),
            ));
        }
        let applied: i64 = match self {
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?
            }
        };
        if applied < expected {
            return Err(Error::NotMigrated(format!(
                "the database has {applied} of {expected} migrations applied; run `taskpulse migrate`"
            )));
        }
        Ok(())
    }

    /// Writes one batch in one transaction. Returns the indexes of task rows that were not
    /// written because the stored row is terminal or newer (a conflict).
    #[tracing::instrument(name = "store_write", skip_all)]
    pub async fn write_batch(&self, batch: &Batch) -> Result<Vec<usize>> {
        match self {
            Store::Sqlite(pool) => sqlite::write_batch(pool, batch).await,
            Store::Postgres(pool) => postgres::write_batch(pool, batch).await,
        }
    }

    /// Tasks to rebuild memory from: every unfinished task, and finished ones newer than
    /// `terminal_since` (epoch ms).
    pub async fn load_tasks(&self, terminal_since: i64) -> Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        self.each_task(terminal_since, &mut |rec| out.push(rec))
            .await?;
        Ok(out)
    }

    /// Hands every unfinished task, and every task finished since `terminal_since`, to `each`
    /// as its row arrives; returns how many. The start-up rebuild uses this, so a million rows
    /// never sit in a vector (twice: rows, then records) next to the table they are going into:
    /// that cost ~100 B per task of memory the allocator kept afterwards.
    pub async fn each_task(
        &self,
        terminal_since: i64,
        each: &mut (dyn FnMut(TaskRecord) + Send),
    ) -> Result<usize> {
        use futures_util::TryStreamExt;
        let sql = format!(
            "SELECT {} FROM tasks WHERE terminal_at IS NULL OR terminal_at >= $1",
            rows::TASK_COLUMNS
        );
        // One loop over either backend's row stream (the pools' types differ).
        macro_rules! stream_into {
            ($pool:expr, $sql:expr) => {{
                let mut rows = sqlx::query_as::<_, TaskRow>($sql)
                    .bind(terminal_since)
                    .fetch($pool);
                let mut n = 0;
                while let Some(row) = rows.try_next().await? {
                    each(TaskRecord::try_from(row)?);
                    n += 1;
                }
                n
            }};
        }
        Ok(match self {
            Store::Sqlite(pool) => {
                let sql = rows::for_sqlite(&sql);
                stream_into!(pool, &sql)
            }
            Store::Postgres(pool) => stream_into!(pool, &sql),
        })
    }

    pub async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        match self {
            Store::Sqlite(pool) => sqlite::get_task(pool, task_id).await,
            Store::Postgres(pool) => postgres::get_task(pool, task_id).await,
        }
    }

    /// The stored tasks among `ids` (one query per few thousand ids).
    pub async fn get_tasks(&self, ids: &[&str]) -> Result<Vec<TaskRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Sqlite(pool) => sqlite::get_tasks(pool, ids).await,
            Store::Postgres(pool) => postgres::get_tasks(pool, ids).await,
        }
    }

    /// The newest `limit` events of a task, newest first.
    pub async fn task_history(&self, task_id: &str, limit: i64) -> Result<Vec<TaskEvent>> {
        match self {
            Store::Sqlite(pool) => sqlite::task_history(pool, task_id, limit).await,
            Store::Postgres(pool) => postgres::task_history(pool, task_id, limit).await,
        }
    }

    pub async fn task_attempts(&self, task_id: &str) -> Result<Vec<Attempt>> {
        match self {
            Store::Sqlite(pool) => sqlite::task_attempts(pool, task_id).await,
            Store::Postgres(pool) => postgres::task_attempts(pool, task_id).await,
        }
    }

    /// Records the hosts of these workers (`(worker id, host)`), seen `now`: what an engine
    /// adapter learned from the engine's service registry, kept after the worker is gone.
    pub async fn record_workers(&self, workers: &[(String, String)], now: i64) -> Result<()> {
        const UPSERT: &str = "INSERT INTO workers (worker_id, host, seen) VALUES ($1, $2, $3) \
             ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, seen = excluded.seen";
        match self {
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for (id, host) in workers {
                    sqlx::query(&rows::for_sqlite(UPSERT))
                        .bind(id)
                        .bind(host)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for (id, host) in workers {
                    sqlx::query(UPSERT)
                        .bind(id)
                        .bind(host)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The recorded hosts of these workers.
    pub async fn worker_hosts(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut out = std::collections::HashMap::new();
        for id in ids {
            let host: Option<String> = match self {
                Store::Sqlite(pool) => {
                    sqlx::query_scalar("SELECT host FROM workers WHERE worker_id = ?")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?
                }
                Store::Postgres(pool) => {
                    sqlx::query_scalar("SELECT host FROM workers WHERE worker_id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?
                }
            };
            if let Some(h) = host {
                out.insert(id.to_string(), h);
            }
        }
        Ok(out)
    }

    /// The store the writer should use: on SQLite a pool of one connection of its own (so the
    /// large statements of its batches are prepared on one connection, not on every one of
    /// the shared pool's), which the caller closes when done; on PostgreSQL `None`, the shared
    /// pool (its statements live on the server's side).
    pub async fn for_writer(&self) -> Result<Option<Store>> {
        match self {
            Store::Sqlite(pool) => Ok(Some(Store::Sqlite(sqlite::writer_pool(pool).await?))),
            Store::Postgres(_) => Ok(None),
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// Whether a failed store call is about the store being unreachable, restarting, overloaded or
/// locked (so the same write will succeed later), rather than the store refusing the data.
///
/// The writer uses this to decide between retrying a batch forever and splitting it row by row
/// to find a row the store refuses: splitting on an outage would answer waiting clients with
/// "refused" and drop rows that only needed the store to come back. PostgreSQL reports a
/// shutdown (`57P01`) and a server still starting (`57P03`) as database errors, and SQLite
/// reports a lock held by another process as `SQLITE_BUSY`, so the error kind alone is not
/// enough: the SQLSTATE class or SQLite result code decides.
pub fn is_transient(e: &Error) -> bool {
    let Error::Database(e) = e else {
        return matches!(e, Error::Io(_));
    };
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Decided by the backend, not by the code's look: many SQLSTATEs are all digits
            // ("08006", "40001", "53100") and would read as SQLite result codes.
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            if sqlite {
                let n = code.parse::<i64>().unwrap_or_default();
                // SQLite: the primary result code is the low byte of the extended one.
                // BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL.
                matches!(n & 0xff, 5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15)
            } else {
                // PostgreSQL SQLSTATE classes: connection exception, insufficient resources,
                // operator intervention (shutdown, cancel), system error, transaction rollback
                // (serialization, deadlock), lock not available, and a read-only transaction:
                // a primary that failed over and came back as a standby, or a database set
                // read-only for maintenance, takes writes again later.
                ["08", "53", "57", "58", "40"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || code == "55P03"
                    || code == "25006"
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
