//! Reading Conductor's `queue_message` rows of the WAIT queue, and the WAIT tasks' JSON, on a
//! read-only session.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;

use super::{APPLICATION_NAME, WAIT_QUEUE};
use crate::engines::store_source::read_only_pool;
use crate::error::{Error, Result};
use crate::wait::{WaitSnapshot, WaitTally};

/// A wake-up time further out than this is "until signalled".
const NO_TIMER_HORIZON_MS: i64 = 10 * 365 * 86_400_000;
/// Client-side limit for one whole read (also covers a silent network).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const TASK_LOOKUP_CHUNK: usize = 1000;
/// A WAIT task's document is loaded whole up to this size (a chunk holds at most 64 MiB);
/// past it, the database picks out the three fields read here ([`READ_TASK_SMALL`]).
const WAIT_DOC_BYTES: i64 = 64 << 10;

/// One WAIT message as read, joined with its task.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitRow {
    pub message_id: String,
    /// `workflowType` of the task, "" when unknown.
    pub workflow_type: String,
    /// When the task should wake (epoch ms); `None`: no timer, it waits to be signalled.
    pub wake_at: Option<i64>,
    /// Delivered to Conductor's system task worker.
    pub popped: bool,
}

/// What `task.json_data` tells about a WAIT task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskInfo {
    pub workflow_type: String,
    pub wait_timeout: Option<i64>,
    /// `taskType`, "" when unknown: a queue named like a WAIT queue holds WAIT tasks only if
    /// this says so (a user's task definition may be called `WAIT-something`).
    pub task_type: String,
}

/// Whether Conductor would put a WAIT task in this queue: `QueueUtils.getQueueName` builds
/// `[domain:]WAIT[@executionNameSpace][-isolationGroupId]` (system tasks get no domain, but
/// one is allowed for).
pub fn is_wait_queue(name: &str) -> bool {
    let rest = name.split_once(':').map_or(name, |(_, r)| r);
    rest == WAIT_QUEUE
        || rest
            .strip_prefix(WAIT_QUEUE)
            .is_some_and(|t| t.starts_with('@') || t.starts_with('-'))
}

/// Parses the fields needed from a task's JSON. Never fails: whatever is missing or malformed
/// is left at its default.
pub fn task_info(json_data: &str) -> TaskInfo {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "workflowType", default)]
        workflow_type: Option<Value>,
        #[serde(rename = "waitTimeout", default)]
        wait_timeout: Option<Value>,
        #[serde(rename = "taskType", default)]
        task_type: Option<Value>,
    }
    // (a derived struct would also take a JSON array, field by field)
    if !json_data.trim_start().starts_with('{') {
        return TaskInfo::default();
    }
    let Ok(raw) = serde_json::from_str::<Raw>(json_data) else {
        return TaskInfo::default();
    };
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let workflow_type = text(raw.workflow_type);
    let task_type = text(raw.task_type);
    let wait_timeout = raw.wait_timeout.and_then(|v| match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    });
    TaskInfo {
        workflow_type,
        wait_timeout,
        task_type,
    }
}

/// The wake-up time of a WAIT task: `waitTimeout` when present and positive, else `deliver_on`
/// (both epoch ms); `None` when neither is known or it is more than ten years after `now`
/// (a WAIT without a timer).
pub fn wake_time(deliver_on: Option<i64>, wait_timeout: Option<i64>, now: i64) -> Option<i64> {
    let wake = wait_timeout.filter(|t| *t > 0).or(deliver_on)?;
    (wake <= now.saturating_add(NO_TIMER_HORIZON_MS)).then_some(wake)
}

/// The WAIT gauges from one read. Popped rows are delivered, not waiting. Per workflow type:
/// `waiting` counts every unpopped row; `overdue` those with `wake + grace < now`;
/// `due_next_minute` those with `now <= wake <= now + 60 s`. `oldest_overdue_seconds` is the
/// largest `now - wake` among the overdue.
pub fn snapshot_from_rows(rows: &[WaitRow], now: i64, grace: Duration) -> WaitSnapshot {
    let mut tally = WaitTally::new(now, grace);
    for row in rows.iter().filter(|r| !r.popped) {
        tally.add(&row.workflow_type, row.wake_at);
    }
    tally.finish()
}

/// A pool on Conductor's database whose every session is read-only. `url`: `postgres://...`.
pub async fn connect_read_only(url: &str) -> Result<PgPool> {
    read_only_pool("conductor-db", APPLICATION_NAME, url)?
        .connect()
        .await
}

/// The same pool, connecting on first use (for the checker's look-ups, which `taskpulse
/// check` and `serve` build before anything is read).
pub fn lazy_read_only(url: &str) -> Result<PgPool> {
    Ok(read_only_pool("conductor-db", APPLICATION_NAME, url)?.lazy())
}

/// Every queue Conductor has created (`createQueueIfNotExists`: one row per name, small).
const QUEUE_NAMES: &str = "SELECT queue_name::text FROM queue";

