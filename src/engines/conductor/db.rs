//! What the readers of Conductor's PostgreSQL (`--conductor-db`) share: the schema its tables
//! are in and the time zone its `TIMESTAMP` columns were written in
//! (`docs/engines/conductor-redis.md` §7).
//!
//! - **Schema.** Conductor's tables live in `conductor.postgres.schema` (default `public`):
//!   Flyway creates them there, and Conductor's DAOs name them unqualified, so its own sessions
//!   find them through their `search_path`. taskpulse's sessions do the same: the schema is
//!   the whole `search_path` of every session (a quoted identifier, so any case is kept).
//! - **Time zone.** `task.modified_on` and `queue_message.deliver_on` are `TIMESTAMP` without
//!   zone, written from `CURRENT_TIMESTAMP`: the writing session's wall time, and pgjdbc sets
//!   the session's `TimeZone` from the Conductor JVM's default zone. Every statement that
//!   turns them into instants says `AT TIME ZONE` the configured zone, and start-up compares
//!   what the rows show with the times inside them (Java's epoch milliseconds, zone-free), so
//!   a wrong zone stops start-up instead of silently hiding every transition.

use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::PgPool;

use crate::engines::store_source::{utc_offset, zones_at};
use crate::error::{Error, Result};

/// How far a row's `modified_on` (read in the configured zone) may be from the times inside
/// it, or ahead of the database's clock, before it counts as evidence of a wrong zone.
pub const ZONE_TOLERANCE_MS: i64 = 120_000;
/// Zone offsets are whole quarter hours.
const QUARTER_HOUR_MS: i64 = 15 * 60_000;
/// Rows the start-up check looks at (the newest).
const ZONE_SAMPLE: i64 = 20;

/// Where Conductor's tables are and how its timestamps read.
#[derive(Clone, Debug)]
pub struct DbOptions {
    /// IANA name of the zone Conductor's sessions write wall times in (the JVM's).
    pub time_zone: String,
    /// `conductor.postgres.schema`.
    pub schema: String,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            time_zone: "UTC".into(),
            schema: "public".into(),
        }
    }
}

impl DbOptions {
    /// `url` with the schema as every session's `search_path` (a startup option, so it holds
    /// from the first statement, for every pool made from it).
    pub fn session_url(&self, url: &str) -> String {
        let quoted = format!("\"{}\"", self.schema.replace('"', "\"\""));
        let value: String = quoted
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options%5Bsearch_path%5D={value}")
    }
}

/// `taskpulse_conductor_db_documents_skipped_total{reason}`: task rows whose `json_data` was
/// not loaded whole.
#[derive(Clone)]
pub struct SkipMetrics {
    pub skipped: IntCounterVec,
}

impl SkipMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<SkipMetrics> {
        let skipped = IntCounterVec::new(
            Opts::new(
                "taskpulse_conductor_db_documents_skipped_total",
                "Task rows of Conductor's database whose json_data was not loaded whole, by reason: too_large (past the size limit; the transition is taken from its small fields, read by the database), unreadable (not even those could be read; the row is left out).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        for r in ["too_large", "unreadable"] {
            skipped.with_label_values(&[r]);
        }
        Ok(SkipMetrics { skipped })
    }

    /// Not registered anywhere (tests, tools).
    pub fn unregistered() -> SkipMetrics {
        SkipMetrics {
            skipped: IntCounterVec::new(Opts::new("unregistered", "-"), &["reason"])
                .expect("a valid metric"),
        }
    }
}

/// The number at `key` of the row's JSON `j` (0 when absent or not a number).
fn json_number(key: &str) -> String {
    format!("(CASE WHEN json_typeof(j->'{key}') = 'number' THEN (j->>'{key}')::float8::int8 ELSE 0 END)")
}

