//! Conductor's task status webhook: `POST /api/v1/conductor/task-status`.
//!
//! Conductor's `task_publisher` (module `task-status-listener`) POSTs a TaskNotification to
//! `{conductor.status-notifier.notification.url}/{endpointTask}` for the statuses listed in
//! `subscribedTaskStatuses`, and only from the places that call its listener: a task scheduled,
//! a task handed to a worker by a poll (IN_PROGRESS), an update through the task API that
//! leaves the task anything but SCHEDULED, and the tasks cancelled with their workflow. A
//! worker's IN_PROGRESS (stored as SCHEDULED), a WAIT completed by the engine, the decider's
//! timeouts and SUB_WORKFLOW tasks are never sent; the README's "Connecting to Conductor" has
//! the working configuration and what each way of connecting sees, and
//! `docs/engines/conductor.md` ("The task status webhook") the sources.
//!
//! What Conductor really sends, and how it is read here:
//! - The body is ISO-8859-1 (`new StringEntity(json)`) labelled `application/json` without a
//!   charset. A declared charset is honoured; without one, valid UTF-8 is UTF-8 (curl and other
//!   clients) and anything else ISO-8859-1, counted in
//!   `taskpulse_conductor_webhook_bodies_total{charset}`.
//! - A notification is a TaskSummary (times as ISO strings `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`, 0 as
//!   1970) plus `workflowTaskType`, `referenceTaskName`, `retryCount` and `taskDescription`.
//! - `output` is the output map's Java `toString()` (`{progress=40}`) unless Conductor runs with
//!   `conductor.app.summary-input-output-json-serialization.enabled=true`; then JSON, and
//!   progress is read from it. Otherwise the notification is still taken, without progress,
//!   counted in `taskpulse_conductor_webhook_output_unread_total` and logged once.
//! - A terminal write does not move `updateTime` (it sets `endTime`), so the update's time is
//!   the larger of the two, as the store readers take it; a terminal notification published
//!   before its write (`endTime` still 0) is timed by its arrival.
//!
//! Each notification becomes an ordinary update and goes through the same lifecycle and
//! throttle as everything else, counted with `source="conductor_webhook"`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytesize::ByteSize;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use serde_json::Value;

use crate::http::seam::{bad_body, error, read_body, submit};
use crate::ingest::{BodyError, BodyErrorKind, Item, ItemError, OutputProgress, RawUpdate};
use crate::lifecycle::Rejection;
use crate::model::Status;
use crate::pipeline::Pipeline;

/// `source` label of updates from the webhook.
pub const SOURCE: &str = "conductor_webhook";

/// The Conductor property that makes `output` JSON, named in the log line and the docs.
pub const JSON_OUTPUT_FLAG: &str = "conductor.app.summary-input-output-json-serialization.enabled";

/// The fields of a TaskNotification taskpulse uses. Everything is optional: a missing field
/// gets the ordinary validation's message.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    task_id: Option<String>,
    workflow_id: Option<String>,
    workflow_type: Option<String>,
    task_type: Option<String>,
    task_def_name: Option<String>,
    reference_task_name: Option<String>,
    retry_count: Option<i64>,
    status: Option<String>,
    start_time: Option<String>,
    update_time: Option<String>,
    end_time: Option<String>,
    /// The task's output map: Java `toString()` by default, JSON with [`JSON_OUTPUT_FLAG`].
    output: Option<String>,
}

/// ISO time string (UTC, `Z` optional) to epoch ms; Conductor writes 0 (1970) for "not set".
fn epoch_ms(field: &str, iso: Option<&str>) -> Result<Option<i64>, Rejection> {
    let Some(iso) = iso.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad =
        |e: jiff::Error| Rejection::Invalid(format!("`{field}` is not an ISO time ({e}): {iso:?}"));
    let wall: jiff::civil::DateTime = iso.trim_end_matches('Z').parse().map_err(bad)?;
    // the wall time since 1970 (UTC), not a `jiff::Timestamp`: its range ends a day before the
    // year 9999 does, and a time that far ahead is refused as clock skew, not as unreadable
    let epoch = jiff::civil::DateTime::constant(1970, 1, 1, 0, 0, 0, 0);
    let ms = i64::try_from(wall.duration_since(epoch).as_millis()).unwrap_or(i64::MAX);
    Ok((ms > 0).then_some(ms))
}

