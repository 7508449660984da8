//! The queries on Airflow's metadata database, each through one of Airflow's own indexes
//! (`docs/engines/airflow.md` §1, §7), and the rows they return. Times are read as epoch ms
//! by the database (every column the reader reads is `timestamptz`, §6).

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::error::Result;

/// A task instance's stable key (`task_instance_composite_key`, §2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i32,
}

impl Key {
    /// The key in a row's first four columns (`dag_id`, `run_id`, `task_id`, `map_index`), as
    /// every query here selects them.
    pub fn from_row(r: &PgRow) -> Result<Key> {
        Ok(Key {
            dag_id: r.try_get(0)?,
            run_id: r.try_get(1)?,
            task_id: r.try_get(2)?,
            map_index: r.try_get(3)?,
        })
    }

    /// taskpulse's task id: `{dag_id}/{run_id}/{task_id}/{map_index}`.
    pub fn task_id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.dag_id, self.run_id, self.task_id, self.map_index
        )
    }

    /// taskpulse's workflow id: `{dag_id}/{run_id}`.
    pub fn workflow_id(&self) -> String {
        format!("{}/{}", self.dag_id, self.run_id)
    }

    /// Reads a taskpulse task id back (`None` when it is not one of §2's shape).
    pub fn parse(id: &str) -> Option<Key> {
        let (dag_id, rest) = id.split_once('/')?;
        let (rest, map_index) = rest.rsplit_once('/')?;
        let (run_id, task_id) = rest.rsplit_once('/')?;
        let ok = |s: &str| !s.is_empty() && !s.contains('/');
        let map_index = map_index.parse().ok()?;
        (ok(dag_id) && ok(task_id) && !run_id.is_empty()).then(|| Key {
            dag_id: dag_id.to_string(),
            run_id: run_id.to_string(),
            task_id: task_id.to_string(),
            map_index,
        })
    }
}

/// A row of `task_instance`, as far as the reader takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub key: Key,
    /// The UUID of the current try (changes with every try, §2).
    pub id: String,
    pub state: Option<String>,
    pub try_number: i32,
    pub hostname: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub updated: Option<i64>,
    pub scheduled: Option<i64>,
    pub trigger_id: Option<i32>,
    pub trigger_timeout: Option<i64>,
    /// The DAG version it runs (`dag_version_id`), whose serialized DAG holds its
    /// `execution_timeout`.
    pub dag_version: Option<String>,
}

/// An earlier try (`task_instance_history`).
#[derive(Clone, Debug, PartialEq)]
pub struct Try {
    pub key: Key,
    pub try_number: i32,
    pub state: Option<String>,
    pub hostname: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// A DAG run in flight or new.
#[derive(Clone, Debug)]
pub struct Run {
    pub id: i64,
    pub dag_id: String,
    pub run_id: String,
    pub state: Option<String>,
}

fn ms(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::int8")
}

fn instance_columns(t: &str) -> String {
    format!(
        "{t}.dag_id, {t}.run_id, {t}.task_id, {t}.map_index, {t}.id::text, {t}.state, \
         {t}.try_number, left({t}.hostname, 256), {}, {}, {}, {}, {t}.trigger_id, {}, \
         {t}.dag_version_id::text",
        ms(&format!("{t}.start_date")),
        ms(&format!("{t}.end_date")),
        ms(&format!("{t}.updated_at")),
        ms(&format!("{t}.scheduled_dttm")),
        ms(&format!("{t}.trigger_timeout")),
    )
}

fn instance(r: &PgRow) -> Result<Instance> {
    Ok(Instance {
        key: Key::from_row(r)?,
        id: r.try_get(4)?,
        state: r.try_get(5)?,
        try_number: r.try_get(6)?,
        hostname: r.try_get(7)?,
        start: r.try_get(8)?,
        end: r.try_get(9)?,
        updated: r.try_get(10)?,
        scheduled: r.try_get(11)?,
        trigger_id: r.try_get(12)?,
        trigger_timeout: r.try_get(13)?,
        dag_version: r.try_get(14)?,
    })
}

/// Airflow's unfinished states other than "no state" (`airflow/utils/state.py:197-211`).
pub const UNFINISHED: [&str; 8] = [
    "scheduled",
    "queued",
    "running",
    "restarting",
    "up_for_retry",
    "up_for_reschedule",
    "deferred",
    "awaiting_input",
];

/// The task instances in flight, through `ti_state` (a bitmap OR of the state list and
/// `IS NULL`): what an idle poll reads.
pub async fn in_flight(pool: &PgPool) -> Result<Vec<Instance>> {
    let states: Vec<String> = UNFINISHED.iter().map(|s| format!("'{s}'")).collect();
    let sql = format!(
        "SELECT {} FROM task_instance t WHERE t.state IN ({}) OR t.state IS NULL",
        instance_columns("t"),
        states.join(", ")
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    rows.iter().map(instance).collect()
}

/// Task instances by key, through `task_instance_composite_key`.
pub async fn by_key(pool: &PgPool, keys: &[Key]) -> Result<Vec<Instance>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS k(d, r, t, m) \
         JOIN task_instance i ON i.dag_id = k.d AND i.task_id = k.t AND i.run_id = k.r \
         AND i.map_index = k.m",
        instance_columns("i")
    );
    let rows = by_keys(&sql, keys).fetch_all(pool).await?;
    rows.iter().map(instance).collect()
}

