//! A Kestra execution (`executions.value`, `docs/engines/kestra.md` §2) read into taskpulse
//! updates: one task per task run, its attempts with the worker of each.
//!
//! - task id = the task run's `id`; task type = its `taskId`; workflow id = the execution's
//!   `id`; workflow type = `{namespace}/{flowId}`; `iteration` kept; the attempt number is the
//!   attempt's index (0 for the first), and the worker its `workerId`.
//! - Both shapes are read: `taskRunList` (0.x, 1.x, most of 2.x) and the slim 2.x
//!   `executionTaskRuns`.
//! - Times: ISO-8601 instants with 0 to 9 fractional digits and `Z` or an offset.

use serde::Deserialize;

use crate::ingest::{RawAttempt, RawUpdate, Reopen, TaskUpdate};
use crate::model::{ReopenKind, Status, ATTEMPTS_KEPT};

/// The separator between namespace and flow id in the workflow type (`company.team/etl`):
/// namespaces are dotted, so a dot would be ambiguous.
pub const FLOW_SEPARATOR: char = '/';

/// Kestra's `State.Type` mapped to taskpulse's lifecycle (`docs/engines/kestra.md` §3):
/// `None` for a value this version doesn't know (treated as not finished, logged once).
pub fn map_state(kestra: &str) -> Option<Status> {
    Some(match kestra {
        "CREATED" | "SUBMITTED" | "QUEUED" | "RESTARTED" => Status::Scheduled,
        "RUNNING" | "KILLING" | "RETRYING" | "PAUSED" | "BREAKPOINT" => Status::InProgress,
        "SUCCESS" => Status::Completed,
        "WARNING" => Status::CompletedWithErrors,
        "FAILED" => Status::Failed,
        "KILLED" | "CANCELLED" => Status::Canceled,
        "SKIPPED" => Status::Skipped,
        // A task run that was retried as a new task run (RETRIED), or handed to another worker
        // (RESUBMITTED), ended here and goes on elsewhere: terminated in Kestra's own terms
        // (`isTerminated()`), not a failure (`isTerminatedNoFail()`), and not a success either.
        // CANCELED says "stopped, not by its own outcome" without counting it as a failure.
        "RETRIED" | "RESUBMITTED" => Status::Canceled,
        _ => return None,
    })
}

