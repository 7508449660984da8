//! The checker's audit trail: version-guarded repairs written together with their audit row,
//! and the trail itself, newest first.

use sqlx::{PgPool, SqlitePool};

use super::rows::{bind_record, for_sqlite, RepairRow, REPAIR_COLUMNS, TASK_COLUMNS};
use super::Store;
use crate::error::Result;
use crate::model::{RepairRecord, TaskRecord};

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
    pub async fn list_repairs(
        &self,
        limit: i64,
        task_id: Option<&str>,
    ) -> Result<Vec<RepairRecord>> {
        // `$2 IS NULL OR task_id = $2`: one statement for both; a task's lines come from the
        // `repairs_task` index.
        let sql = format!(
            "SELECT {REPAIR_COLUMNS} FROM repairs WHERE ($2 IS NULL OR task_id = $2) \
             ORDER BY id DESC LIMIT $1"
        );
        let rows: Vec<RepairRow> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(&for_sqlite(&sql))
                    .bind(limit)
                    .bind(task_id)
                    .fetch_all(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_as(&sql)
                    .bind(limit)
                    .bind(task_id)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(RepairRecord::from).collect())
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