/// Every task instance of these DAG runs, through `ti_dag_run`.
pub async fn of_runs(pool: &PgPool, runs: &[(String, String)]) -> Result<Vec<Instance>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM unnest($1::text[], $2::text[]) AS k(d, r) \
         JOIN task_instance i ON i.dag_id = k.d AND i.run_id = k.r",
        instance_columns("i")
    );
    let d: Vec<&str> = runs.iter().map(|(d, _)| d.as_str()).collect();
    let r: Vec<&str> = runs.iter().map(|(_, r)| r.as_str()).collect();
    let rows = sqlx::query(&sql).bind(d).bind(r).fetch_all(pool).await?;
    rows.iter().map(instance).collect()
}

/// The earlier tries of these task instances, through `task_instance_history_dtrt_uq`.
pub async fn history(pool: &PgPool, keys: &[Key]) -> Result<Vec<Try>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT h.dag_id, h.run_id, h.task_id, h.map_index, h.try_number, h.state, \
         left(h.hostname, 256), {}, {} \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS k(d, r, t, m) \
         JOIN task_instance_history h ON h.dag_id = k.d AND h.task_id = k.t AND h.run_id = k.r \
         AND h.map_index = k.m ORDER BY h.try_number",
        ms("h.start_date"),
        ms("h.end_date"),
    );
    let rows = by_keys(&sql, keys).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(Try {
                key: Key::from_row(r)?,
                try_number: r.try_get(4)?,
                state: r.try_get(5)?,
                hostname: r.try_get(6)?,
                start: r.try_get(7)?,
                end: r.try_get(8)?,
            })
        })
        .collect()
}

/// The DAG runs queued or running (the two partial indexes) and those created after
/// `after` (the primary key).
pub async fn runs(pool: &PgPool, after: i64) -> Result<Vec<Run>> {
    let rows = sqlx::query(
        "SELECT id::int8, dag_id, run_id, state FROM dag_run \
         WHERE state = 'queued' OR state = 'running' OR id > $1",
    )
    .bind(after)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Run {
                id: r.try_get(0)?,
                dag_id: r.try_get(1)?,
                run_id: r.try_get(2)?,
                state: r.try_get(3)?,
            })
        })
        .collect()
}

/// The highest DAG run id now (the primary key's last entry), 0 when there is none.
pub async fn last_run_id(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(id)::int8 FROM dag_run")
            .fetch_one(pool)
            .await?
            .unwrap_or(0),
    )
}

/// Trigger kwargs longer than this are not read (a wake-up moment is a few hundred bytes).
const MAX_KWARGS: i32 = 64 * 1024;

/// The kwargs of these triggers (by primary key), `None` when over [`MAX_KWARGS`].
pub async fn triggers(pool: &PgPool, ids: &[i32]) -> Result<Vec<(i32, Option<String>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id, CASE WHEN length(kwargs) <= $2 THEN kwargs END FROM trigger WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(MAX_KWARGS)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The newest `reschedule_date` of each of these task instance ids, through
/// `idx_task_reschedule_ti_id_id_desc`.
pub async fn reschedules(pool: &PgPool, ti_ids: &[String]) -> Result<Vec<(String, i64)>> {
    if ti_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT ON (ti_id) ti_id::text, {} FROM task_reschedule \
         WHERE ti_id = ANY($1::text[]::uuid[]) ORDER BY ti_id, id DESC",
        ms("reschedule_date")
    );
    let rows = sqlx::query(&sql).bind(ti_ids).fetch_all(pool).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The `execution_timeout` (seconds) of these (DAG version, task id) pairs, from the serialized
/// DAG of the version (`serialized_dag_dag_version_id_uq`; only the matching task's field
/// leaves the database). A DAG stored compressed (`[core] compress_serialized_dags`) has no
/// JSON to read: its tasks get none.
pub async fn timeouts(
    pool: &PgPool,
    wanted: &[(String, String)],
) -> Result<Vec<(String, String, Option<f64>)>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let versions: Vec<&str> = wanted.iter().map(|(v, _)| v.as_str()).collect();
    let tasks: Vec<&str> = wanted.iter().map(|(_, t)| t.as_str()).collect();
    let rows = sqlx::query(
        "SELECT k.v, k.t, (SELECT (e -> '__var' ->> 'execution_timeout')::float8 \
         FROM jsonb_array_elements(s.data -> 'dag' -> 'tasks') AS e \
         WHERE e -> '__var' ->> 'task_id' = k.t LIMIT 1) \
         FROM unnest($1::text[], $2::text[]) AS k(v, t) \
         JOIN serialized_dag s ON s.dag_version_id = k.v::uuid",
    )
    .bind(versions)
    .bind(tasks)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

type KeyColumns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i32>);

/// `sql` with the keys' four columns bound as `$1` to `$4`, the arrays its `unnest` joins on.
fn by_keys<'q>(
    sql: &'q str,
    keys: &'q [Key],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (d, r, t, m) = columns(keys);
    sqlx::query(sql).bind(d).bind(r).bind(t).bind(m)
}

fn columns(keys: &[Key]) -> KeyColumns<'_> {
    (
        keys.iter().map(|k| k.dag_id.as_str()).collect(),
        keys.iter().map(|k| k.run_id.as_str()).collect(),
        keys.iter().map(|k| k.task_id.as_str()).collect(),
        keys.iter().map(|k| k.map_index).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_read_back_even_with_slashes_in_the_run_id() {
        let k = Key {
            dag_id: "etl".into(),
            run_id: "manual__2026/12/07".into(),
            task_id: "load".into(),
            map_index: -1,
        };
        assert_eq!(k.task_id(), "etl/manual__2026/12/07/load/-1");
        assert_eq!(Key::parse(&k.task_id()), Some(k));
        assert_eq!(Key::parse("a/b/c/2").unwrap().map_index, 2);
        assert_eq!(Key::parse("a/b/c"), None);
        assert_eq!(Key::parse("a/b/c/x"), None);
        assert_eq!(Key::parse("t-1"), None);
    }
}
