//! Reads beyond the pipeline's own: the checker's rule queries (written once, with `$N`
//! placeholders, for both backends), rows with their versions, and the rows other replicas
//! changed (the leader folds those into memory).

use super::rows::{for_sqlite, VersionedRow, TASK_COLUMNS};
use super::Store;
use crate::error::Result;
use crate::model::{StoredTask, TaskRecord};

/// Ids per list of [`Store::get_tasks_versioned`], at most: the checker's chunk
/// (`store_divergence` compares this many tasks per read), so its lists are full ones, whose
/// statement SQLite keeps prepared.
pub const VERSIONED_LIST: usize = 4_096;

impl Store {
    /// Runs a read query that selects `TASK_COLUMNS, version` with `$N` placeholders bound to
    /// integers (the checker's rules are written this way, once for both backends).
    pub async fn query_tasks(&self, sql: &str, binds: &[i64]) -> Result<Vec<StoredTask>> {
        let rows: Vec<VersionedRow> = self.query_as(sql, binds).await?;
        rows.into_iter().map(StoredTask::try_from).collect()
    }

    /// Runs a read query with `$N` placeholders bound to integers, into any row type both
    /// backends can decode.
    pub async fn query_as<T>(&self, sql: &str, binds: &[i64]) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin,
    {
        Ok(match self {
            Store::Sqlite(pool) => {
                let sql = for_sqlite(sql);
                let mut q = sqlx::query_as(&sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_all(pool).await?
            }
            Store::Postgres(pool) => {
                let mut q = sqlx::query_as(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_all(pool).await?
            }
        })
    }

    /// The stored rows, with versions, of the given ids, in lists of at most
    /// [`VERSIONED_LIST`].
    pub async fn get_tasks_versioned(&self, ids: &[&str]) -> Result<Vec<StoredTask>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(VERSIONED_LIST) {
            let rows: Vec<VersionedRow> = match self {
                Store::Sqlite(pool) => {
                    let mut q: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(format!(
                        "SELECT {TASK_COLUMNS}, version FROM tasks WHERE task_id IN ("
                    ));
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    q.push(")");
                    let keep = super::sqlite::keep_prepared(chunk.len(), VERSIONED_LIST);
                    q.build_query_as().persistent(keep).fetch_all(pool).await?
                }
                Store::Postgres(pool) => {
                    sqlx::query_as(&format!(
                        "SELECT {TASK_COLUMNS}, version FROM tasks WHERE task_id = ANY($1)"
                    ))
                    .bind(chunk)
                    .fetch_all(pool)
                    .await?
                }
            };
            for r in rows {
                out.push(StoredTask::try_from(r)?);
            }
        }
        Ok(out)
    }

    /// Rows written since `since` (epoch ms, taskpulse's clock): what other replicas changed.
    pub async fn changed_since(&self, since: i64) -> Result<Vec<TaskRecord>> {
        let sql = format!("SELECT {TASK_COLUMNS}, version FROM tasks WHERE last_seen >= $1");
        Ok(self
            .query_tasks(&sql, &[since])
            .await?
            .into_iter()
            .map(|s| s.rec)
            .collect())
    }
}
