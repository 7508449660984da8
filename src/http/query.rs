//! The task list's query (`GET /api/v1/tasks`, `docs/contract.md` §5): filters, sort order and
//! cursor, parsed once with an error that names the parameter. The list is read from memory,
//! so a page costs one walk of the tracked tasks whatever the sort (no index to keep per sort).

use serde::Deserialize;

use crate::model::{Status, TaskRecord};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    status: Option<String>,
    task_type: Option<String>,
    workflow_type: Option<String>,
    workflow_id: Option<String>,
    in_flight: Option<String>,
    waiting: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    max_age: Option<String>,
}

pub(super) const DEFAULT_LIST_LIMIT: usize = 100;
/// Longest page of the task list: a page copies only its own records.
pub(super) const MAX_LIST_LIMIT: usize = 1000;

/// Longest `maxAge` a request may accept, in ms.
pub(super) const MAX_AGE_MS: u64 = 5000;

/// What the list can be sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sort {
    /// taskpulse's last accepted update (the default, newest first).
    Updated,
    /// The engine's start time, else taskpulse's first sight.
    Started,
    Progress,
    Deadline,
    /// The WAIT queue's wake-up time.
    WaitUntil,
    TaskId,
}

impl Sort {
    const ALL: [(Sort, &'static str); 6] = [
        (Sort::Updated, "updated"),
        (Sort::Started, "started"),
        (Sort::Progress, "progress"),
        (Sort::Deadline, "deadline"),
        (Sort::WaitUntil, "waitUntil"),
        (Sort::TaskId, "taskId"),
    ];

    fn name(self) -> &'static str {
        Sort::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("updated", |(_, n)| n)
    }

    /// The value sorted on; `None` for a task without one (it sorts last either way).
    fn value(self, r: &TaskRecord) -> Option<i64> {
        match self {
            Sort::Updated => Some(r.last_seen),
            Sort::Started => Some(r.start_time.filter(|t| *t > 0).unwrap_or(r.first_seen)),
            // per mille, so the key stays an integer
            Sort::Progress => r.progress.map(|p| (f64::from(p) * 1000.0).round() as i64),
            Sort::Deadline => r.deadline_ms(),
            Sort::WaitUntil => r.wait_until,
            Sort::TaskId => Some(0),
        }
    }
}

/// One parsed list request.
#[derive(Debug)]
pub(super) struct TaskQuery {
    pub status: Option<Status>,
    pub task_type: Option<String>,
    pub workflow_type: Option<String>,
    pub workflow_id: Option<String>,
    pub in_flight: bool,
    /// Only WAIT tasks that have not finished (the WAIT queue).
    pub waiting: bool,
    pub sort: Sort,
    pub descending: bool,
    pub limit: usize,
    /// The last (key, task id) of the previous page.
    pub after: Option<(i64, String)>,
    /// `maxAge`: an answer computed for the same query up to this long ago will do (the
    /// status page's background refreshes); 0, the default, asks for a fresh one.
    pub max_age: std::time::Duration,
}

impl TaskQuery {
    pub fn parse(p: ListParams) -> Result<TaskQuery, BadParam> {
        let given = |v: Option<String>| v.filter(|v| !v.is_empty());
        let status = match given(p.status) {
            None => None,
            Some(v) => Some(Status::parse(&v).ok_or(BadParam::Status(v))?),
        };
        let flag = |name: &str, v: Option<String>| match given(v).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(BadParam::Flag {
                name: name.to_string(),
                got: v.to_string(),
            }),
        };
        let in_flight = flag("inFlight", p.in_flight)?;
        let waiting = flag("waiting", p.waiting)?;
        let sort = match given(p.sort) {
            None => Sort::Updated,
            Some(v) => Sort::ALL
                .iter()
                .find(|(_, n)| *n == v)
                .map(|(s, _)| *s)
                .ok_or_else(|| {
                    let names: Vec<&str> = Sort::ALL.iter().map(|(_, n)| *n).collect();
                    BadParam::Sort {
                        choices: names.join(", "),
                        got: v.clone(),
                    }
                })?,
        };
        let descending = match given(p.order).as_deref() {
            // newest first for the times people scan from the top; ascending for the rest
            None => matches!(sort, Sort::Updated | Sort::Started | Sort::Progress),
            Some("desc") => true,
            Some("asc") => false,
            Some(v) => return Err(BadParam::Order(v.to_string())),
        };
        let limit = parse_limit(p.limit.as_deref())?;
        let max_age = match given(p.max_age) {
            None => 0,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms <= MAX_AGE_MS => ms,
                _ => return Err(BadParam::MaxAge(v)),
            },
        };
        let mut q = TaskQuery {
            status,
            task_type: given(p.task_type),
            workflow_type: given(p.workflow_type),
            workflow_id: given(p.workflow_id),
            in_flight,
            waiting,
            sort,
            descending,
            limit,
            after: None,
            max_age: std::time::Duration::from_millis(max_age),
        };
        if let Some(c) = given(p.cursor) {
            q.after = Some(q.parse_cursor(&c).ok_or(BadParam::Cursor(c))?);
        }
        Ok(q)
    }

    pub fn matches(&self, r: &TaskRecord) -> bool {
        (!self.in_flight || r.is_in_flight())
            && (!self.waiting || r.is_waiting())
            && self.status.is_none_or(|st| r.status == st)
            && self.task_type.as_deref().is_none_or(|t| &*r.task_type == t)
            && self
                .workflow_type
                .as_deref()
                .is_none_or(|t| r.workflow_type.as_deref() == Some(t))
            && self
                .workflow_id
                .as_deref()
                .is_none_or(|w| &*r.workflow_id == w)
    }

    /// What identifies the answer (everything but `maxAge`): the shared answers' key.
    pub fn answer_key(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}|{}|{}|{:?}",
            self.status,
            self.task_type,
            self.workflow_type,
            self.workflow_id,
            self.in_flight,
            self.waiting,
            self.sort,
            self.descending,
            self.limit,
            self.after
        )
    }

    /// The key the list is in ascending order of (ties by task id): the sort value, negated
    /// when descending; tasks without a value last in both directions.
    pub fn key(&self, r: &TaskRecord) -> i64 {
        match self.sort.value(r) {
            None => i64::MAX,
            Some(v) if self.descending => v.saturating_neg(),
            Some(v) => v.min(i64::MAX - 1),
        }
    }

    /// A page boundary as the API hands it out: `<sort>.<order>.<key>.<task id in hex>`, so a
    /// cursor used with another sort is refused rather than silently skipping tasks.
    pub fn cursor(&self, key: i64, task_id: &str) -> String {
        let hex: String = task_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}.{}.{key}.{hex}", self.sort.name(), self.order_name())
    }

    fn order_name(&self) -> &'static str {
        if self.descending {
            "desc"
        } else {
            "asc"
        }
    }

    fn parse_cursor(&self, c: &str) -> Option<(i64, String)> {
        let mut parts = c.splitn(4, '.');
        let (sort, order, key, hex) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if sort != self.sort.name() || order != self.order_name() || hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some((key.parse().ok()?, String::from_utf8(bytes).ok()?))
    }
}

