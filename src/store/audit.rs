//! What the consistency checker needs from the store: rows with their version (optimistic
//! locking), version-guarded repairs written together with their audit row, the audit trail,
//! and the rows other replicas changed.

use serde::Serialize;
use sqlx::{PgPool, SqlitePool};

use super::{Store, TaskRecord, TaskRow, TASK_COLUMNS};
use crate::error::Result;

/// A stored task and the version its row had when it was read.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTask {
    pub rec: TaskRecord,
    pub version: i64,
}

#[derive(sqlx::FromRow)]
struct VersionedRow {
    #[sqlx(flatten)]
    row: TaskRow,
    version: i64,
}

impl TryFrom<VersionedRow> for StoredTask {
    type Error = crate::Error;
    fn try_from(v: VersionedRow) -> Result<StoredTask> {
        Ok(StoredTask {
            rec: TaskRecord::try_from(v.row)?,
            version: v.version,
        })
    }
}

/// One line of the audit trail: a repair the checker attempted.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairRecord {
    pub id: Option<i64>,
    /// When, epoch ms.
    pub at: i64,
    pub rule: String,
    pub task_id: String,
    pub workflow_id: String,
    /// `repaired`, `conflict` or `failed`.
    pub outcome: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub evidence: serde_json::Value,
    pub detail: String,
}

#[derive(sqlx::FromRow)]
struct RepairRow {
    id: i64,
    at: i64,
    rule: String,
    task_id: String,
    workflow_id: String,
    outcome: String,
    before: Option<String>,
    after: Option<String>,
    evidence: String,
    detail: String,
}

impl From<RepairRow> for RepairRecord {
    fn from(r: RepairRow) -> RepairRecord {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        RepairRecord {
            id: Some(r.id),
            at: r.at,
            rule: r.rule,
            task_id: r.task_id,
            workflow_id: r.workflow_id,
            outcome: r.outcome,
            before: r.before.as_deref().map(json),
            after: r.after.as_deref().map(json),
            evidence: json(&r.evidence),
            detail: r.detail,
        }
    }
}

/// SQL is written once with `$N` placeholders; SQLite reads them as `?N`.
pub(super) fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

const INSERT_REPAIR: &str = "INSERT INTO repairs (at, rule, task_id, workflow_id, outcome, before, after, evidence, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// `UPDATE` of every column of a row, guarded by its version.
fn guarded_update() -> String {
    let set: Vec<String> = TASK_COLUMNS
        .split(", ")
        .enumerate()
        .skip(1)
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect();
    let n = TASK_COLUMNS.split(", ").count();
    format!(
        "UPDATE tasks SET {}, version = version + 1 WHERE task_id = $1 AND version = ${}",
        set.join(", "),
        n + 1
    )
}

/// Binds a record's columns in `TASK_COLUMNS` order (works for both backends' queries).
macro_rules! bind_record {
    ($q:expr, $t:expr) => {
        $q.bind(&*$t.task_id)
            .bind(&*$t.workflow_id)
            .bind(&*$t.task_type)
            .bind($t.workflow_type.as_deref())
            .bind($t.reference_task_name.as_deref())
            .bind($t.seq)
            .bind($t.iteration)
            .bind($t.retry_count)
            .bind($t.status.as_str())
            .bind($t.progress)
            .bind($t.progress_message.as_deref())
            .bind($t.worker_id.as_deref())
            .bind($t.start_time)
            .bind($t.update_time)
            .bind($t.timeout_seconds)
            .bind($t.response_timeout_seconds)
            .bind($t.wait_until)
            .bind($t.first_seen)
            .bind($t.last_seen)
            .bind($t.progress_changed)
            .bind($t.terminal_at)
    };
}

