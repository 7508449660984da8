//! One task update as it arrives on the wire, and its validation.
//!
//! Field names are Conductor's camelCase. Conductor's own Task JSON carries both `taskType` and
//! `taskDefName`, and `workflowInstanceId` instead of `workflowId`, so aliases are separate fields
//! (serde's `alias` would reject a body that has both) and resolved here in a fixed order.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::output::OutputProgress;
use crate::lifecycle::Rejection;
use crate::model::{ReopenKind, Status, ATTEMPTS_KEPT};

/// Longest accepted id or name. Label values come from these, so they must stay short.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted value of a field that only ever becomes a metric label *shared by many
/// series* (`taskType`, `workflowType`, `workerId`). Every one of them is repeated in every
/// series and every scrape, so a hostile sender could otherwise multiply the size of `/metrics`;
/// 128 bytes is far above any real task or worker name. Ids that identify one task
/// (`taskId`, `workflowId`) keep [`MAX_ID_LEN`].
pub const MAX_LABEL_LEN: usize = 128;
/// Longest kept progress message; longer ones are cut, not rejected.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// A validated update: every field the lifecycle and the state need, in their own types.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskUpdate {
    pub task_id: String,
    pub workflow_id: String,
    pub task_type: Option<String>,
    pub workflow_type: Option<String>,
    pub reference_task_name: Option<String>,
    pub seq: Option<i32>,
    pub iteration: Option<i32>,
    pub retry_count: Option<i32>,
    pub status: Status,
    /// 0 to 100.
    pub progress: Option<f32>,
    pub progress_message: Option<String>,
    pub worker_id: Option<String>,
    pub start_time: Option<i64>,
    pub update_time: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub response_timeout_seconds: Option<i64>,
    pub wait_until: Option<i64>,
    /// The task this one runs under (a loop's or a parallel branch's parent), where the engine
    /// has one: Kestra's `parentTaskRunId`.
    pub parent_task_id: Option<String>,
    /// The value this run of a loop works on (Kestra's task run `value`), cut at
    /// [`MAX_ID_LEN`].
    pub iteration_value: Option<String>,
    /// The attempts as the engine reports them, each with its own state (the newest
    /// [`ATTEMPTS_KEPT`]); empty when the engine reports only the current one.
    pub attempts: Vec<AttemptReport>,
    /// The engine's own evidence that this task was put back to work after it had finished.
    /// Set only by readers of an engine's store, never from a request body: a worker or a
    /// webhook cannot reopen a finished task (`docs/contract.md` §3).
    pub reopen: Option<Reopen>,
    /// What was dropped or cut to take a row of an engine's store
    /// ([`RawUpdate::validate_from_engine`]); empty for requests, which are rejected instead.
    pub adjusted: Vec<Adjusted>,
}

/// A field of an engine's row that taskpulse could not take as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Adjusted {
    /// The field's name as an update carries it (`taskType`, `progress`, `attempts`...).
    pub field: &'static str,
    pub action: Adjustment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Adjustment {
    /// Left out: the update is taken without it.
    Dropped,
    /// Control characters removed, or shortened to its limit with a marker ([`fit`]).
    Cut,
}

impl Adjustment {
    pub const ALL: [Adjustment; 2] = [Adjustment::Dropped, Adjustment::Cut];

    pub fn as_str(self) -> &'static str {
        match self {
            Adjustment::Dropped => "dropped",
            Adjustment::Cut => "cut",
        }
    }
}

/// What an engine's store shows of a task being scheduled or started again: the latest moment
/// (engine time, epoch ms) the engine's own record of the task names for that, and how. The
/// lifecycle takes it as a reopen only when `at` is not before the end taskpulse holds; a late
/// write of the same run (conductor-oss#176) carries times from before that end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reopen {
    pub kind: ReopenKind,
    pub at: i64,
}

/// One attempt of a task as its engine reports it (Kestra: an entry of `attempts[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptReport {
    /// 0 for the first, as `retryCount`.
    pub attempt: i32,
    pub worker_id: String,
    /// The attempt's own state, mapped to taskpulse's statuses.
    pub status: Option<Status>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
}

