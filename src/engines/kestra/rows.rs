//! The statements the Kestra reader sends (`docs/engines/kestra.md` §1.3, §5, §11): a cheap
//! listing of (key, version, stored size) that never reads an execution's JSON, a fetch of the
//! JSON of chosen executions only, bounded per document, and the check of
//! `--kestra-db-time-zone` against what the rows show.
//!
//! - **Version.** `xmin` (the transaction that wrote the row version) with the stored size of
//!   `value`: every change of an execution is a new row version written by a new transaction
//!   (Kestra's upsert rewrites the row), and both come from the row's header and `value`'s
//!   TOAST pointer, not from the out-of-line JSON.
//! - **Time zone.** `start_date`/`end_date` are `TIMESTAMP` (no zone) generated from the JSON's
//!   instants in the *writing* session's zone, which pgjdbc sets from Kestra's JVM. The JSON's
//!   `state.startDate` carries its offset, so a row shows its zone: `start_date` minus the
//!   instant's UTC wall time.

use std::time::Duration;

use sqlx::{PgPool, Row};

use crate::engines::store_source::{utc_offset, zones_at};
use crate::error::{Error, Result};

/// One row of the listing: no JSON read.
#[derive(Debug)]
pub struct Listed {
    pub key: String,
    pub version: String,
    /// `pg_column_size(value)`: bytes as stored (compressed when TOASTed).
    pub stored: i64,
}

/// One execution fetched.
#[derive(Debug)]
pub struct Fetched {
    pub key: String,
    pub version: String,
    /// Bytes of its JSON as text.
    pub len: i64,
    /// `None` when `len` is over the document limit: the database doesn't send it.
    pub json: Option<String>,
    /// Whether `start_date` equals the JSON's `startDate` in `--kestra-db-time-zone`.
    pub zone_ok: Option<bool>,
    /// `start_date` minus the JSON's `startDate` in UTC, in seconds: the writer's UTC offset.
    pub shown_offset: Option<f64>,
}

/// The tenant condition, with `$1` the tenant (`NULL` for Kestra 0.22 and earlier).
fn tenant_sql(tenant: &Option<String>) -> &'static str {
    match tenant {
        Some(_) => "tenant_id = $1",
        None => "tenant_id IS NULL AND $1::text IS NULL",
    }
}

/// The executions that are active, or ended within `ended_within` by the database's clock in
/// Kestra's zone `zone`. Each arm a condition Kestra's indexes answer (a BitmapOr of
/// `executions_state_current` and `executions_end_date`), which the planner only chooses when
/// it sees the values: the labels are written into the statement (they come from this
/// database's `pg_enum`), the bound is computed first and sent as a value, and the statement
/// is not kept prepared, so each poll is planned with them (with `= ANY($n::text[])` and a
/// `now()` expression it estimated a third of the table and read all of it). The bound
/// subtracts on the instant and then takes Kestra's wall time, so a daylight-saving jump
/// doesn't hide an hour.
pub async fn list(
    pool: &PgPool,
    tenant: &Option<String>,
    active: &[String],
    ended_within: Option<(Duration, &str)>,
) -> Result<Vec<Listed>> {
    let bound: Option<String> = match ended_within {
        Some((d, zone)) => Some(
            sqlx::query_scalar(
                "SELECT ((now() - make_interval(secs => $1)) AT TIME ZONE $2)::text",
            )
            .bind(d.as_secs_f64())
            .bind(zone)
            .fetch_one(pool)
            .await?,
        ),
        None => None,
    };
    let ended = match bound {
        Some(_) => " OR end_date >= $2::timestamp",
        None => "",
    };
    let sql = format!(
        "SELECT key::text, xmin::text, pg_column_size(value)::int8 FROM executions \
         WHERE deleted = false AND {} \
           AND (state_current = ANY({}::state_type[]){ended})",
        tenant_sql(tenant),
        labels_sql(active)
    );
    let mut query = sqlx::query(&sql).persistent(false).bind(tenant);
    if let Some(b) = &bound {
        query = query.bind(b);
    }
    let rows = query.fetch_all(pool).await?;
    rows.into_iter()
        .map(|r| {
            Ok(Listed {
                key: r.try_get(0)?,
                version: r.try_get(1)?,
                stored: r.try_get(2)?,
            })
        })
        .collect()
}

/// `labels` as an SQL array literal (`ARRAY['CREATED','RUNNING']`), quotes doubled.
fn labels_sql(labels: &[String]) -> String {
    let quoted: Vec<String> = labels
        .iter()
        .map(|l| format!("'{}'", l.replace('\'', "''")))
        .collect();
    format!("ARRAY[{}]", quoted.join(","))
}

