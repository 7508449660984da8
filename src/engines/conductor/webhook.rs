//! Conductor's task status webhook: `POST /api/v1/conductor/task-status`.
//!
//! With `conductor.task-status-listener.type=task_publisher`, Conductor POSTs a
//! TaskNotification to `{conductor.status-notifier.notification.url}/{endpointTask}` on every
//! task status change. Operators point it here with
//! `conductor.status-notifier.notification.url=http://<taskpulse>/api/v1/conductor` and
//! `conductor.status-notifier.notification.endpointTask=task-status`.
//!
//! A notification is a TaskSummary (times as ISO strings `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`,
//! `input`/`output` as JSON strings) plus `workflowTaskType`, `referenceTaskName`,
//! `retryCount` and `taskDescription`. It is turned into an ordinary update (progress read from
//! inside the output string) and goes through the same lifecycle and throttle as everything
//! else, counted with `source="conductor_webhook"`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytesize::ByteSize;
use serde::Deserialize;
use serde_json::Value;

use crate::http::{body::read_body, ingest};
use crate::ingest::{BodyError, Item, ItemError, OutputProgress, RawUpdate};
use crate::lifecycle::Rejection;
use crate::pipeline::Pipeline;

/// `source` label of updates from the webhook.
pub const SOURCE: &str = "conductor_webhook";

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
    /// The task's output map, serialized as a JSON string.
    output: Option<String>,
}

/// ISO time string to epoch ms; Conductor writes 0 (1970) for "not set".
fn epoch_ms(field: &str, iso: Option<&str>) -> Result<Option<i64>, Rejection> {
    let Some(iso) = iso.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let t = humantime::parse_rfc3339_weak(iso.trim_end_matches('Z'))
        .map_err(|e| Rejection::Invalid(format!("`{field}` is not an ISO time ({e}): {iso:?}")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok((ms > 0).then_some(ms))
}

impl Notification {
    /// The notification in taskpulse's update shape, for the ordinary validation.
    fn into_update(self) -> Result<RawUpdate, Rejection> {
        Ok(RawUpdate {
            start_time: epoch_ms("startTime", self.start_time.as_deref())?,
            update_time: epoch_ms("updateTime", self.update_time.as_deref())?,
            output_data: progress_from_output(self.output.as_deref())?,
            task_id: self.task_id,
            workflow_id: self.workflow_id,
            workflow_type: self.workflow_type,
            task_type: self.task_type,
            task_def_name: self.task_def_name,
            reference_task_name: self.reference_task_name,
            retry_count: self.retry_count,
            status: self.status,
            ..RawUpdate::default()
        })
    }
}

/// Progress from inside the output string. Only a JSON map can carry progress: anything else
/// in `output` is not ours to judge, but a progress field of the wrong type is rejected, as in
/// any other update.
fn progress_from_output(output: Option<&str>) -> Result<Option<OutputProgress>, Rejection> {
    let Some(output) = output.filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    match serde_json::from_str::<OutputProgress>(output) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(Rejection::Invalid(format!("`output`: {e}")))
        }
        Err(_) => Ok(None),
    }
}

/// Parses a webhook body: one notification, or an array of them, each only when it is taken
/// (a large body costs its bytes and a small index, not a parsed tree of every notification).
pub fn notifications(body: &[u8]) -> Result<impl Iterator<Item = Item> + '_, BodyError> {
    Ok(crate::ingest::values(body)
        .map_err(|mut e| {
            if e.message.starts_with("expected a JSON object or an array") {
                e.message = "expected a TaskNotification object or an array of them".into();
            }
            e
        })?
        .map(|(index, text)| Item {
            index,
            parsed: notification(text),
        }))
}

/// Parses a webhook body at once (tests and the fuzzer).
pub fn parse_notifications(body: &[u8]) -> Result<Vec<Item>, BodyError> {
    Ok(notifications(body)?.collect())
}

/// One notification, validated as an update.
fn notification(text: &str) -> Result<crate::ingest::TaskUpdate, ItemError> {
    let task_id = || {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("taskId").and_then(Value::as_str).map(str::to_string))
    };
    serde_json::from_str::<Notification>(text)
        .map_err(|e| Rejection::Invalid(format!("not a TaskNotification: {e}")))
        .and_then(Notification::into_update)
        .and_then(RawUpdate::validate)
        .map_err(|rejection| ItemError {
            task_id: task_id(),
            rejection,
        })
}

#[derive(Clone)]
struct WebhookState {
    pipeline: Arc<Pipeline>,
    max_body_bytes: ByteSize,
}

/// The webhook's route, to be served under `/api/v1` (behind the token, like the core's API).
pub fn routes(pipeline: Arc<Pipeline>, max_body_bytes: ByteSize) -> Router {
    Router::new()
        .route("/conductor/task-status", post(task_status))
        .with_state(WebhookState {
            pipeline,
            max_body_bytes,
        })
}

/// `POST /api/v1/conductor/task-status`.
async fn task_status(
    State(s): State<WebhookState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(s.max_body_bytes, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = s.pipeline.admit() {
        return e.into_response();
    }
    let items = match notifications(&body) {
        Ok(items) => items,
        Err(e) => return ingest::bad_body(&e),
    };
    ingest::submit(&s.pipeline, items, SOURCE).await
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
        assert!(reason(3).contains("progress"), "{}", reason(3));
        assert_eq!(
            items[1].parsed.as_ref().unwrap_err().task_id.as_deref(),
            Some("b")
        );
        assert!(parse_notifications(b"{oops").is_err());
        assert!(parse_notifications(b"42").is_err());
    }
}