/// The newest task rows: `modified_on` read in the zone `$1` (epoch ms), the database's clock,
/// and the latest time the row's own JSON carries (0: none). The documents are parsed after
/// the limit (only the sample's), as `json` rather than `jsonb`: only walked, not stored.
/// `newest` picks the rows: by `task_index.update_time` where Conductor keeps that index (its
/// index, then `task` by primary key), else by `modified_on`: one scan of `task` at start (no
/// index on it).
fn zone_evidence_sql(newest: &str) -> String {
    format!(
        "SELECT (EXTRACT(EPOCH FROM (modified_on AT TIME ZONE $1)) * 1000)::int8, \
                (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8, \
                GREATEST({}, {}, {}, {}) \
         FROM ({newest}) AS newest, \
              LATERAL (SELECT newest.json_data::json AS j) AS parsed",
        json_number("updateTime"),
        json_number("endTime"),
        json_number("startTime"),
        json_number("scheduledTime"),
    )
}

/// The newest rows of `task` by its `modified_on` (a sequential scan).
const NEWEST_BY_MODIFIED: &str =
    "SELECT modified_on, json_data FROM task ORDER BY modified_on DESC LIMIT $2";
/// The newest rows of `task` by `task_index.update_time` (`task_index_update_time_idx`).
const NEWEST_BY_INDEX: &str = "SELECT t.modified_on, t.json_data FROM \
     (SELECT task_id FROM task_index ORDER BY update_time DESC LIMIT $2) AS i \
     JOIN task AS t ON t.task_id = i.task_id";
/// Whether `task_index` is there and readable.
const HAS_TASK_INDEX: &str = "\
    SELECT COALESCE(bool_and(r IS NOT NULL AND has_table_privilege(r, 'SELECT')), false) \
    FROM unnest(ARRAY[to_regclass('task_index')]) AS r";

/// The zone's offset from UTC now, in seconds (fails on a name the server does not know).
const ZONE_OFFSET: &str = "\
    SELECT EXTRACT(EPOCH FROM ((now() AT TIME ZONE $1) - (now() AT TIME ZONE 'UTC')))::int8";

/// What the newest rows say of the zone: `Some(d)` when they show it off by `d` ms (a whole
/// number of quarter hours, not 0). Rows are `(modified_ms, engine_ms)`: `modified_on` read in
/// the configured zone, and the latest time inside the row (0: none).
///
/// A row written with fresh times (`|d| <= tolerance`) proves the zone right: Conductor sets
/// `updateTime`/`endTime`/`scheduledTime` just before the write. Otherwise the offset most rows
/// fit (within the tolerance of a quarter hour) is the answer; with no times to compare, a
/// `modified_on` ahead of the database's clock by more than the tolerance is.
pub fn zone_verdict(rows: &[(i64, i64)], now_ms: i64) -> Option<i64> {
    let quarter = |d: i64| (d as f64 / QUARTER_HOUR_MS as f64).round() as i64 * QUARTER_HOUR_MS;
    let with_times: Vec<i64> = rows
        .iter()
        .filter(|(_, e)| *e > 0)
        .map(|(m, e)| m.saturating_sub(*e))
        .collect();
    if with_times.iter().any(|d| d.abs() <= ZONE_TOLERANCE_MS) {
        return None;
    }
    let mut votes: std::collections::BTreeMap<i64, usize> = Default::default();
    for d in &with_times {
        let q = quarter(*d);
        if q != 0 && (d - q).abs() <= ZONE_TOLERANCE_MS {
            *votes.entry(q).or_default() += 1;
        }
    }
    if let Some((q, _)) = votes.into_iter().max_by_key(|(_, n)| *n) {
        return Some(q);
    }
    let ahead = rows.iter().map(|(m, _)| m - now_ms).max()?;
    (ahead > ZONE_TOLERANCE_MS).then(|| quarter(ahead).max(QUARTER_HOUR_MS))
}