/// A notification's output, as far as progress goes.
#[derive(Debug, Default)]
struct Output {
    progress: Option<OutputProgress>,
    /// The output was there but not JSON: Conductor's default `toString()`.
    not_json: bool,
}

impl Notification {
    /// The notification in taskpulse's update shape, for the ordinary validation, and what its
    /// output held.
    fn into_update(self) -> Result<(RawUpdate, Output), Rejection> {
        let mut output = output(self.output.as_deref());
        let update = RawUpdate {
            start_time: epoch_ms("startTime", self.start_time.as_deref())?,
            update_time: self.last_change()?,
            output_data: output.progress.take(),
            task_id: self.task_id,
            workflow_id: self.workflow_id,
            workflow_type: self.workflow_type,
            task_type: self.task_type,
            task_def_name: self.task_def_name,
            reference_task_name: self.reference_task_name,
            retry_count: self.retry_count,
            status: self.status,
            ..RawUpdate::default()
        };
        Ok((update, output))
    }
}

impl Notification {
    /// When the engine last changed the task. Conductor's terminal write keeps the last
    /// non-terminal `updateTime` and sets `endTime` (ExecutionDAOFacade.updateTask), so the
    /// later of the two. A terminal notification whose `endTime` is 0 (written as 1970) was
    /// published before its write (a task cancelled with its workflow: the listener runs
    /// first): its `updateTime` is an earlier write's, so it carries no time and is timed by its
    /// arrival. (Conductor always writes `endTime`; a body without the field keeps its
    /// `updateTime`.)
    fn last_change(&self) -> Result<Option<i64>, Rejection> {
        let updated = epoch_ms("updateTime", self.update_time.as_deref())?;
        let ended = epoch_ms("endTime", self.end_time.as_deref())?;
        let terminal = self
            .status
            .as_deref()
            .and_then(Status::parse)
            .is_some_and(Status::is_terminal);
        let end_unwritten = terminal && self.end_time.is_some() && ended.is_none();
        Ok(if end_unwritten {
            None
        } else {
            updated.max(ended)
        })
    }
}

/// Progress from inside the output string. Only a JSON map can carry progress; an output that
/// is not JSON at all (Java's `toString()`) is noted, not judged. A progress field of the wrong
/// type is noted by [`OutputProgress`] and rejected by the validation, as in any other update.
fn output(output: Option<&str>) -> Output {
    let Some(text) = output.filter(|o| !o.is_empty()) else {
        return Output::default();
    };
    match serde_json::from_str::<OutputProgress>(text) {
        Ok(p) => Output {
            progress: Some(p),
            not_json: false,
        },
        Err(_) => Output {
            progress: None,
            not_json: true,
        },
    }
}

/// A character set a webhook body can be decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    /// ISO-8859-1: what Conductor's notifier sends (Apache HttpClient's `StringEntity(String)`).
    Latin1,
}

impl Charset {
    /// The `charset` label of `taskpulse_conductor_webhook_bodies_total`.
    pub fn label(self) -> &'static str {
        match self {
            Charset::Utf8 => "utf-8",
            Charset::Latin1 => "iso-8859-1",
        }
    }

    /// A `charset` parameter's value (case-insensitive, IANA names and aliases).
    fn from_label(label: &str) -> Option<Charset> {
        const LATIN1: &[&str] = &[
            "iso-8859-1",
            "iso8859-1",
            "iso_8859-1",
            "iso_8859-1:1987",
            "latin1",
            "latin-1",
            "l1",
            "iso-ir-100",
            "cp819",
            "ibm819",
            "csisolatin1",
        ];
        let label = label.to_ascii_lowercase();
        match label.as_str() {
            "utf-8" | "utf8" => Some(Charset::Utf8),
            l if LATIN1.contains(&l) => Some(Charset::Latin1),
            _ => None,
        }
    }
}

/// Why a body could not be turned into text.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CharsetError {
    #[error("charset `{0}` is not supported: send UTF-8 or ISO-8859-1 (or no charset)")]
    Unsupported(String),
    #[error("the body is declared UTF-8 but is not: invalid byte at offset {0}")]
    NotUtf8(usize),
}

