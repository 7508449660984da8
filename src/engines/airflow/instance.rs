//! A task instance read into a taskpulse update (`docs/engines/airflow.md` §2-§4): one task per
//! task instance under its stable key, its tries as attempts with the host of each.

use super::rows::{Instance, Try};
use crate::ingest::{RawAttempt, RawUpdate, Reopen, TaskUpdate};
use crate::model::{ReopenKind, Status, ATTEMPTS_KEPT};

/// Airflow's `TaskInstanceState` (or no state) mapped to taskpulse's lifecycle (§3); `None`
/// for a value this version doesn't know (treated as not finished, logged once).
pub fn map_state(state: Option<&str>) -> Option<Status> {
    Some(match state {
        None | Some("scheduled" | "queued") => Status::Scheduled,
        // the try goes on: deferred and rescheduled ones keep their try_number (§3)
        Some("running" | "restarting" | "deferred" | "up_for_reschedule" | "awaiting_input") => {
            Status::InProgress
        }
        // the try ended; the next one waits for its retry delay
        Some("up_for_retry") => Status::Scheduled,
        Some("success") => Status::Completed,
        Some("failed" | "upstream_failed") => Status::Failed,
        Some("skipped") => Status::Skipped,
        Some("removed") => Status::Canceled,
        Some(_) => return None,
    })
}

/// Whether Airflow counts the state as finished (`State.finished`).
pub fn is_finished(state: Option<&str>) -> bool {
    matches!(
        state,
        Some("success" | "failed" | "skipped" | "upstream_failed" | "removed")
    )
}

/// Whether the task instance waits with a due time (§5): deferred, or a reschedule-mode sensor.
pub fn is_waiting(state: Option<&str>) -> bool {
    matches!(state, Some("deferred" | "up_for_reschedule"))
}

/// taskpulse's 0-based attempt of the row: `try_number - 1` once scheduled; `try_number` while
/// there is no state or the retry waits, since the last try is then already archived (§4.1).
pub fn attempt(i: &Instance) -> i64 {
    let n = i64::from(i.try_number);
    match i.state.as_deref() {
        None | Some("up_for_retry") => n.max(0),
        _ => (n - 1).max(0),
    }
}

/// The update for `i` with its earlier `tries` (any order) and its task's `execution_timeout`
/// in seconds (the deadline from its start, §4.1), or `None` when its state is unknown (pushed
/// to `unknown`) or the row names nothing taskpulse can take.
pub fn update(
    i: &Instance,
    tries: &[&Try],
    timeout: Option<f64>,
    unknown: &mut Vec<String>,
) -> Option<TaskUpdate> {
    let Some(status) = map_state(i.state.as_deref()) else {
        unknown.push(i.state.clone().unwrap_or_default());
        return None;
    };
    let running_or_done = status != Status::Scheduled;
    let raw = RawUpdate {
        task_id: Some(i.key.task_id()),
        workflow_id: Some(i.key.workflow_id()),
        task_type: Some(i.key.task_id.clone()),
        workflow_type: Some(i.key.dag_id.clone()),
        iteration: (i.key.map_index >= 0).then_some(i64::from(i.key.map_index)),
        retry_count: Some(attempt(i)),
        status: Some(status.as_str().to_string()),
        worker_id: i.hostname.clone().filter(|_| running_or_done),
        start_time: i.start.filter(|_| running_or_done),
        update_time: i.updated.or(i.end).or(i.start).or(i.scheduled),
        attempts: Some(attempts(i, tries)),
        timeout_seconds: timeout
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(|t| t.ceil() as i64),
        ..Default::default()
    };
    let mut u = raw.validate_from_engine().ok()?;
    // Only the engine puts a finished task instance back to work (a clear, §4.3): its row
    // unfinished again, changed after the end taskpulse holds.
    if !status.is_terminal() {
        u.reopen = u.update_time.map(|at| Reopen {
            kind: ReopenKind::Clear,
            at,
        });
    }
    Some(u)
}

/// Every try with a host, oldest first, the newest [`ATTEMPTS_KEPT`]: the archived ones, then
/// the row's own try once it has run (an `up_for_retry` or cleared row's try is archived).
fn attempts(i: &Instance, tries: &[&Try]) -> Vec<RawAttempt> {
    let mut out: Vec<RawAttempt> = Vec::new();
    let mut sorted: Vec<&&Try> = tries.iter().collect();
    sorted.sort_by_key(|t| t.try_number);
    for t in sorted {
        let Some(host) = t.hostname.clone() else {
            continue;
        };
        out.push(RawAttempt {
            attempt: Some(i64::from(t.try_number - 1).max(0)),
            worker_id: Some(host),
            status: map_state(t.state.as_deref()).map(|s| s.as_str().to_string()),
            start_time: t.start,
            end_time: t.end,
            index: None,
        });
    }
    let archived = out
        .iter()
        .any(|a| a.attempt == Some(i64::from(i.try_number - 1)));
    let own = !archived && i.try_number > 0 && i.state.is_some();
    if let (true, Some(host)) = (own, i.hostname.clone()) {
        let status = map_state(i.state.as_deref());
        out.push(RawAttempt {
            attempt: Some(i64::from(i.try_number - 1)),
            worker_id: Some(host),
            status: status.map(|s| s.as_str().to_string()),
            start_time: i.start,
            end_time: i.end.filter(|_| is_finished(i.state.as_deref())),
            index: None,
        });
    }
    let skip = out.len().saturating_sub(ATTEMPTS_KEPT);
    out.drain(..skip);
    for (n, a) in out.iter_mut().enumerate() {
        a.index = Some(n);
    }
    out
}

