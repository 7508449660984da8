//! SQLite backend: the embedded default. One file, WAL journal, created if absent.
//!
//! A batch is one transaction of multi-row statements.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::rows::{
    for_sqlite, prune_attempts_sql, prune_events_sql, upsert_set_clause, AttemptRow, EventRow,
    TaskRow, ATTEMPT_COLUMNS, ATTEMPT_UPSERT, EVENT_COLUMNS, OVERWRITE_GUARD, TASK_COLUMNS,
};
use super::Batch;
use crate::error::Result;
use crate::model::{Attempt, TaskEvent, TaskRecord};

/// SQLite's own page cache per connection, in KiB (its default is 2,000). The operating
/// system's page cache holds the file's hot pages anyway; SQLite's, one per connection of the
/// four, was about 80 bytes per tracked task at 100,000 tasks. At 256 KiB: 45 bytes per task
/// less (BENCHMARKS.md, issue 27's fourth stop), and no ingest difference side by side.
const CACHE_KIB: u32 = 256;

pub(super) async fn connect(url: &str, timeout: Duration) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        // A new database gives deleted rows' pages back (retention: `Store::reclaim`); on an
        // existing one this has no effect until `taskpulse migrate` converts it.
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged completion survives a power cut, not only a process crash.
        // Group commit keeps the fsync cost per batch, not per update.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .pragma("cache_size", format!("-{CACHE_KIB}"));
    pool_of(options, CONNECTIONS, timeout).await
}