impl IntoResponse for CharsetError {
    fn into_response(self) -> Response {
        let status = match self {
            CharsetError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CharsetError::NotUtf8(_) => StatusCode::BAD_REQUEST,
        };
        error(status, self.to_string())
    }
}

/// The `charset` parameter of a `Content-Type` value, unquoted.
fn declared_charset(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// A body as UTF-8, and what it was decoded from. A declared charset is honoured; without one,
/// see [`sniff`].
pub fn decode<'a>(
    content_type: Option<&str>,
    body: &'a [u8],
) -> Result<(Cow<'a, [u8]>, Charset), CharsetError> {
    let Some(label) = content_type.and_then(declared_charset) else {
        return Ok(sniff(body));
    };
    match Charset::from_label(label) {
        Some(Charset::Utf8) => match std::str::from_utf8(body) {
            Ok(_) => Ok((Cow::Borrowed(body), Charset::Utf8)),
            Err(e) => Err(CharsetError::NotUtf8(e.valid_up_to())),
        },
        Some(Charset::Latin1) => Ok((from_latin1(body), Charset::Latin1)),
        None => Err(CharsetError::Unsupported(label.into())),
    }
}

/// A body without a declared charset: valid UTF-8 is taken as UTF-8 (curl, most clients), any
/// other as ISO-8859-1, which is what Conductor sends. The one ambiguity, ISO-8859-1 text that
/// happens to be valid UTF-8 (`Ã©` sent as the bytes of `é`), is read as UTF-8.
pub fn sniff(body: &[u8]) -> (Cow<'_, [u8]>, Charset) {
    match std::str::from_utf8(body) {
        Ok(_) => (Cow::Borrowed(body), Charset::Utf8),
        Err(_) => (from_latin1(body), Charset::Latin1),
    }
}

/// ISO-8859-1 to UTF-8: every byte is the code point of the same value.
fn from_latin1(body: &[u8]) -> Cow<'_, [u8]> {
    let text: String = body.iter().map(|&b| char::from(b)).collect();
    Cow::Owned(text.into_bytes())
}

/// What the webhook counts on its own (besides `taskpulse_updates_total`).
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    utf8: IntCounter,
    latin1: IntCounter,
    output_not_json: IntCounter,
    /// Whether the one log line about Conductor's `toString()` output was written.
    warned: Arc<AtomicBool>,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<WebhookMetrics> {
        let bodies = IntCounterVec::new(
            Opts::new(
                "taskpulse_conductor_webhook_bodies_total",
                "Bodies taken by Conductor's status webhook, by the character set they were \
                 decoded from (utf-8, iso-8859-1: what Conductor's notifier sends).",
            ),
            &["charset"],
        )?;
        registry.register(Box::new(bodies.clone()))?;
        let unread = IntCounterVec::new(
            Opts::new(
                "taskpulse_conductor_webhook_output_unread_total",
                "Webhook notifications taken without progress because their output could not \
                 be read, by reason (not_json: Java toString(), Conductor runs without \
                 conductor.app.summary-input-output-json-serialization.enabled=true).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(unread.clone()))?;
        Ok(WebhookMetrics {
            utf8: bodies.with_label_values(&[Charset::Utf8.label()]),
            latin1: bodies.with_label_values(&[Charset::Latin1.label()]),
            output_not_json: unread.with_label_values(&["not_json"]),
            warned: Arc::new(AtomicBool::new(false)),
        })
    }

    fn body(&self, charset: Charset) {
        match charset {
            Charset::Utf8 => self.utf8.inc(),
            Charset::Latin1 => self.latin1.inc(),
        }
    }

    /// A notification whose output was Java's `toString()`: counted, and logged the first time.
    fn output_not_json(&self, task_type: Option<&str>) {
        self.output_not_json.inc();
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                task_type = task_type.unwrap_or(""),
                "Conductor's status webhook sends task output as Java toString() \
                 (`{{progress=40, ...}}`), so no progress can be read from it: set \
                 {JSON_OUTPUT_FLAG}=true in Conductor's configuration. Notifications are still \
                 taken; each one is counted in taskpulse_conductor_webhook_output_unread_total \
                 (logged once)"
            );
        }
    }
}