/// The wire shape of one attempt.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawAttempt {
    pub attempt: Option<i64>,
    pub worker_id: Option<String>,
    pub status: Option<String>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    /// Its position in the update's `attempts` (the attempt number when it names none).
    #[serde(skip)]
    pub index: Option<usize>,
}

/// `attempts` as it is parsed: one attempt at a time, keeping the newest [`ATTEMPTS_KEPT`]
/// (the store keeps no more), so a body of a million attempts costs what twenty do.
fn newest_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RawAttempt>>, D::Error> {
    struct Newest;
    impl<'de> Visitor<'de> for Newest {
        type Value = Option<Vec<RawAttempt>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of attempts")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut kept = std::collections::VecDeque::with_capacity(ATTEMPTS_KEPT);
            let mut index = 0;
            while let Some(mut a) = seq.next_element::<RawAttempt>()? {
                a.index = Some(index);
                index += 1;
                if kept.len() == ATTEMPTS_KEPT {
                    kept.pop_front();
                }
                kept.push_back(a);
            }
            Ok(Some(kept.into()))
        }
    }
    d.deserialize_option(Newest)
}

/// The wire shape. Everything is optional so a missing field gets our message, not serde's.
///
/// Engine adapters whose wire format differs (Conductor's TaskNotification, an engine's own
/// store) fill this in directly and call [`RawUpdate::validate`], so every source shares the
/// same validation without a detour through JSON text.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawUpdate {
    pub task_id: Option<String>,
    pub workflow_id: Option<String>,
    pub workflow_instance_id: Option<String>,
    pub task_type: Option<String>,
    pub task_def_name: Option<String>,
    pub workflow_type: Option<String>,
    pub reference_task_name: Option<String>,
    pub seq: Option<i64>,
    pub iteration: Option<i64>,
    pub retry_count: Option<i64>,
    pub status: Option<String>,
    pub progress_percent: Option<f64>,
    pub progress_message: Option<String>,
    pub worker_id: Option<String>,
    pub start_time: Option<i64>,
    pub update_time: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub response_timeout_seconds: Option<i64>,
    pub wait_until: Option<i64>,
    pub wait_timeout: Option<i64>,
    pub output_data: Option<OutputProgress>,
    pub parent_task_id: Option<String>,
    pub iteration_value: Option<String>,
    #[serde(default, deserialize_with = "newest_attempts")]
    pub attempts: Option<Vec<RawAttempt>>,
    /// Set by an engine's store reader only; never read from JSON.
    #[serde(skip)]
    pub reopen: Option<Reopen>,
}

impl RawUpdate {
    /// Turns the wire shape into a [`TaskUpdate`], naming the first field that is wrong.
    pub fn validate(self) -> Result<TaskUpdate, Rejection> {
        self.validate_item().map_err(|e| e.rejection)
    }

    /// [`RawUpdate::validate`], with the task id as sent in the rejection (so an answer can name
    /// the task), without copying the id of every update that is fine.
    pub(crate) fn validate_item(mut self) -> Result<TaskUpdate, super::ItemError> {
        let Some(task_id) = self.task_id.take() else {
            return Err(super::ItemError {
                task_id: None,
                rejection: Rejection::Invalid("missing required field `taskId`".into()),
            });
        };
        match check_id("taskId", &task_id).and_then(|()| self.validate_rest()) {
            Ok(mut u) => {
                u.task_id = task_id;
                Ok(u)
            }
            Err(rejection) => Err(super::ItemError {
                task_id: Some(task_id),
                rejection,
            }),
        }
    }