macro_rules! bind_repair {
    ($q:expr, $r:expr) => {
        $q.bind($r.at)
            .bind(&$r.rule)
            .bind(&$r.task_id)
            .bind(&$r.workflow_id)
            .bind(&$r.outcome)
            .bind($r.before.as_ref().map(|v| v.to_string()))
            .bind($r.after.as_ref().map(|v| v.to_string()))
            .bind($r.evidence.to_string())
            .bind(&$r.detail)
    };
}

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

    /// The stored rows, with versions, of the given ids.
    pub async fn get_tasks_versioned(&self, ids: &[&str]) -> Result<Vec<StoredTask>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(5_000) {
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
                    q.build_query_as().fetch_all(pool).await?
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

    /// Writes `after` only if the row still has `expected_version` (0: only if there is no row
    /// at all), and the audit row, in one transaction. The audit's outcome is set from what
    /// happened. Returns whether the row was written.
    pub async fn apply_repair(
        &self,
        after: &TaskRecord,
        expected_version: i64,
        audit: &mut RepairRecord,
    ) -> Result<bool> {
        let update = guarded_update();
        let insert = format!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({}) ON CONFLICT (task_id) DO NOTHING",
            (1..=TASK_COLUMNS.split(", ").count())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let written = match self {
            Store::Sqlite(pool) => {
                repair_sqlite(pool, &update, &insert, after, expected_version, audit).await?
            }
            Store::Postgres(pool) => {
                repair_pg(pool, &update, &insert, after, expected_version, audit).await?
            }
        };
        Ok(written)
    }

    /// Adds an audit row for a repair that changed no row (memory reloaded, or failed).
    pub async fn record_repair(&self, audit: &RepairRecord) -> Result<()> {
        match self {
            Store::Sqlite(pool) => {
                bind_repair!(sqlx::query(&for_sqlite(INSERT_REPAIR)), audit)
                    .execute(pool)
                    .await?;
            }
            Store::Postgres(pool) => {
                bind_repair!(sqlx::query(INSERT_REPAIR), audit)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The audit trail, newest first.
    pub async fn list_repairs(&self, limit: i64) -> Result<Vec<RepairRecord>> {
        let sql = "SELECT id, at, rule, task_id, workflow_id, outcome, before, after, evidence, detail FROM repairs ORDER BY id DESC LIMIT $1";
        let rows: Vec<RepairRow> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(&for_sqlite(sql))
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Store::Postgres(pool) => sqlx::query_as(sql).bind(limit).fetch_all(pool).await?,
        };
        Ok(rows.into_iter().map(RepairRecord::from).collect())
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

/// One version-guarded repair and its audit row, in one transaction. A macro because the two
/// backends' pools and query types differ while the steps are the same; `$sql` adapts the
/// shared `$N` placeholder syntax to the backend.
macro_rules! repair_in_tx {
    ($pool:expr, $sql:expr, $update:expr, $insert:expr, $after:expr, $version:expr, $audit:expr) => {{
        let mut tx = $pool.begin().await?;
        let done = if $version == 0 {
            bind_record!(sqlx::query(&$sql($insert)), $after)
                .execute(&mut *tx)
                .await?
        } else {
            bind_record!(sqlx::query(&$sql($update)), $after)
                .bind($version)
                .execute(&mut *tx)
                .await?
        };
        let written = done.rows_affected() == 1;
        $audit.outcome = if written { "repaired" } else { "conflict" }.into();
        bind_repair!(sqlx::query(&$sql(INSERT_REPAIR)), $audit)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(written)
    }};
}

async fn repair_sqlite(
    pool: &SqlitePool,
    update: &str,
    insert: &str,
    after: &TaskRecord,
    expected_version: i64,
    audit: &mut RepairRecord,
) -> Result<bool> {
    repair_in_tx!(
        pool,
        for_sqlite,
        update,
        insert,
        after,
        expected_version,
        audit
    )
}

async fn repair_pg(
    pool: &PgPool,
    update: &str,
    insert: &str,
    after: &TaskRecord,
    expected_version: i64,
    audit: &mut RepairRecord,
) -> Result<bool> {
    repair_in_tx!(
        pool,
        str::to_string,
        update,
        insert,
        after,
        expected_version,
        audit
    )
}