/// Whether a state ends an execution (`State.Type.isTerminated()`, 1.x and 2.x).
pub fn is_terminated(kestra: &str) -> bool {
    matches!(
        kestra,
        "FAILED"
            | "WARNING"
            | "SUCCESS"
            | "KILLED"
            | "CANCELLED"
            | "RETRIED"
            | "SKIPPED"
            | "RESUBMITTED"
    )
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub id: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub flow_id: String,
    #[serde(default)]
    pub task_run_list: Option<Vec<TaskRun>>,
    /// The slim 2.x shape.
    #[serde(default)]
    pub execution_task_runs: Option<Vec<TaskRun>>,
    pub state: Option<State>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TaskRun {
    pub id: String,
    pub task_id: String,
    pub parent_task_run_id: Option<String>,
    pub value: Option<serde_json::Value>,
    pub iteration: Option<i64>,
    #[serde(default)]
    pub attempts: Option<Vec<Attempt>>,
    pub state: State,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub state: Option<State>,
    pub worker_id: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub current: String,
    #[serde(default)]
    pub histories: Vec<History>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct History {
    pub state: String,
    pub date: String,
}

impl State {
    /// When it began: `startDate`, else the first history's date (epoch ms).
    fn started(&self) -> Option<i64> {
        self.start_date
            .as_deref()
            .or(self.histories.first().map(|h| h.date.as_str()))
            .and_then(parse_instant)
    }

    /// When it ended: `endDate`, else the last history's date (epoch ms).
    fn ended(&self) -> Option<i64> {
        self.end_date
            .as_deref()
            .or(self.histories.last().map(|h| h.date.as_str()))
            .and_then(parse_instant)
    }

    /// Kestra's own record of putting the task run back to work after it ended: the last
    /// history entry that is not terminated and follows a terminated one (`RETRYING` when
    /// `ExecutorService` retries a failed task run in place, `RESTARTED` when
    /// `ExecutionService.restart` keeps its id, then `CREATED`, `RUNNING`...). Its time is
    /// taken as at least one ms after the terminated entry: the history's own order says it
    /// came after that end, whatever the dates' precision.
    fn reopen(&self) -> Option<Reopen> {
        let mut ended: Option<i64> = None;
        let mut found = None;
        for h in &self.histories {
            let at = parse_instant(&h.date);
            if is_terminated(&h.state) {
                ended = at.or(ended);
                continue;
            }
            if let (Some(end), Some(at)) = (ended.take(), at) {
                let kind = if h.state == "RESTARTED" {
                    ReopenKind::Restart
                } else {
                    ReopenKind::Retry
                };
                found = Some(Reopen {
                    kind,
                    at: at.max(end + 1),
                });
            }
        }
        found
    }

    /// Its last change: the last history's date, else `endDate` or `startDate`.
    fn changed(&self) -> Option<i64> {
        self.histories
            .last()
            .map(|h| h.date.as_str())
            .or(self.end_date.as_deref())
            .or(self.start_date.as_deref())
            .and_then(parse_instant)
    }
}

impl Execution {
    pub fn parse(json: &str) -> Result<Execution, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub fn task_runs(&self) -> &[TaskRun] {
        self.task_run_list
            .as_deref()
            .or(self.execution_task_runs.as_deref())
            .unwrap_or_default()
    }

    pub fn workflow_type(&self) -> String {
        format!("{}{FLOW_SEPARATOR}{}", self.namespace, self.flow_id)
    }

    /// Per task run whose state taskpulse can map: its update now, with every attempt it
    /// holds (the newest [`ATTEMPTS_KEPT`]), each with its own state, times and worker, so
    /// taskpulse records the worker of every attempt even when it first sees the task run on
    /// a later one (kestra-io/kestra#7799). `unknown` gets the Kestra states it could not map.
    pub fn updates(&self, unknown: &mut Vec<String>) -> Vec<TaskUpdate> {
        let workflow_type = self.workflow_type();
        let mut out = Vec::new();
        for run in self.task_runs() {
            let Some(status) = map_state(&run.state.current) else {
                unknown.push(run.state.current.clone());
                continue;
            };
            let attempts = run.attempts.as_deref().unwrap_or_default();
            let last = attempts.len().checked_sub(1);
            // the last change of the task run or of its current attempt
            let changed = [
                run.state.changed(),
                last.and_then(|n| attempts[n].state.as_ref())
                    .and_then(State::changed),
            ]
            .into_iter()
            .flatten()
            .max();
            let skip = attempts.len().saturating_sub(ATTEMPTS_KEPT);
            let reported = attempts
                .iter()
                .enumerate()
                .skip(skip)
                .filter_map(|(n, a)| {
                    let state = a.state.as_ref();
                    let status = state.and_then(|s| map_state(&s.current));
                    Some(RawAttempt {
                        attempt: Some(n as i64),
                        worker_id: Some(a.worker_id.clone()?),
                        status: status.map(|s| s.as_str().to_string()),
                        start_time: state.and_then(State::started),
                        end_time: state
                            .filter(|s| is_terminated(&s.current))
                            .and_then(State::ended),
                        index: Some(n),
                    })
                })
                .collect();
            let update = RawUpdate {
                task_id: Some(run.id.clone()),
                workflow_id: Some(self.id.clone()),
                task_type: Some(run.task_id.clone()),
                workflow_type: Some(workflow_type.clone()),
                iteration: run.iteration,
                retry_count: last.map(|n| n as i64),
                status: Some(status.as_str().to_string()),
                worker_id: last.and_then(|n| attempts[n].worker_id.clone()),
                start_time: run.state.started(),
                update_time: changed,
                parent_task_id: run.parent_task_run_id.clone(),
                iteration_value: run.value.as_ref().and_then(value_text),
                attempts: Some(reported),
                ..Default::default()
            };
            if let Ok(mut u) = update.validate_from_engine() {
                u.reopen = run.state.reopen();
                out.push(u);
            }
        }
        out
    }

    /// The worker ids its attempts name.
    pub fn worker_ids(&self) -> impl Iterator<Item = &str> {
        self.task_runs()
            .iter()
            .flat_map(|r| r.attempts.as_deref().unwrap_or_default())
            .filter_map(|a| a.worker_id.as_deref())
    }
}

/// A task run's `value` as text: a string as it is, anything else as its JSON.
fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// An ISO-8601 instant (`2025-06-01T10:00:02.300Z`, 0 to 9 fractional digits, `Z` or
/// `±HH:MM`) as epoch ms. Read as its parts (a civil date and time, an offset) rather than as a
/// `jiff::Timestamp`, whose range ends a day before the year 9999 does.
pub fn parse_instant(s: &str) -> Option<i64> {
    let parts = jiff::fmt::temporal::Pieces::parse(s).ok()?;
    let offset = parts.to_numeric_offset()?;
    let wall = parts.date().to_datetime(parts.time()?);
    let ms = wall.duration_since(EPOCH).as_millis() - i128::from(offset.seconds()) * 1000;
    i64::try_from(ms).ok()
}

/// 1970-01-01T00:00, the wall time epoch milliseconds count from.
const EPOCH: jiff::civil::DateTime = jiff::civil::DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

/// A duration as Kestra writes it: a number of seconds (`4.651658000`) or ISO-8601 of hours,
/// minutes and seconds (`PT4.651658S`, `PT1M2.5S`, `PT2H`), in ms. Days and longer (`P1D`)
/// are not a fixed length and are not what Kestra writes for a task run: none.
pub fn parse_duration(v: &serde_json::Value) -> Option<i64> {
    if let Some(n) = v.as_f64() {
        return Some((n * 1000.0).round() as i64);
    }
    let s = v.as_str().filter(|s| s.starts_with("PT"))?;
    let d: jiff::SignedDuration = s.parse().ok()?;
    Some((d.as_secs_f64() * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_with_3_6_or_9_digits_and_offsets() {
        let ms = 1_748_772_002_300; // 2025-06-01T10:00:02.300Z
        assert_eq!(parse_instant("2025-06-01T10:00:02.300Z"), Some(ms));
        assert_eq!(parse_instant("2025-06-01T10:00:02.300123Z"), Some(ms));
        assert_eq!(parse_instant("2025-06-01T10:00:02.300123456Z"), Some(ms));
        assert_eq!(parse_instant("2025-06-01T10:00:02Z"), Some(ms - 300));
        assert_eq!(parse_instant("2025-06-01T12:00:02.300+02:00"), Some(ms));
        assert_eq!(parse_instant("2025-06-01T09:30:02.300-00:30"), Some(ms));
        assert_eq!(
            parse_instant("9999-12-31T23:59:59.999Z"),
            Some(253_402_300_799_999)
        );
        assert_eq!(parse_instant("2025-06-01T10:00:02.300"), None);
        assert_eq!(parse_instant("yesterday"), None);
        assert_eq!(parse_instant(""), None);
    }

    #[test]
    fn durations_as_seconds_or_iso() {
        use serde_json::json;
        assert_eq!(parse_duration(&json!(4.651658)), Some(4652));
        assert_eq!(parse_duration(&json!("PT4.651658S")), Some(4652));
        assert_eq!(parse_duration(&json!("PT1M2.5S")), Some(62_500));
        assert_eq!(parse_duration(&json!("PT2H")), Some(7_200_000));
        assert_eq!(parse_duration(&json!("P1D")), None);
        assert_eq!(parse_duration(&json!("PT5")), None);
    }

    #[test]
    fn every_state_type_is_mapped_and_unknown_ones_are_not() {
        let all = [
            "CREATED",
            "SUBMITTED",
            "RUNNING",
            "PAUSED",
            "RESTARTED",
            "KILLING",
            "SUCCESS",
            "WARNING",
            "FAILED",
            "KILLED",
            "CANCELLED",
            "QUEUED",
            "RETRYING",
            "RETRIED",
            "SKIPPED",
            "BREAKPOINT",
            "RESUBMITTED",
        ];
        for s in all {
            let mapped = map_state(s).unwrap_or_else(|| panic!("{s} unmapped"));
            assert_eq!(
                mapped.is_terminal(),
                is_terminated(s),
                "{s}: taskpulse's terminal agrees with Kestra's isTerminated()"
            );
        }
        assert_eq!(map_state("WARNING"), Some(Status::CompletedWithErrors));
        assert_eq!(map_state("KILLED"), Some(Status::Canceled));
        assert_eq!(map_state("UNKNOWN_DEFAULT_OPEN_API"), None);
    }

    #[test]
    fn a_task_run_on_its_second_attempt() {
        let json = r#"{"id":"ex1","namespace":"company.team","flowId":"etl","deleted":false,
          "state":{"current":"RUNNING","histories":[{"state":"CREATED","date":"2025-06-01T10:00:00.010Z"}],
                   "startDate":"2025-06-01T10:00:00.010Z"},
          "taskRunList":[{"id":"tr1","executionId":"ex1","taskId":"load","iteration":2,
            "parentTaskRunId":"tr0","value":"eu-west",
            "attempts":[
              {"state":{"current":"FAILED","histories":[{"state":"RUNNING","date":"2025-06-01T10:00:02.450Z"},
                 {"state":"FAILED","date":"2025-06-01T10:00:05.900Z"}],"duration":3.45},"workerId":"w-a"},
              {"state":{"current":"RUNNING","histories":[{"state":"RUNNING","date":"2025-06-01T10:00:15.930Z"}]},
               "workerId":"w-b"}],
            "outputs":null,
            "state":{"current":"RUNNING","histories":[{"state":"CREATED","date":"2025-06-01T10:00:02.330Z"},
              {"state":"RUNNING","date":"2025-06-01T10:00:15.925Z"}],"startDate":"2025-06-01T10:00:02.330Z"}}]}"#;
        let ex = Execution::parse(json).unwrap();
        let mut unknown = Vec::new();
        let u = ex.updates(&mut unknown);
        assert!(unknown.is_empty());
        assert_eq!(u.len(), 1);
        let a = &u[0].attempts;
        assert_eq!(a.len(), 2, "both attempts, each with its own state");
        assert_eq!(
            (a[0].attempt, a[0].worker_id.as_str(), a[0].status),
            (0, "w-a", Some(Status::Failed))
        );
        assert_eq!(a[0].start_time, parse_instant("2025-06-01T10:00:02.450Z"));
        assert_eq!(a[0].end_time, parse_instant("2025-06-01T10:00:05.900Z"));
        assert_eq!(
            (a[1].attempt, a[1].worker_id.as_str(), a[1].status),
            (1, "w-b", Some(Status::InProgress))
        );
        assert_eq!(a[1].end_time, None, "still running");
        assert_eq!(u[0].parent_task_id.as_deref(), Some("tr0"));
        assert_eq!(u[0].iteration_value.as_deref(), Some("eu-west"));
        let u = &u[0];
        assert_eq!(
            (
                u.task_id.as_str(),
                u.workflow_id.as_str(),
                u.task_type.as_deref()
            ),
            ("tr1", "ex1", Some("load"))
        );
        assert_eq!(u.workflow_type.as_deref(), Some("company.team/etl"));
        assert_eq!(u.status, Status::InProgress);
        assert_eq!(u.retry_count, Some(1), "the second attempt");
        assert_eq!(u.worker_id.as_deref(), Some("w-b"));
        assert_eq!(u.iteration, Some(2));
        assert_eq!(u.start_time, parse_instant("2025-06-01T10:00:02.330Z"));
        assert_eq!(u.update_time, parse_instant("2025-06-01T10:00:15.930Z"));
        assert_eq!(ex.worker_ids().collect::<Vec<_>>(), ["w-a", "w-b"]);

        let slim = r#"{"id":"ex2","namespace":"n","flowId":"f","executionTaskRuns":[
            {"id":"tr2","taskId":"t","state":{"current":"SOME_NEW_STATE","histories":[]}},
            {"id":"tr3","taskId":"t","state":{"current":"SUCCESS","histories":[{"state":"SUCCESS","date":"2026-01-01T00:00:00.000001Z"}]}}]}"#;
        let ex = Execution::parse(slim).unwrap();
        let u = ex.updates(&mut unknown);
        assert_eq!(unknown, ["SOME_NEW_STATE"]);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].status, Status::Completed);
        assert_eq!(u[0].retry_count, None);
        assert!(u[0].attempts.is_empty());
        assert_eq!(
            value_text(&serde_json::json!({"k": 1})).as_deref(),
            Some(r#"{"k":1}"#)
        );
    }

    /// A task run's `state` as Kestra keeps it, with these (state, date) histories.
    fn state(histories: &[(&str, &str)]) -> State {
        State {
            current: histories.last().unwrap().0.to_string(),
            histories: histories
                .iter()
                .map(|(s, d)| History {
                    state: s.to_string(),
                    date: d.to_string(),
                })
                .collect(),
            start_date: None,
            end_date: None,
        }
    }

    #[test]
    fn a_state_after_a_terminated_one_is_kestras_own_reopen() {
        let t = |s: &str| parse_instant(s).unwrap();
        let failed = "2025-06-01T10:00:05.000Z";
        // ExecutorService marks the failed task run RETRYING, then retryTask sets it CREATED
        let retried = state(&[
            ("CREATED", "2025-06-01T10:00:00.000Z"),
            ("RUNNING", "2025-06-01T10:00:01.000Z"),
            ("FAILED", failed),
            ("RETRYING", "2025-06-01T10:00:05.200Z"),
            ("CREATED", "2025-06-01T10:00:15.000Z"),
            ("RUNNING", "2025-06-01T10:00:15.100Z"),
        ]);
        let r = retried.reopen().unwrap();
        assert_eq!(r.kind, ReopenKind::Retry);
        assert_eq!(r.at, t("2025-06-01T10:00:05.200Z"));
        // ExecutionService.restart: RESTARTED on the same task run id
        let restarted = state(&[
            ("RUNNING", "2025-06-01T10:00:01.000Z"),
            ("KILLED", failed),
            ("RESTARTED", "2025-06-01T11:00:00.000Z"),
        ]);
        assert_eq!(restarted.reopen().unwrap().kind, ReopenKind::Restart);
        // the reopen's date is taken after the end even when both share a millisecond
        let same_ms = state(&[("FAILED", failed), ("RETRYING", failed)]);
        assert_eq!(same_ms.reopen().unwrap().at, t(failed) + 1);
        // failed, with nothing after: no reopen; never failed: none either
        assert!(state(&[("RUNNING", failed), ("FAILED", failed)])
            .reopen()
            .is_none());
        assert!(state(&[("CREATED", failed), ("RUNNING", failed)])
            .reopen()
            .is_none());
        // retried twice, failed again: the last reopen counts
        let twice = state(&[
            ("FAILED", "2025-06-01T10:00:05.000Z"),
            ("RETRYING", "2025-06-01T10:00:06.000Z"),
            ("FAILED", "2025-06-01T10:00:09.000Z"),
            ("RETRYING", "2025-06-01T10:00:10.000Z"),
            ("FAILED", "2025-06-01T10:00:13.000Z"),
        ]);
        assert_eq!(twice.reopen().unwrap().at, t("2025-06-01T10:00:10.000Z"));
    }
}