async fn pool_of(
    options: SqliteConnectOptions,
    connections: u32,
    timeout: Duration,
) -> Result<SqlitePool> {
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Connections of the shared pool: reads (API, checker, status page) and the rare writes of
/// repairs and retention. The writer has one more of its own ([`writer_pool`]).
const CONNECTIONS: u32 = 3;

/// A pool of one connection, to the same file with the same settings, for the writer alone.
///
/// Every connection keeps the statements it prepared, and a full chunk's statement is a
/// compiled program of up to megabytes ([`keep_prepared`]). Taking connections from the shared
/// pool, the writer went round all of them and each came to keep its own copies: at 100,000
/// tasks, 95 bytes per task more when they arrived in bodies of 5,000, 37 in bodies of 1,000
/// (BENCHMARKS.md, issue 27's fourth stop). With one connection, one copy.
pub(super) async fn writer_pool(shared: &SqlitePool) -> Result<SqlitePool> {
    let options = (*shared.connect_options()).clone();
    pool_of(options, 1, shared.options().get_acquire_timeout()).await
}

/// Rows per multi-row statement. sqlx's SQLite driver costs tens of microseconds per
/// statement (it hands each one to the connection's worker thread), so rows go in chunks; the
/// sizes keep each statement under SQLite's 32,766 bound parameters.
const TASK_ROWS: usize = 500;
const EVENT_ROWS: usize = 1000;
const ATTEMPT_ROWS: usize = 1000;
/// Ids per `IN (...)` list, at most.
const ID_LIST: usize = 10_000;

/// Chunks of at most this many rows keep their statement prepared, besides full ones.
const SMALL_CHUNK: usize = 16;

/// Whether the statement of a chunk of `rows` rows, of a kind whose full chunk is `full`,
/// stays prepared in the connection's cache.
///
/// The text of a multi-row statement differs with its row count, sqlx keeps up to 100
/// prepared statements per connection, and one of hundreds of rows is a compiled program of
/// up to megabytes: keeping every size the batches happened to have made memory grow with
/// body sizes (at 100,000 tasks sent in bodies of 5,000, about 230 bytes per task more than
/// in bodies of 1,000). Keeping none made a write of a few new tasks prepare its statements
/// each time (a quarter fewer new tasks per second). So full chunks and small ones stay
/// prepared (at most 16 sizes of a few kilobytes each per kind); a statement of 17 rows or
/// more that is not full is prepared for its one use, which its rows amortize.
pub(super) fn keep_prepared(rows: usize, full: usize) -> bool {
    rows == full || rows <= SMALL_CHUNK
}

/// Writes a batch in one transaction on a connection of its own. A connection whose batch
/// failed is closed rather than given back to the pool: after an error such as a full disk,
/// SQLite may keep the transaction open, and a later batch on that connection would then
/// "commit" into it without anything reaching the file (found with a disk that filled again
/// while batches were being retried).
pub(super) async fn write_batch(pool: &SqlitePool, batch: &Batch) -> Result<Vec<usize>> {
    let mut conn = pool.acquire().await?;
    match write_batch_on(&mut conn, batch).await {
        Ok(conflicts) => Ok(conflicts),
        Err(e) => {
            let _ = conn.close().await;
            Err(e)
        }
    }
}

/// Closes `SELECT * FROM (VALUES ...` so that only rows of tasks the store holds are inserted:
/// history and attempts are never written for a task retention already deleted (they would
/// never be deleted themselves). The `WHERE` also keeps SQLite from reading a following
/// `ON CONFLICT` as a join constraint.
const ONLY_STORED_TASKS: &str =
    ") AS v WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = v.column1)";

async fn write_batch_on(
    conn: &mut sqlx::pool::PoolConnection<Sqlite>,
    batch: &Batch,
) -> Result<Vec<usize>> {
    use sqlx::Connection;
    let mut conflicts = Vec::new();
    let mut tx = conn.begin().await?;
    for (n, chunk) in batch.tasks.chunks(TASK_ROWS).enumerate() {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO tasks ({TASK_COLUMNS}) "));
        q.push_values(chunk, |mut b, t| {
            b.push_bind(&*t.task_id)
                .push_bind(&*t.workflow_id)
                .push_bind(&*t.task_type)
                .push_bind(t.workflow_type.as_deref())
                .push_bind(t.reference_task_name.as_deref())
                .push_bind(t.seq)
                .push_bind(t.iteration)
                .push_bind(t.retry_count)
                .push_bind(t.status.as_str())
                .push_bind(t.progress)
                .push_bind(t.progress_message.as_deref())
                .push_bind(t.worker_id.as_deref())
                .push_bind(t.start_time)
                .push_bind(t.update_time)
                .push_bind(t.timeout_seconds)
                .push_bind(t.response_timeout_seconds)
                .push_bind(t.wait_until)
                .push_bind(t.parent_task_id.as_deref())
                .push_bind(t.iteration_value.as_deref())
                .push_bind(t.end_time)
                .push_bind(t.reopened_at)
                .push_bind(t.first_seen)
                .push_bind(t.last_seen)
                .push_bind(t.progress_changed)
                .push_bind(t.terminal_at);
        });
        q.push(format!(
            " ON CONFLICT (task_id) DO UPDATE SET {} WHERE {OVERWRITE_GUARD} RETURNING task_id",
            upsert_set_clause()
        ));
        // Rows the guard refused are not returned.
        let written: Vec<String> = q
            .build_query_scalar()
            .persistent(keep_prepared(chunk.len(), TASK_ROWS))
            .fetch_all(&mut *tx)
            .await?;
        if written.len() < chunk.len() {
            let written: HashSet<&str> = written.iter().map(String::as_str).collect();
            conflicts.extend(
                (0..chunk.len())
                    .filter(|i| !written.contains(&*chunk[*i].task_id))
                    .map(|i| n * TASK_ROWS + i),
            );
        }
    }
    let (events, attempts) = batch.history_after(&conflicts);
    for chunk in events.chunks(EVENT_ROWS) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT INTO task_events ({EVENT_COLUMNS}) SELECT * FROM ("
        ));
        q.push_values(chunk, |mut b, e| {
            b.push_bind(&*e.task_id)
                .push_bind(e.at)
                .push_bind(e.outcome.as_str())
                .push_bind(e.from.map(|s| s.as_str()))
                .push_bind(e.to.as_str())
                .push_bind(e.reason.as_deref())
                .push_bind(e.worker_id.as_deref())
                .push_bind(e.progress_percent)
                .push_bind(e.update_time)
                .push_bind(e.count as i32)
                .push_bind(e.last_at);
        });
        q.push(ONLY_STORED_TASKS);
        q.build()
            .persistent(keep_prepared(chunk.len(), EVENT_ROWS))
            .execute(&mut *tx)
            .await?;
    }
    for chunk in attempts.chunks(ATTEMPT_ROWS) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT INTO task_attempts ({ATTEMPT_COLUMNS}) SELECT * FROM ("
        ));
        q.push_values(chunk, |mut b, a| {
            b.push_bind(&*a.task_id)
                .push_bind(a.attempt)
                .push_bind(&*a.worker_id)
                .push_bind(a.status.map(|s| s.as_str()))
                .push_bind(a.start_time)
                .push_bind(a.end_time)
                .push_bind(a.first_seen)
                .push_bind(a.last_seen);
        });
        q.push(ONLY_STORED_TASKS);
        // SQLite's two-argument max() is GREATEST
        q.push(format!(" {}", ATTEMPT_UPSERT.replace("GREATEST(", "max(")));
        q.build()
            .persistent(keep_prepared(chunk.len(), ATTEMPT_ROWS))
            .execute(&mut *tx)
            .await?;
    }
    for (ids, sql) in [
        (&batch.prune_events, prune_events_sql()),
        (&batch.prune_attempts, prune_attempts_sql()),
    ] {
        let sql = for_sqlite(&sql);
        for id in ids {
            sqlx::query(&sql).bind(&**id).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(conflicts)
}

pub(super) async fn get_task(pool: &SqlitePool, task_id: &str) -> Result<Option<TaskRecord>> {
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?"
    ))
    .bind(task_id)
    .fetch_optional(pool)
    .await?;
    row.map(TaskRecord::try_from).transpose()
}