    /// Every field but `taskId` (checked by the caller), which is left empty.
    fn validate_rest(self) -> Result<TaskUpdate, Rejection> {
        let invalid = |msg: String| Rejection::Invalid(msg);
        let task_id = String::new();
        let workflow_id = required_id(
            "workflowId (or workflowInstanceId)",
            self.workflow_id.or(self.workflow_instance_id),
        )?;
        let status_text = self
            .status
            .ok_or_else(|| invalid("missing required field `status`".into()))?;
        let status = Status::parse(&status_text).ok_or_else(|| {
            invalid(format!(
                "`status` must be one of SCHEDULED, IN_PROGRESS, COMPLETED, COMPLETED_WITH_ERRORS, FAILED, FAILED_WITH_TERMINAL_ERROR, TIMED_OUT, CANCELED, SKIPPED; got {:?}",
                truncate(&status_text, 40)
            ))
        })?;
        let output = self.output_data.unwrap_or_default();
        if let Some((field, wanted, got)) = output.invalid.first() {
            return Err(invalid(format!("`{field}` must be {wanted}; got {got}")));
        }
        let progress = match self
            .progress_percent
            .map(|p| ("progressPercent", p))
            .or(output
                .progress_percent
                .map(|p| ("outputData.progressPercent", p)))
            .or(output.progress.map(|p| ("outputData.progress", p)))
        {
            Some((field, p)) if !(0.0..=100.0).contains(&p) || p.is_nan() => {
                return Err(invalid(format!(
                    "`{field}` must be between 0 and 100, got {p}"
                )))
            }
            Some((_, p)) => Some(p as f32),
            None => None,
        };
        let progress_message = self
            .progress_message
            .or(output.progress_message)
            .map(clean_message);
        Ok(TaskUpdate {
            task_id,
            workflow_id,
            task_type: optional_label("taskType", self.task_type.or(self.task_def_name))?,
            workflow_type: optional_label("workflowType", self.workflow_type)?,
            reference_task_name: optional_id("referenceTaskName", self.reference_task_name)?,
            seq: small_int("seq", self.seq)?,
            iteration: small_int("iteration", self.iteration)?,
            retry_count: small_int("retryCount", self.retry_count)?,
            status,
            progress,
            progress_message,
            worker_id: optional_label("workerId", self.worker_id)?,
            start_time: non_negative("startTime", self.start_time)?,
            update_time: non_negative("updateTime", self.update_time)?,
            timeout_seconds: non_negative("timeoutSeconds", self.timeout_seconds)?,
            response_timeout_seconds: non_negative(
                "responseTimeoutSeconds",
                self.response_timeout_seconds,
            )?,
            wait_until: non_negative("waitUntil", self.wait_until.or(self.wait_timeout))?,
            parent_task_id: optional_id("parentTaskId", self.parent_task_id)?,
            iteration_value: self
                .iteration_value
                .map(|v| {
                    let v: String = v.chars().filter(|c| !c.is_control()).collect();
                    truncate(&v, MAX_ID_LEN).to_string()
                })
                .filter(|v| !v.is_empty()),
            attempts: attempts(self.attempts.unwrap_or_default())?,
            reopen: self.reopen,
            adjusted: Vec::new(),
        })
    }

    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }
}

/// The attempts an update reports, the newest [`ATTEMPTS_KEPT`] (the store keeps no more).
fn attempts(raw: Vec<RawAttempt>) -> Result<Vec<AttemptReport>, Rejection> {
    let skip = raw.len().saturating_sub(ATTEMPTS_KEPT);
    raw.into_iter()
        .enumerate()
        .skip(skip)
        .map(|(position, a)| {
            let i = a.index.unwrap_or(position);
            let field = |f: &str| format!("attempts[{i}].{f}");
            let status = match a.status {
                None => None,
                Some(s) => Some(Status::parse(&s).ok_or_else(|| {
                    Rejection::Invalid(format!(
                        "`{}` must be a taskpulse status such as FAILED; got {:?}",
                        field("status"),
                        truncate(&s, 40)
                    ))
                })?),
            };
            Ok(AttemptReport {
                attempt: small_int(&field("attempt"), a.attempt)?.unwrap_or(i as i32),
                worker_id: optional_label(&field("workerId"), a.worker_id)?.ok_or_else(|| {
                    Rejection::Invalid(format!("missing required field `{}`", field("workerId")))
                })?,
                status,
                start_time: non_negative(&field("startTime"), a.start_time)?,
                end_time: non_negative(&field("endTime"), a.end_time)?,
            })
        })
        .collect()
}

fn required_id(field: &str, v: Option<String>) -> Result<String, Rejection> {
    match optional_id(field, v)? {
        Some(v) => Ok(v),
        None => Err(Rejection::Invalid(format!(
            "missing required field `{field}`"
        ))),
    }
}

fn optional_id(field: &str, v: Option<String>) -> Result<Option<String>, Rejection> {
    match v {
        None => Ok(None),
        Some(s) => check_id(field, &s).map(|()| Some(s)),
    }
}