/// The wake-up moment a trigger's kwargs give, in epoch ms: `DateTimeTrigger` (and
/// `TimeDeltaTrigger`) serialize `moment` as a pendulum `DateTime` with its `timestamp` in
/// seconds (§5.1). `None` for any other trigger, and for kwargs encrypted with a Fernet key.
pub fn trigger_moment(kwargs: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(kwargs).ok()?;
    let secs = v.pointer("/moment/__data__/timestamp")?.as_f64()?;
    (secs.is_finite() && secs > 0.0).then(|| (secs * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::super::rows::Key;
    use super::*;

    fn row(state: Option<&str>, try_number: i32, host: Option<&str>) -> Instance {
        Instance {
            key: Key {
                dag_id: "etl".into(),
                run_id: "manual__1".into(),
                task_id: "load".into(),
                map_index: -1,
            },
            id: "01a24f83-930b-7fe9-b983-87e7d3d4f612".into(),
            state: state.map(str::to_string),
            try_number,
            hostname: host.map(str::to_string),
            start: Some(1_000),
            end: Some(2_000),
            updated: Some(2_500),
            scheduled: Some(900),
            trigger_id: None,
            trigger_timeout: None,
            dag_version: None,
        }
    }

    #[test]
    fn a_date_time_triggers_moment_is_read_and_anything_else_is_not() {
        // as Airflow 3.3.2 wrote it without a Fernet key (docs/engines/airflow.md §5.1)
        let kwargs = r#"{"moment": {"__classname__": "pendulum.datetime.DateTime", "__version__": 2, "__data__": {"timestamp": 1796630446.673002, "tz": {"__classname__": "builtins.tuple", "__version__": 1, "__data__": ["UTC", "pendulum.tz.timezone.Timezone", 1, true]}}}, "end_from_trigger": false}"#;
        assert_eq!(trigger_moment(kwargs), Some(1_796_630_446_673));
        assert_eq!(trigger_moment("gAAAAABn-encrypted"), None);
        assert_eq!(trigger_moment(r#"{"poll_interval": 5}"#), None);
    }

    #[test]
    fn every_airflow_state_has_its_place() {
        use Status::*;
        let cases = [
            (None, Scheduled),
            (Some("scheduled"), Scheduled),
            (Some("queued"), Scheduled),
            (Some("running"), InProgress),
            (Some("restarting"), InProgress),
            (Some("deferred"), InProgress),
            (Some("up_for_reschedule"), InProgress),
            (Some("awaiting_input"), InProgress),
            (Some("up_for_retry"), Scheduled),
            (Some("success"), Completed),
            (Some("failed"), Failed),
            (Some("upstream_failed"), Failed),
            (Some("skipped"), Skipped),
            (Some("removed"), Canceled),
        ];
        for (state, want) in cases {
            assert_eq!(map_state(state), Some(want), "{state:?}");
            assert_eq!(is_finished(state), want.is_terminal(), "{state:?}");
        }
        assert_eq!(map_state(Some("sleeping")), None);
    }

    #[test]
    fn a_retried_task_instance_has_both_tries_with_their_hosts() {
        let first = Try {
            key: row(None, 0, None).key,
            try_number: 1,
            state: Some("failed".into()),
            hostname: Some("worker-a".into()),
            start: Some(100),
            end: Some(200),
        };
        let live = row(Some("success"), 2, Some("worker-b"));
        let u = update(&live, &[&first], Some(299.5), &mut Vec::new()).unwrap();
        assert_eq!(u.task_id, "etl/manual__1/load/-1");
        assert_eq!(u.workflow_id, "etl/manual__1");
        assert_eq!((u.status, u.retry_count), (Status::Completed, Some(1)));
        let got: Vec<(i32, &str, Option<Status>)> = u
            .attempts
            .iter()
            .map(|a| (a.attempt, a.worker_id.as_str(), a.status))
            .collect();
        assert_eq!(
            got,
            [
                (0, "worker-a", Some(Status::Failed)),
                (1, "worker-b", Some(Status::Completed))
            ]
        );
        assert!(u.reopen.is_none(), "a finished row reopens nothing");
        assert_eq!(
            u.timeout_seconds,
            Some(300),
            "execution_timeout, whole seconds up"
        );
    }

    #[test]
    fn a_waiting_retry_and_a_cleared_row_name_the_try_to_come_and_carry_reopen_evidence() {
        let waiting = row(Some("up_for_retry"), 1, Some("worker-a"));
        let u = update(&waiting, &[], None, &mut Vec::new()).unwrap();
        assert_eq!((u.status, u.retry_count), (Status::Scheduled, Some(1)));
        assert_eq!(u.worker_id, None);
        let cleared = row(None, 1, Some("worker-a"));
        let u = update(&cleared, &[], None, &mut Vec::new()).unwrap();
        assert_eq!((u.status, u.retry_count), (Status::Scheduled, Some(1)));
        let reopen = u
            .reopen
            .expect("an unfinished row carries its change as evidence");
        assert_eq!((reopen.kind, reopen.at), (ReopenKind::Clear, 2_500));
        let fresh = row(None, 0, None);
        assert_eq!(attempt(&fresh), 0);
        let mapped = Instance {
            key: Key {
                map_index: 2,
                ..fresh.key.clone()
            },
            ..fresh
        };
        let u = update(&mapped, &[], None, &mut Vec::new()).unwrap();
        assert_eq!(
            (u.iteration, u.task_id.as_str()),
            (Some(2), "etl/manual__1/load/2")
        );
    }
}
