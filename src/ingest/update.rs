//! One task update as it arrives on the wire, and its validation.
//!
//! Field names are Conductor's camelCase. Conductor's own Task JSON carries both `taskType` and
//! `taskDefName`, and `workflowInstanceId` instead of `workflowId`, so aliases are separate fields
//! (serde's `alias` would reject a body that has both) and resolved here in a fixed order.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

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
    pub attempts: Option<Vec<RawAttempt>>,
    /// Set by an engine's store reader only; never read from JSON.
    #[serde(skip)]
    pub reopen: Option<Reopen>,
}

/// What taskpulse reads from `outputData`: `progressPercent`, `progressMessage`, and `progress`
/// when it is a number (the Conductor SDK's examples use it). Everything else in the map is
/// skipped without being built, and a non-object `outputData` is ignored.
#[derive(Debug, Default, PartialEq)]
pub struct OutputProgress {
    pub progress_percent: Option<f64>,
    pub progress: Option<f64>,
    pub progress_message: Option<String>,
}

impl<'de> Deserialize<'de> for OutputProgress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OutputProgress;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = OutputProgress::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "progressPercent" => {
                            out.progress_percent = map.next_value::<Option<f64>>().map_err(|e| {
                                de::Error::custom(format!("outputData.progressPercent: {e}"))
                            })?
                        }
                        "progressMessage" => {
                            out.progress_message =
                                map.next_value::<Option<String>>().map_err(|e| {
                                    de::Error::custom(format!("outputData.progressMessage: {e}"))
                                })?
                        }
                        "progress" => out.progress = map.next_value::<IgnoredOrNumber>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            // Anything but an object: nothing to read, nothing to reject.
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(OutputProgress::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// A number, or `None` for any other JSON value (skipped, not rejected).
struct IgnoredOrNumber(Option<f64>);
impl<'de> Deserialize<'de> for IgnoredOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IgnoredOrNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IgnoredOrNumber(Some(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IgnoredOrNumber(Some(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(IgnoredOrNumber(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IgnoredOrNumber(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(IgnoredOrNumber(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(IgnoredOrNumber(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IgnoredOrNumber(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IgnoredOrNumber(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl RawUpdate {
    /// Turns the wire shape into a [`TaskUpdate`], naming the first field that is wrong.
    pub fn validate(self) -> Result<TaskUpdate, Rejection> {
        let invalid = |msg: String| Rejection::Invalid(msg);
        let task_id = required_id("taskId", self.task_id)?;
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
            // PostgreSQL text cannot hold NUL; nothing a human reads needs it.
            .map(|m| truncate(&m.replace('\0', ""), MAX_MESSAGE_LEN).to_string());
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
        .map(|(i, a)| {
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
        Some(s) if s.trim().is_empty() => {
            Err(Rejection::Invalid(format!("`{field}` must not be empty")))
        }
        Some(s) if s.len() > MAX_ID_LEN => Err(Rejection::Invalid(format!(
            "`{field}` is {} bytes long; at most {MAX_ID_LEN} are allowed",
            s.len()
        ))),
        Some(s) if s.chars().any(char::is_control) => Err(Rejection::Invalid(format!(
            "`{field}` must not contain control characters"
        ))),
        Some(s) => Ok(Some(s)),
    }
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