/// Parses a webhook body (already UTF-8, see [`decode`]): one notification, or an array of
/// them, each only when it is taken (a large body costs its bytes and a small index, not a
/// parsed tree of every notification). `metrics` counts outputs that are not JSON.
pub fn notifications<'a>(
    body: &'a [u8],
    metrics: Option<&'a WebhookMetrics>,
) -> Result<impl Iterator<Item = Item> + 'a, BodyError> {
    Ok(crate::ingest::values(body)
        .map_err(|mut e| {
            if e.kind == BodyErrorKind::NotAnObject {
                e.message = "expected a TaskNotification object or an array of them".into();
            }
            e
        })?
        .map(move |(index, text)| Item {
            index,
            parsed: notification(text, metrics),
        }))
}

/// Parses a webhook body at once, decoded as Conductor's would be without a `Content-Type`
/// charset (tests and the fuzzer).
pub fn parse_notifications(body: &[u8]) -> Result<Vec<Item>, BodyError> {
    let (text, _) = sniff(body);
    let items = notifications(&text, None)?.collect();
    Ok(items)
}

/// One notification, validated as an update.
fn notification(
    text: &str,
    metrics: Option<&WebhookMetrics>,
) -> Result<crate::ingest::TaskUpdate, ItemError> {
    let task_id = || {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("taskId").and_then(Value::as_str).map(str::to_string))
    };
    serde_json::from_str::<Notification>(text)
        .map_err(|e| Rejection::Invalid(format!("not a TaskNotification: {e}")))
        .and_then(Notification::into_update)
        .and_then(|(update, output)| {
            if let (true, Some(m)) = (output.not_json, metrics) {
                m.output_not_json(update.task_type.as_deref());
            }
            // Conductor's own word on its task: an odd field is dropped, not the transition
            update.validate_from_engine()
        })
        .map_err(|rejection| ItemError {
            task_id: task_id(),
            rejection,
        })
}

#[derive(Clone)]
struct WebhookState {
    pipeline: Arc<Pipeline>,
    max_body_bytes: ByteSize,
    metrics: WebhookMetrics,
}

/// The webhook's route, to be served under `/api/v1` (behind the token, like the core's API).
pub fn routes(
    pipeline: Arc<Pipeline>,
    max_body_bytes: ByteSize,
    metrics: WebhookMetrics,
) -> Router {
    Router::new()
        .route("/conductor/task-status", post(task_status))
        .with_state(WebhookState {
            pipeline,
            max_body_bytes,
            metrics,
        })
}