/// The rows of the WAIT queues (`$1`) and the statement time in one statement (one row even
/// when they are empty). `deliver_on` is the writing session's wall time: read in the zone
/// `$2` (`--conductor-db-time-zone`).
const READ_QUEUE: &str = "\
    SELECT (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8 AS now_ms, \
           q.message_id, q.popped, q.deliver_ms \
    FROM (SELECT 1) AS one \
    LEFT JOIN ( \
        SELECT message_id::text AS message_id, COALESCE(popped, FALSE) AS popped, \
               CASE WHEN isfinite(deliver_on) \
                    THEN (EXTRACT(EPOCH FROM (deliver_on AT TIME ZONE $2)) * 1000)::int8 \
               END AS deliver_ms \
        FROM queue_message WHERE queue_name = ANY($1) \
    ) AS q ON TRUE";

/// The WAIT tasks' documents, those up to `$2` bytes (NULL for larger ones).
/// One larger WAIT task's fields, picked out by the database (fails on a document that is not
/// JSON: its labels are then unknown, its message still counts).
const READ_TASK_SMALL: &str = "\
    SELECT jsonb_build_object('workflowType', j->'workflowType', \
           'waitTimeout', j->'waitTimeout', 'taskType', j->'taskType')::text \
    FROM (SELECT json_data::jsonb AS j FROM task WHERE task_id = $1) AS t";

const READ_TASKS: &str = "\
    SELECT task_id::text, CASE WHEN octet_length(json_data) <= $2 THEN json_data::text END \
    FROM task WHERE task_id = ANY($1::text[])";

/// Reads the WAIT queue, caching what each task's JSON says while its message is queued.
pub(super) struct Reader {
    pub(super) pool: PgPool,
    pub(super) tasks: HashMap<String, TaskInfo>,
    /// `--conductor-db-time-zone`.
    pub(super) zone: String,
}

impl Reader {
    async fn read(&mut self) -> Result<(Vec<WaitRow>, i64)> {
        type QueueRow = (i64, Option<String>, Option<bool>, Option<i64>);
        let names: Vec<String> = sqlx::query_scalar(QUEUE_NAMES)
            .fetch_all(&self.pool)
            .await?;
        let wait_queues: Vec<String> = names.into_iter().filter(|n| is_wait_queue(n)).collect();
        let raw: Vec<QueueRow> = sqlx::query_as(READ_QUEUE)
            .bind(&wait_queues)
            .bind(&self.zone)
            .fetch_all(&self.pool)
            .await?;
        let now = raw.first().map(|r| r.0).unwrap_or_else(crate::now_ms);
        let queued: Vec<(String, bool, Option<i64>)> = raw
            .into_iter()
            .filter_map(|(_, id, popped, deliver)| Some((id?, popped.unwrap_or(false), deliver)))
            .collect();

        let present: HashSet<&str> = queued.iter().map(|q| q.0.as_str()).collect();
        self.tasks.retain(|id, _| present.contains(id.as_str()));
        let missing: Vec<String> = queued
            .iter()
            .filter(|q| !self.tasks.contains_key(&q.0))
            .map(|q| q.0.clone())
            .collect();
        for chunk in missing.chunks(TASK_LOOKUP_CHUNK) {
            let found: Vec<(String, Option<String>)> = sqlx::query_as(READ_TASKS)
                .bind(chunk)
                .bind(WAIT_DOC_BYTES)
                .fetch_all(&self.pool)
                .await?;
            for (id, json) in found {
                let json = match json {
                    Some(j) => Some(j),
                    None => self.small_fields(&id).await?,
                };
                let info = json.as_deref().map(task_info).unwrap_or_default();
                self.tasks.insert(id, info);
            }
        }

        let rows = queued
            .into_iter()
            .filter(|q| {
                let t = self.tasks.get(&q.0).map_or("", |i| i.task_type.as_str());
                t.is_empty() || t == WAIT_QUEUE
            })
            .map(|(message_id, popped, deliver)| {
                let info = self.tasks.get(&message_id);
                WaitRow {
                    workflow_type: info.map(|i| i.workflow_type.clone()).unwrap_or_default(),
                    wake_at: wake_time(deliver, info.and_then(|i| i.wait_timeout), now),
                    popped,
                    message_id,
                }
            })
            .collect();
        Ok((rows, now))
    }