/// An id or name: not blank, at most [`MAX_ID_LEN`] bytes, no control characters.
fn check_id(field: &str, s: &str) -> Result<(), Rejection> {
    if s.trim().is_empty() {
        Err(Rejection::Invalid(format!("`{field}` must not be empty")))
    } else if s.len() > MAX_ID_LEN {
        Err(Rejection::Invalid(format!(
            "`{field}` is {} bytes long; at most {MAX_ID_LEN} are allowed",
            s.len()
        )))
    } else if s.chars().any(char::is_control) {
        Err(Rejection::Invalid(format!(
            "`{field}` must not contain control characters"
        )))
    } else {
        Ok(())
    }
}

/// A progress message as kept: without NUL (PostgreSQL text cannot hold it; nothing a human
/// reads needs it), cut at [`MAX_MESSAGE_LEN`]. The string is kept as it came when it needs
/// neither, which is nearly always.
fn clean_message(m: String) -> String {
    if m.len() <= MAX_MESSAGE_LEN && !m.contains('\0') {
        return m;
    }
    truncate(&m.replace('\0', ""), MAX_MESSAGE_LEN).to_string()
}

/// An optional name that becomes a shared metric label: an id, at most [`MAX_LABEL_LEN`] bytes.
/// Quotes, backslashes, `#`, `}` and any unicode are fine: the exposition encoder escapes them.
fn optional_label(field: &str, v: Option<String>) -> Result<Option<String>, Rejection> {
    match optional_id(field, v)? {
        Some(s) if s.len() > MAX_LABEL_LEN => Err(Rejection::Invalid(format!(
            "`{field}` is {} bytes long; at most {MAX_LABEL_LEN} are allowed (it becomes a metric label)",
            s.len()
        ))),
        other => Ok(other),
    }
}

fn small_int(field: &str, v: Option<i64>) -> Result<Option<i32>, Rejection> {
    match v {
        None => Ok(None),
        Some(n) if (0..=i32::MAX as i64).contains(&n) => Ok(Some(n as i32)),
        Some(n) => Err(Rejection::Invalid(format!(
            "`{field}` must be between 0 and {}, got {n}",
            i32::MAX
        ))),
    }
}

fn non_negative(field: &str, v: Option<i64>) -> Result<Option<i64>, Rejection> {
    match v {
        Some(n) if n < 0 => Err(Rejection::Invalid(format!(
            "`{field}` must not be negative, got {n}"
        ))),
        other => Ok(other),
    }
}

/// Cuts a string at a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row as an engine's store holds it, with `extra` fields set.
    pub(crate) fn row(extra: serde_json::Value) -> RawUpdate {
        let mut v = serde_json::json!({"taskId": "t", "workflowInstanceId": "wf",
            "taskType": "encode", "status": "COMPLETED"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn only_the_newest_attempts_are_kept_while_parsing() {
        let many: Vec<serde_json::Value> = (0..1000)
            .map(|i| serde_json::json!({"workerId": format!("w-{i}")}))
            .collect();
        let raw = row(serde_json::json!({"attempts": many}));
        let kept = raw.attempts.as_ref().unwrap();
        assert_eq!(kept.len(), ATTEMPTS_KEPT, "cut while parsing");
        assert_eq!(kept[0].index, Some(1000 - ATTEMPTS_KEPT));
        let u = raw.validate().unwrap();
        assert_eq!(u.attempts.len(), ATTEMPTS_KEPT);
        let last = u.attempts.last().unwrap();
        assert_eq!((last.attempt, last.worker_id.as_str()), (999, "w-999"));
        // an error names the attempt by its place in the body
        let mut bad: Vec<serde_json::Value> = (0..30)
            .map(|_| serde_json::json!({"workerId": "w"}))
            .collect();
        bad[25] = serde_json::json!({"workerId": "w", "status": "NOPE"});
        let e = row(serde_json::json!({"attempts": bad}))
            .validate()
            .unwrap_err();
        assert!(e.detail().contains("attempts[25].status"), "{}", e.detail());
        assert!(row(serde_json::json!({"attempts": null}))
            .attempts
            .is_none());
    }
}