/// Whether `start_date` is the JSON `doc`'s `startDate` as wall time in zone `$n`, and the
/// UTC offset the row shows.
fn zone_sql(doc: &str, n: u8) -> String {
    format!(
        "start_date = (({doc} #>> '{{state,startDate}}')::timestamptz AT TIME ZONE ${n}), \
         EXTRACT(EPOCH FROM start_date - (({doc} #>> '{{state,startDate}}')::timestamptz \
           AT TIME ZONE 'UTC'))::float8"
    )
}

/// The executions `keys`, each with its version, its size as text and its JSON unless that is
/// over `max_len` bytes (the database measures it and sends nothing larger). `value` is
/// read out of line once per row: `|| '{}'` hands back the detoasted document, and `OFFSET 0`
/// keeps the planner from copying the expression into each use.
pub async fn fetch(
    pool: &PgPool,
    keys: &[String],
    max_len: i64,
    zone: &str,
) -> Result<Vec<Fetched>> {
    let sql = format!(
        "SELECT e.key::text, e.xmin::text, octet_length(t.json)::int8, \
                CASE WHEN octet_length(t.json) <= $2 THEN t.json END, {} \
         FROM executions e, \
              LATERAL (SELECT e.value || '{{}}'::jsonb AS v OFFSET 0) d, \
              LATERAL (SELECT d.v::text AS json OFFSET 0) t \
         WHERE e.key = ANY($1)",
        zone_sql("d.v", 3)
    );
    let rows = sqlx::query(&sql)
        .bind(keys)
        .bind(max_len)
        .bind(zone)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Fetched {
                key: r.try_get(0)?,
                version: r.try_get(1)?,
                len: r.try_get(2)?,
                json: r.try_get(3)?,
                zone_ok: r.try_get(4)?,
                shown_offset: r.try_get(5)?,
            })
        })
        .collect()
}

/// Checks at start that `zone` names a zone the database knows, and that the newest rows'
/// `start_date` is their JSON's instant in that zone; otherwise fails naming the setting and
/// the offset the rows show.
pub async fn check_zone(
    pool: &PgPool,
    tenant: &Option<String>,
    zone: &str,
    max_stored: i64,
) -> Result<()> {
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
            .bind(zone)
            .fetch_one(pool)
            .await?;
    if !known {
        return Err(Error::Config(format!(
            "--kestra-db-time-zone `{zone}` is not a time zone Kestra's PostgreSQL knows (IANA names such as UTC or America/Los_Angeles)"
        )));
    }
    // the newest few rows, through `executions_start_date`; documents over the limit skipped
    let sql = format!(
        "SELECT {} FROM executions WHERE deleted = false AND {} \
           AND pg_column_size(value) <= $3 ORDER BY start_date DESC LIMIT 5",
        zone_sql("value", 2),
        tenant_sql(tenant)
    );
    let rows = sqlx::query(&sql)
        .bind(tenant)
        .bind(zone)
        .bind(max_stored)
        .fetch_all(pool)
        .await?;
    for r in rows {
        let (ok, offset): (Option<bool>, Option<f64>) = (r.try_get(0)?, r.try_get(1)?);
        if ok == Some(false) {
            return Err(zone_mismatch(pool, zone, offset).await);
        }
    }
    Ok(())
}

/// The error for rows written in another zone than `--kestra-db-time-zone`, naming the
/// offset they show and zones at that offset now.
pub async fn zone_mismatch(pool: &PgPool, zone: &str, offset: Option<f64>) -> Error {
    let Some(secs) = offset else {
        return Error::Config(format!(
            "Kestra's rows were not written in --kestra-db-time-zone `{zone}`"
        ));
    };
    let names = zones_at(pool, secs.round() as i64).await;
    let names = if names.is_empty() {
        String::new()
    } else {
        format!(" (zones at that offset now: {})", names.join(", "))
    };
    Error::Config(format!(
        "Kestra's rows show its sessions' time zone at {}{names}, but --kestra-db-time-zone is `{zone}`: \
         set --kestra-db-time-zone to the time zone of Kestra's JVM (its TZ or -Duser.timezone), \
         or executions that end between two polls are missed",
        utc_offset(secs.round() as i64)
    ))
}

#[cfg(test)]
mod tests {
    use super::labels_sql;
    use crate::engines::store_source::utc_offset;

    #[test]
    fn labels_are_quoted() {
        let l = vec!["CREATED".to_string(), "IT'S".to_string()];
        assert_eq!(labels_sql(&l), "ARRAY['CREATED','IT''S']");
    }

    #[test]
    fn offsets_read_as_utc_offsets() {
        assert_eq!(utc_offset(-28_800), "UTC-08:00");
        assert_eq!(utc_offset(32_400), "UTC+09:00");
        assert_eq!(utc_offset(0), "UTC+00:00");
        assert_eq!(utc_offset(19_800), "UTC+05:30");
    }
}