pub(super) async fn get_tasks(pool: &SqlitePool, ids: &[&str]) -> Result<Vec<TaskRecord>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(ID_LIST) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id IN ("
        ));
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        let rows: Vec<TaskRow> = q
            .build_query_as()
            .persistent(keep_prepared(chunk.len(), ID_LIST))
            .fetch_all(pool)
            .await?;
        for r in rows {
            out.push(TaskRecord::try_from(r)?);
        }
    }
    Ok(out)
}

pub(super) async fn task_history(
    pool: &SqlitePool,
    task_id: &str,
    limit: i64,
) -> Result<Vec<TaskEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM task_events WHERE task_id = ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(task_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TaskEvent::try_from).collect()
}

pub(super) async fn task_attempts(pool: &SqlitePool, task_id: &str) -> Result<Vec<Attempt>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM (SELECT {ATTEMPT_COLUMNS} FROM task_attempts WHERE task_id = ? \
         ORDER BY attempt DESC, last_seen DESC LIMIT {}) ORDER BY attempt, first_seen",
        crate::model::ATTEMPTS_KEPT
    ))
    .bind(task_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Attempt::from).collect())
}

#[cfg(test)]
pub(super) mod tests {
    use sqlx::pool::PoolConnection;
    use sqlx::{Connection, Sqlite, SqlitePool};

    use super::{CACHE_KIB, CONNECTIONS, SMALL_CHUNK};
    use crate::model::TaskRecord;
    use crate::store::{Batch, Store};

    /// A migrated SQLite store in `dir`.
    pub(crate) async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// Every connection the pool may hold, held at once so none is looked at twice.
    pub(crate) async fn every_connection(pool: &SqlitePool) -> Vec<PoolConnection<Sqlite>> {
        let mut conns = Vec::new();
        for _ in 0..pool.options().get_max_connections() {
            conns.push(pool.acquire().await.unwrap());
        }
        conns
    }

    /// Statements whose text depends on how many rows or ids they carry stay prepared only
    /// when small or full, so the connections keep few of them however many sizes the batches
    /// had: each size was kept until 100 others pushed it out, and memory grew with the sizes
    /// bodies had.
    #[tokio::test]
    async fn batches_of_any_size_keep_few_statements_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let sizes = 1..=200;
        for n in sizes.clone() {
            let ids: Vec<String> = (0..n).map(|i| format!("t{n}-{i}")).collect();
            let batch = Batch {
                tasks: ids
                    .iter()
                    .map(|id| TaskRecord::in_progress(id, 1_000))
                    .collect(),
                ..Batch::default()
            };
            store.write_batch(&batch).await.unwrap();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            assert_eq!(store.get_tasks(&ids).await.unwrap().len(), n);
            assert_eq!(store.get_tasks_versioned(&ids).await.unwrap().len(), n);
        }
        let Store::Sqlite(pool) = &store else {
            unreachable!("a SQLite URL")
        };
        for c in every_connection(pool).await {
            let cached = c.cached_statements_size();
            // three sized statements in the sizes kept (1 to SMALL_CHUNK rows; no chunk here is
            // full), and the few of fixed text
            assert!(
                cached <= 3 * SMALL_CHUNK + 10,
                "{cached} statements kept prepared after batches of {} sizes",
                sizes.clone().count()
            );
        }
    }

    /// Every connection of the pool has the smaller page cache, not only the first.
    #[tokio::test]
    async fn every_connection_keeps_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let Store::Sqlite(pool) = &store else {
            unreachable!("a SQLite URL")
        };
        let mut conns = every_connection(pool).await;
        assert_eq!(
            conns.len(),
            CONNECTIONS as usize,
            "every connection is checked"
        );
        for c in &mut conns {
            let kib: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            assert_eq!(kib, -i64::from(CACHE_KIB), "cache_size of a connection");
        }
    }
}