    /// The fields of a large WAIT task's document; `None` when the database can't read it as
    /// JSON (any other failure fails the read, to be retried).
    async fn small_fields(&self, id: &str) -> Result<Option<String>> {
        match sqlx::query_scalar(READ_TASK_SMALL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
        {
            Ok(j) => Ok(j),
            Err(sqlx::Error::Database(e)) => {
                tracing::debug!(task_id = id, error = %e, "WAIT queue: a large task document is not JSON");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn read_timed(&mut self) -> Result<(Vec<WaitRow>, i64)> {
        match tokio::time::timeout(READ_TIMEOUT, self.read()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "reading Conductor's WAIT queue timed out",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::WaitCounts;

    const NOW: i64 = 1_700_000_000_000;

    fn row(id: &str, wf: &str, wake: Option<i64>, popped: bool) -> WaitRow {
        WaitRow {
            message_id: id.into(),
            workflow_type: wf.into(),
            wake_at: wake,
            popped,
        }
    }

    #[test]
    fn task_info_reads_type_and_wait_timeout() {
        let info = task_info(
            r#"{"taskId":"t","taskType":"WAIT","workflowType":"order","waitTimeout":1700000060000,"inputData":{"duration":"1m"}}"#,
        );
        assert_eq!(
            info,
            TaskInfo {
                workflow_type: "order".into(),
                wait_timeout: Some(1_700_000_060_000),
                task_type: "WAIT".into(),
            }
        );
    }

    /// `QueueUtils.getQueueName` (b54f0d4e): `[domain:]type[@namespace][-isolationGroup]`.
    #[test]
    fn wait_queues_are_named_as_conductor_names_them() {
        for q in [
            "WAIT",
            "WAIT-gpu",
            "WAIT-my-group",
            "WAIT@ns",
            "WAIT@ns-g",
            "dom:WAIT",
        ] {
            assert!(is_wait_queue(q), "{q}");
        }
        for q in ["WAITING", "encode", "encode-WAIT", "dom:WAITX", "", "wait"] {
            assert!(!is_wait_queue(q), "{q}");
        }
    }

    #[test]
    fn task_info_is_lenient() {
        assert_eq!(task_info("not json"), TaskInfo::default());
        assert_eq!(task_info("[1,2]"), TaskInfo::default());
        assert_eq!(task_info("{}"), TaskInfo::default());
        let odd = task_info(r#"{"workflowType":42,"waitTimeout":"1700000060000"}"#);
        assert_eq!(odd.workflow_type, "");
        assert_eq!(odd.wait_timeout, Some(1_700_000_060_000));
        assert_eq!(
            task_info(r#"{"waitTimeout":1.7e12}"#).wait_timeout,
            Some(1_700_000_000_000)
        );
        assert_eq!(task_info(r#"{"waitTimeout":1e300}"#).wait_timeout, None);
        assert_eq!(task_info(r#"{"waitTimeout":null}"#).wait_timeout, None);
        assert_eq!(task_info(r#"{"waitTimeout":"soon"}"#).wait_timeout, None);
    }

    #[test]
    fn wait_timeout_wins_over_deliver_on() {
        assert_eq!(wake_time(Some(NOW + 5_000), Some(NOW), NOW), Some(NOW));
        assert_eq!(wake_time(Some(NOW + 5_000), None, NOW), Some(NOW + 5_000));
        // Conductor writes 0 when there is no timer
        assert_eq!(
            wake_time(Some(NOW + 5_000), Some(0), NOW),
            Some(NOW + 5_000)
        );
        assert_eq!(wake_time(None, None, NOW), None);
    }

    #[test]
    fn a_wait_without_timer_has_no_wake_time() {
        let forever = NOW + 2_147_483_647_000;
        assert_eq!(wake_time(Some(forever), None, NOW), None);
        assert_eq!(
            wake_time(Some(i64::MAX), None, i64::MAX - 1),
            Some(i64::MAX)
        );
        // a year out is a real timer
        let year = NOW + 365 * 86_400_000;
        assert_eq!(wake_time(Some(year), None, NOW), Some(year));
    }

    #[test]
    fn popped_rows_are_not_waiting() {
        let grace = Duration::from_secs(30);
        let rows = vec![
            row("a", "order", Some(NOW - 120_000), false), // overdue by 120 s
            row("b", "order", Some(NOW - 30_000), false),  // exactly at grace: not overdue
            row("c", "order", Some(NOW + 30_000), false),  // due next minute
            row("d", "order", Some(NOW), false),           // due right now: next minute
            row("e", "order", Some(NOW + 60_000), false),  // edge of the minute: due
            row("f", "order", Some(NOW + 60_001), false),  // later
            row("g", "billing", Some(NOW - 45_000), false), // overdue by 45 s
            row("h", "billing", None, false),              // until signalled
            row("i", "billing", Some(NOW - 999_000), true), // popped: delivered
            row("j", "", Some(NOW + 1_000), false),
            row("k", "popped-only", Some(NOW), true),
        ];
        let s = snapshot_from_rows(&rows, NOW, grace);
        assert_eq!(s.read_at, NOW);
        assert_eq!(s.oldest_overdue_seconds, 120.0);
        let want: HashMap<String, WaitCounts> = [
            (
                "order",
                WaitCounts {
                    waiting: 6,
                    overdue: 1,
                    due_next_minute: 3,
                },
            ),
            (
                "billing",
                WaitCounts {
                    waiting: 2,
                    overdue: 1,
                    due_next_minute: 0,
                },
            ),
            (
                "",
                WaitCounts {
                    waiting: 1,
                    overdue: 0,
                    due_next_minute: 1,
                },
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(s.by_workflow_type, want);
    }

    #[test]
    fn empty_queue_gives_zeroes() {
        let s = snapshot_from_rows(&[], NOW, Duration::ZERO);
        assert!(s.by_workflow_type.is_empty());
        assert_eq!(s.oldest_overdue_seconds, 0.0);
    }
}