/// Checks `--conductor-db-time-zone` against the newest task rows; fails naming the flag and
/// the zone the rows suggest. A zone the server does not know fails too. When the rows can't
/// be compared (no rows, a document that is not JSON), only the clock check applies, or none.
pub async fn check_time_zone(pool: &PgPool, zone: &str) -> Result<()> {
    let flag = "--conductor-db-time-zone (TASKPULSE_CONDUCTOR_DB_TIME_ZONE)";
    let ours: i64 = sqlx::query_scalar(ZONE_OFFSET)
        .bind(zone)
        .fetch_one(pool)
        .await
        .map_err(|e| Error::Config(format!("{flag} `{zone}`: {e}")))?;
    let indexed: bool = sqlx::query_scalar(HAS_TASK_INDEX)
        .fetch_one(pool)
        .await
        .unwrap_or(false);
    let sql = zone_evidence_sql(if indexed {
        NEWEST_BY_INDEX
    } else {
        NEWEST_BY_MODIFIED
    });
    let rows: Vec<(i64, i64, i64)> = match sqlx::query_as(&sql)
        .bind(zone)
        .bind(ZONE_SAMPLE)
        .fetch_all(pool)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "--conductor-db-time-zone: the newest task rows could not be compared with the times inside them; the zone is not checked");
            return Ok(());
        }
    };
    let now = rows.first().map(|r| r.1).unwrap_or_else(crate::now_ms);
    let pairs: Vec<(i64, i64)> = rows.iter().map(|r| (r.0, r.2)).collect();
    let Some(off_by) = zone_verdict(&pairs, now) else {
        return Ok(());
    };
    let theirs = ours + off_by / 1000;
    let names = zones_at(pool, theirs).await;
    Err(Error::Config(format!(
        "{flag} is `{zone}` ({}), but Conductor's newest task rows were written at {} ({}): \
         their modified_on is {} min off the times inside them. Set {flag} to the Conductor \
         JVM's time zone (its -Duser.timezone / TZ), which pgjdbc gives its sessions",
        utc_offset(ours),
        utc_offset(theirs),
        if names.is_empty() {
            "no zone name found".to_string()
        } else {
            format!("e.g. {}", names.join(", "))
        },
        off_by / 60_000,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_000_000_000;
    const H: i64 = 3_600_000;

    #[test]
    fn fresh_rows_prove_the_zone_right() {
        assert_eq!(zone_verdict(&[(NOW - 500, NOW - 900)], NOW), None);
        // one stale row among fresh ones changes nothing
        assert_eq!(
            zone_verdict(&[(NOW, NOW - 3 * H), (NOW - 10, NOW - 20)], NOW),
            None
        );
        assert_eq!(zone_verdict(&[], NOW), None);
    }

    #[test]
    fn rows_off_by_whole_hours_name_the_offset() {
        // sessions in Los Angeles (UTC-8), read as UTC: 8 h in the past
        let la = [
            (NOW - 8 * H + 300, NOW + 100),
            (NOW - 8 * H - 40_000, NOW - 39_000),
        ];
        assert_eq!(zone_verdict(&la, NOW), Some(-8 * H));
        // sessions in Tokyo (UTC+9), read as UTC: 9 h ahead
        assert_eq!(zone_verdict(&[(NOW + 9 * H, NOW)], NOW), Some(9 * H));
        // India: half hours
        assert_eq!(
            zone_verdict(&[(NOW + 5 * H + H / 2 + 1_000, NOW)], NOW),
            Some(5 * H + H / 2)
        );
    }

    #[test]
    fn without_times_only_the_future_is_evidence() {
        assert_eq!(zone_verdict(&[(NOW - 8 * H, 0)], NOW), None, "an old row");
        assert_eq!(zone_verdict(&[(NOW + 9 * H - 60_000, 0)], NOW), Some(9 * H));
        assert_eq!(zone_verdict(&[(NOW + 60_000, 0)], NOW), None);
    }

    #[test]
    fn the_schema_goes_into_the_url_quoted() {
        let o = DbOptions {
            schema: "Cond-uctor\"x".into(),
            ..Default::default()
        };
        let url = o.session_url("postgres://u@h/db");
        assert_eq!(
            url,
            "postgres://u@h/db?options%5Bsearch_path%5D=%22Cond%2Ductor%22%22x%22"
        );
        assert!(o
            .session_url("postgres://h/db?sslmode=disable")
            .contains("&options"));
        let parsed: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        assert!(parsed.get_options().unwrap().contains("search_path"));
    }

    #[test]
    fn the_evidence_query_reads_each_time() {
        let sql = zone_evidence_sql(NEWEST_BY_INDEX);
        assert!(sql.contains("j->>'endTime'"), "{sql}");
        assert_eq!(utc_offset(-8 * 3600), "UTC-08:00");
        assert_eq!(utc_offset(19_800), "UTC+05:30");
    }
}