/// `POST /api/v1/conductor/task-status`.
async fn task_status(
    State(s): State<WebhookState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(s.max_body_bytes, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = s.pipeline.admit() {
        return e.into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (text, charset) = match decode(content_type, &body) {
        Ok(decoded) => decoded,
        Err(e) => return e.into_response(),
    };
    let items = match notifications(&text, Some(&s.metrics)) {
        Ok(items) => items,
        Err(e) => return bad_body(&e),
    };
    s.metrics.body(charset);
    submit(&s.pipeline, items, SOURCE).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    #[test]
    fn a_task_notification_becomes_an_update() {
        let body = br#"{"workflowId":"wf-1","workflowType":"media","correlationId":"c",
            "scheduledTime":"2026-11-21T10:00:00.000Z","startTime":"2026-11-21T10:00:01.500Z",
            "updateTime":"2026-11-21T10:00:05.250Z","endTime":"1970-01-01T00:00:00.000Z",
            "status":"IN_PROGRESS","executionTime":0,"queueWaitTime":1500,
            "taskDefName":"encode","taskType":"encode","input":"{\"file\":\"a.mp4\"}",
            "output":"{\"progress\":40,\"progressMessage\":\"chunk 4/10\",\"other\":[1,2]}",
            "taskId":"t-1","workflowPriority":0,"workflowTaskType":"SIMPLE",
            "referenceTaskName":"encode_ref","retryCount":1,"taskDescription":"d"}"#;
        let items = parse_notifications(body).unwrap();
        let u = items[0].parsed.as_ref().unwrap();
        assert_eq!(u.task_id, "t-1");
        assert_eq!(u.workflow_id, "wf-1");
        assert_eq!(u.task_type.as_deref(), Some("encode"));
        assert_eq!(u.status, Status::InProgress);
        assert_eq!(u.progress, Some(40.0));
        assert_eq!(u.progress_message.as_deref(), Some("chunk 4/10"));
        assert_eq!(u.retry_count, Some(1));
        assert_eq!(u.reference_task_name.as_deref(), Some("encode_ref"));
        assert_eq!(u.start_time, Some(1_795_255_201_500));
        assert_eq!(u.update_time, Some(1_795_255_205_250));
    }

    #[test]
    fn bad_notifications_are_rejected_one_by_one() {
        let body = br#"[{"taskId":"a","workflowId":"w","taskType":"t","status":"COMPLETED","output":"not json"},
                        {"taskId":"b","workflowId":"w","taskType":"t","status":"COMPLETED","updateTime":"yesterday"},
                        {"taskId":"c","workflowId":"w","taskType":"t","status":"RUNNING"},
                        {"taskId":"d","workflowId":"w","taskType":"t","status":"IN_PROGRESS","output":"{\"progress\":400}"}]"#;
        let items = parse_notifications(body).unwrap();
        assert!(
            items[0].parsed.is_ok(),
            "output that isn't a map carries no progress"
        );
        let reason = |i: usize| items[i].parsed.as_ref().unwrap_err().rejection.reason();
        assert!(reason(1).contains("updateTime"), "{}", reason(1));
        assert!(reason(2).contains("status"), "{}", reason(2));
        // the engine's transition is taken; the progress it cannot be is dropped and noted
        let d = items[3]
            .parsed
            .as_ref()
            .expect("taken without its progress");
        assert_eq!((d.status, d.progress), (Status::InProgress, None));
        assert_eq!(d.adjusted.len(), 1, "{:?}", d.adjusted);
        assert_eq!(
            items[1].parsed.as_ref().unwrap_err().task_id.as_deref(),
            Some("b")
        );
        assert!(parse_notifications(b"{oops").is_err());
        assert!(parse_notifications(b"42").is_err());
    }

    #[test]
    fn iso_times_are_epoch_ms_and_1970_is_not_set() {
        let ms = 1_748_772_002_300; // 2025-06-01T10:00:02.300Z
        assert_eq!(
            epoch_ms("t", Some("2025-06-01T10:00:02.300Z")).ok(),
            Some(Some(ms))
        );
        assert_eq!(
            epoch_ms("t", Some("2025-06-01T10:00:02.300")).ok(),
            Some(Some(ms))
        );
        assert_eq!(
            epoch_ms("t", Some("2025-06-01T10:00:02Z")).ok(),
            Some(Some(ms - 300))
        );
        assert_eq!(
            epoch_ms("t", Some("1970-01-01T00:00:00.000Z")).ok(),
            Some(None)
        );
        let last = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        assert_eq!(
            epoch_ms("t", Some("9999-12-31T23:59:59.999Z")).ok(),
            Some(Some(last))
        );
        assert_eq!(epoch_ms("t", Some("")).ok(), Some(None));
        assert_eq!(epoch_ms("t", None).ok(), Some(None));
        assert!(epoch_ms("t", Some("yesterday")).is_err());
        assert!(epoch_ms("t", Some("2025-13-01T10:00:00Z")).is_err());
    }

    #[test]
    fn a_terminal_notification_is_timed_by_its_end() {
        let body = br#"{"taskId":"t","workflowId":"w","taskType":"t","status":"COMPLETED",
            "updateTime":"2026-11-21T10:00:01.000Z","endTime":"2026-11-21T10:00:09.000Z"}"#;
        let items = parse_notifications(body).unwrap();
        let u = items[0].parsed.as_ref().unwrap();
        assert_eq!(u.update_time, Some(1_795_255_209_000));
        let body = br#"{"taskId":"t","workflowId":"w","taskType":"t","status":"IN_PROGRESS",
            "updateTime":"2026-11-21T10:00:01.000Z","endTime":"1970-01-01T00:00:00.000Z"}"#;
        let items = parse_notifications(body).unwrap();
        assert_eq!(
            items[0].parsed.as_ref().unwrap().update_time,
            Some(1_795_255_201_000)
        );
        // CANCELED with its workflow, published before the write that sets `endTime`
        let body = br#"{"taskId":"t","workflowId":"w","taskType":"t","status":"CANCELED",
            "updateTime":"2026-11-21T10:00:01.000Z","endTime":"1970-01-01T00:00:00.000Z"}"#;
        let items = parse_notifications(body).unwrap();
        assert_eq!(items[0].parsed.as_ref().unwrap().update_time, None);
        // a body without `endTime` at all (not Conductor's) keeps its `updateTime`
        let body = br#"{"taskId":"t","workflowId":"w","taskType":"t","status":"CANCELED",
            "updateTime":"2026-11-21T10:00:01.000Z"}"#;
        let items = parse_notifications(body).unwrap();
        assert_eq!(
            items[0].parsed.as_ref().unwrap().update_time,
            Some(1_795_255_201_000)
        );
        let body = br#"{"taskId":"t","workflowId":"w","taskType":"t","status":"FAILED",
            "endTime":"soon"}"#;
        let items = parse_notifications(body).unwrap();
        let reason = items[0].parsed.as_ref().unwrap_err().rejection.reason();
        assert!(reason.contains("endTime"), "{reason}");
    }

    #[test]
    fn bodies_are_decoded_by_their_declared_or_sniffed_charset() {
        let utf8 = "café".as_bytes();
        let latin1 = b"caf\xe9";
        assert_eq!(sniff(utf8), (Cow::Borrowed(utf8), Charset::Utf8));
        assert_eq!(sniff(latin1).0.as_ref(), utf8);
        assert_eq!(sniff(latin1).1, Charset::Latin1);
        // Latin-1 covers every byte, the C1 range included (Java writes U+0080 as 0x80).
        let all: Vec<u8> = (0..=255).collect();
        let text = String::from_utf8(sniff(&all).0.into_owned()).unwrap();
        assert!(text.chars().map(u32::from).eq(0..=255));

        let decoded = |ct: &str, body: &'static [u8]| decode(Some(ct), body);
        assert_eq!(
            decoded("application/json; charset=ISO-8859-1", utf8).unwrap(),
            (Cow::Owned("cafÃ©".as_bytes().to_vec()), Charset::Latin1)
        );
        assert_eq!(
            decoded("application/json;Charset=\"latin1\"", latin1)
                .unwrap()
                .1,
            Charset::Latin1
        );
        assert_eq!(
            decoded("application/json; charset=utf-8", latin1),
            Err(CharsetError::NotUtf8(3))
        );
        assert_eq!(
            decoded("application/json; charset=windows-1252", latin1),
            Err(CharsetError::Unsupported("windows-1252".into()))
        );
        assert_eq!(
            decoded("application/json", latin1).unwrap().1,
            Charset::Latin1
        );
        assert_eq!(
            decoded("text/plain; format=flowed", utf8).unwrap().1,
            Charset::Utf8
        );
    }

    #[test]
    fn a_java_tostring_output_is_noted_not_rejected() {
        let o = output(Some("{progress=40, progressMessage=chunk 4/10}"));
        assert!(o.not_json && o.progress.is_none());
        let o = output(Some(r#"{"progress":40}"#));
        assert!(!o.not_json);
        assert_eq!(o.progress.unwrap().progress, Some(40.0));
        assert!(!output(Some("{}")).not_json);
        assert!(!output(None).not_json);
        // JSON with a progress field of the wrong type is not `toString()`: the validation
        // judges it, as it judges any engine row (the field goes, the transition stays)
        let o = output(Some(r#"{"progressPercent":"ninety"}"#));
        assert!(!o.not_json);
        let body = br#"{"taskId":"t","workflowId":"w","taskType":"t","status":"IN_PROGRESS",
            "output":"{\"progressPercent\":\"ninety\"}"}"#;
        let items = parse_notifications(body).unwrap();
        let u = items[0].parsed.as_ref().expect("taken");
        assert_eq!(u.progress, None);
        assert_eq!(u.adjusted[0].field, "progress");
    }
}
