//! Deleting what retention no longer keeps (`crate::retention` decides when): finished tasks
//! with their history and attempts, and old audit records. One bounded batch per short
//! transaction, so the writer never waits long for the lock; on SQLite the freed pages go back
//! to the file system (incremental vacuum), so the file shrinks rather than only stops growing.

use super::Store;
use crate::error::Result;

/// Rows one batch deleted, by table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: u64,
    pub events: u64,
    pub attempts: u64,
}

/// Finished before `$1`, oldest first, at most `$2`: never an in-flight task.
const FINISHED: &str =
    "SELECT task_id FROM tasks WHERE terminal_at IS NOT NULL AND terminal_at < $1 \
     ORDER BY terminal_at LIMIT $2";
const OLD_REPAIRS: &str =
    "DELETE FROM repairs WHERE id IN (SELECT id FROM repairs WHERE at < $1 ORDER BY id LIMIT $2)";

impl Store {
    /// Deletes up to `limit` tasks that finished before `before_ms`, with their history lines
    /// and attempts, in one transaction.
    pub async fn prune_finished(&self, before_ms: i64, limit: i64) -> Result<Pruned> {
        let mut p = Pruned::default();
        match self {
            Store::Sqlite(pool) => {
                // Read first, outside the transaction: one that starts with a read and then
                // writes fails at once (SQLITE_BUSY) if the writer committed in between, while
                // one that starts with a write waits for the lock (busy timeout). A task once
                // finished stays finished, so the ids stay valid.
                let ids: Vec<String> = sqlx::query_scalar(&super::rows::for_sqlite(FINISHED))
                    .bind(before_ms)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                if ids.is_empty() {
                    return Ok(p);
                }
                let mut tx = pool.begin().await?;
                // the ids as one JSON array, read back with json_each: one statement per table
                let list = serde_json::to_string(&ids).unwrap_or_default();
                let of = "task_id IN (SELECT value FROM json_each(?))";
                for (table, n) in [
                    ("task_events", &mut p.events),
                    ("task_attempts", &mut p.attempts),
                ] {
                    *n = sqlx::query(&format!("DELETE FROM {table} WHERE {of}"))
                        .bind(&list)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                p.tasks = sqlx::query(&format!(
                    "DELETE FROM tasks WHERE {of} AND terminal_at IS NOT NULL"
                ))
                .bind(&list)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let ids: Vec<String> = sqlx::query_scalar(FINISHED)
                    .bind(before_ms)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                if ids.is_empty() {
                    return Ok(p);
                }
                for (table, n) in [
                    ("task_events", &mut p.events),
                    ("task_attempts", &mut p.attempts),
                ] {
                    *n = sqlx::query(&format!("DELETE FROM {table} WHERE task_id = ANY($1)"))
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                p.tasks = sqlx::query(
                    "DELETE FROM tasks WHERE task_id = ANY($1) AND terminal_at IS NOT NULL",
                )
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
            }
        }
        Ok(p)
    }

    /// Deletes up to `limit` audit records older than `before_ms`; how many went.
    pub async fn prune_repairs(&self, before_ms: i64, limit: i64) -> Result<u64> {
        Ok(match self {
            Store::Sqlite(pool) => sqlx::query(&super::rows::for_sqlite(OLD_REPAIRS))
                .bind(before_ms)
                .bind(limit)
                .execute(pool)
                .await?
                .rows_affected(),
            Store::Postgres(pool) => sqlx::query(OLD_REPAIRS)
                .bind(before_ms)
                .bind(limit)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }

    /// Forgets the hosts of workers last seen before `before_ms`.
    pub async fn prune_workers(&self, before_ms: i64) -> Result<u64> {
        const OLD: &str = "DELETE FROM workers WHERE seen < $1";
        Ok(match self {
            Store::Sqlite(pool) => sqlx::query(&super::rows::for_sqlite(OLD))
                .bind(before_ms)
                .execute(pool)
                .await?
                .rows_affected(),
            Store::Postgres(pool) => sqlx::query(OLD)
                .bind(before_ms)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }

    /// Gives up to `pages` free pages back to the file system (SQLite's incremental vacuum;
    /// PostgreSQL's autovacuum makes the space reusable on its own).
    pub async fn reclaim(&self, pages: i64) -> Result<()> {
        if let Store::Sqlite(pool) = self {
            sqlx::query(&format!("PRAGMA incremental_vacuum({pages})"))
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Whether deleted rows give their space back: on SQLite, a database created with
    /// `auto_vacuum = INCREMENTAL` (every database this version creates; `taskpulse migrate`
    /// converts an older one). Always true on PostgreSQL.
    pub async fn reclaims_space(&self) -> Result<bool> {
        Ok(match self {
            Store::Sqlite(pool) => {
                let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                    .fetch_one(pool)
                    .await?;
                mode == 2
            }
            Store::Postgres(_) => true,
        })
    }

    /// Converts an SQLite database created without incremental vacuum (a full `VACUUM`, which
    /// needs the database to itself: run it with `taskpulse migrate`, taskpulse stopped).
    pub async fn enable_reclaim(&self) -> Result<bool> {
        if self.reclaims_space().await? {
            return Ok(false);
        }
        if let Store::Sqlite(pool) = self {
            let mut conn = pool.acquire().await?;
            sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
                .execute(&mut *conn)
                .await?;
            sqlx::query("VACUUM").execute(&mut *conn).await?;
        }
        Ok(true)
    }
}