/// `limit` query parameter: 1 to MAX_LIST_LIMIT, default DEFAULT_LIST_LIMIT.
pub(super) fn parse_limit(v: Option<&str>) -> Result<usize, BadParam> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
            _ => Err(BadParam::Limit(v.to_string())),
        },
    }
}

/// A query parameter the list endpoints refuse (answered 400 with this message).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BadParam {
    #[error("unknown status `{0}`; expected a Conductor task status such as IN_PROGRESS")]
    Status(String),
    #[error("`{name}` must be `true` or `false`, got `{got}`")]
    Flag { name: String, got: String },
    #[error("`sort` must be one of {choices}, got `{got}`")]
    Sort { choices: String, got: String },
    #[error("`order` must be `asc` or `desc`, got `{0}`")]
    Order(String),
    #[error("`limit` must be a number from 1 to {MAX_LIST_LIMIT}, got `{0}`")]
    Limit(String),
    #[error("`maxAge` must be a number of milliseconds from 0 to {MAX_AGE_MS}, got `{0}`")]
    MaxAge(String),
    #[error("`cursor` is not one this API handed out for this sort and order: `{0}`")]
    Cursor(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> ListParams {
        let mut p = ListParams::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "status" => p.status = v,
                "inFlight" => p.in_flight = v,
                "waiting" => p.waiting = v,
                "sort" => p.sort = v,
                "order" => p.order = v,
                "limit" => p.limit = v,
                "cursor" => p.cursor = v,
                "maxAge" => p.max_age = v,
                other => panic!("no parameter {other}"),
            }
        }
        p
    }

    #[test]
    fn cursors_round_trip_and_belong_to_their_sort() {
        let q = TaskQuery::parse(params(&[("sort", "deadline"), ("order", "asc")])).unwrap();
        let c = q.cursor(-5, "task.with.dots/é");
        let again = TaskQuery::parse(params(&[
            ("sort", "deadline"),
            ("order", "asc"),
            ("cursor", &c),
        ]))
        .unwrap();
        assert_eq!(again.after, Some((-5, "task.with.dots/é".to_string())));
        let other = TaskQuery::parse(params(&[("sort", "progress"), ("cursor", &c)]));
        assert!(other.unwrap_err().to_string().contains("cursor"));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v) in [
            ("sort", "colour"),
            ("order", "up"),
            ("inFlight", "yes"),
            ("waiting", "soon"),
            ("limit", "0"),
            ("status", "DONE"),
            ("maxAge", "9000"),
        ] {
            let e = TaskQuery::parse(params(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(v), "{k}={v}: {e}");
        }
    }

    #[test]
    fn missing_values_sort_last_both_ways() {
        let asc = TaskQuery::parse(params(&[("sort", "progress"), ("order", "asc")])).unwrap();
        let desc = TaskQuery::parse(params(&[("sort", "progress"), ("order", "desc")])).unwrap();
        let mut r = TaskRecord::in_progress("t", 1);
        r.progress = None;
        assert_eq!(asc.key(&r), i64::MAX);
        assert_eq!(desc.key(&r), i64::MAX);
        r.progress = Some(40.0);
        assert!(asc.key(&r) < i64::MAX && desc.key(&r) < 0);
    }
}
