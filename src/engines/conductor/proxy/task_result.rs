//! Reading a TaskResult (the body of a worker's update) as the proxy needs it, and answering
//! one without the engine.

use std::borrow::Cow;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::model::Status;

/// What taskpulse reads from a TaskResult.
pub(super) struct TaskResult {
    pub(super) task_id: String,
    pub(super) status: Option<Status>,
    pub(super) extend_lease: bool,
    pub(super) workflow_id: String,
}

/// Moves top-level progress fields into `outputData` (the engine only keeps `outputData`) and
/// reads what the proxy needs. `None` when the body is not a TaskResult object.
pub(super) fn normalize(v: &mut Value) -> Option<TaskResult> {
    let obj = v.as_object_mut()?;
    let mut moved = Map::new();
    for key in ["progressPercent", "progress", "progressMessage"] {
        if let Some(val) = obj.remove(key) {
            moved.insert(key.to_string(), val);
        }
    }
    if !moved.is_empty() {
        let output = obj
            .entry("outputData")
            .or_insert_with(|| Value::Object(Map::new()));
        if !output.is_object() {
            *output = Value::Object(Map::new());
        }
        if let Some(out) = output.as_object_mut() {
            for (k, val) in moved {
                out.entry(k).or_insert(val);
            }
        }
    }
    Some(TaskResult {
        task_id: obj.get("taskId")?.as_str()?.to_string(),
        status: obj
            .get("status")
            .and_then(Value::as_str)
            .and_then(Status::parse),
        extend_lease: obj
            .get("extendLease")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        workflow_id: obj
            .get("workflowInstanceId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Statuses a TaskResult may carry (`TaskResult.java:37-43` @ b54f0d4e); the engine refuses
/// (500) a body with any other.
const RESULT_STATUSES: [&str; 5] = [
    "IN_PROGRESS",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "COMPLETED",
    "CANCELED",
];

/// A lease heartbeat (`extendLease: true`) is read by the engine for its `taskId` only,
/// whatever status it carries: the task keeps its status and only its `updateTime` moves
/// (`WorkflowExecutorOps.java:924-927,1139-1165` @ b54f0d4e). So one that says COMPLETED is
/// taken as what it does, an IN_PROGRESS with progress: never an outcome taskpulse would then
/// guard (and so keep the task's later updates from the engine) or expect the engine to hold.
/// Returns the value to record; the body forwarded stays the worker's.
pub(super) fn lease_as_progress<'a>(result: &mut TaskResult, value: &'a Value) -> Cow<'a, Value> {
    let status = value.get("status").and_then(Value::as_str);
    let readable = status.is_some_and(|s| RESULT_STATUSES.contains(&s));
    if !result.extend_lease || !readable || status == Some("IN_PROGRESS") {
        return Cow::Borrowed(value);
    }
    result.status = Some(Status::InProgress);
    let mut recorded = value.clone();
    if let Some(obj) = recorded.as_object_mut() {
        obj.insert("status".into(), Value::from("IN_PROGRESS"));
    }
    Cow::Owned(recorded)
}

/// The proxy's reading of a TaskResult, exposed for the fuzzer and tests: the body read as
/// `update` reads it (`serde_json::from_slice`, then `normalize`), the normalized value run
/// through the update validation it is recorded with, and what the proxy decides on: the task
/// id, the status and `extendLease`. `None` when the body is not a TaskResult object.
pub fn inspect_task_result(body: &[u8]) -> Option<(String, Option<Status>, bool)> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let result = normalize(&mut value)?;
    let _ = crate::ingest::parse_value(&value);
    Some((result.task_id, result.status, result.extend_lease))
}

/// The engine's answer to an update it accepted, given by taskpulse itself: the task id as text
/// for `POST /api/tasks`, and for `update-v2` a 204 (the SDK reads it as "no next task").
pub(super) fn local_answer(task_id: &str, v2: bool) -> Response {
    if v2 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            task_id.to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn top_level_progress_moves_into_output_data() {
        let mut v = json!({"taskId": "t", "workflowInstanceId": "w", "status": "IN_PROGRESS",
                           "progressPercent": 40, "progressMessage": "m", "extendLease": true,
                           "outputData": {"progressPercent": 10, "keep": 1}});
        let r = normalize(&mut v).unwrap();
        assert_eq!(r.task_id, "t");
        assert_eq!(r.workflow_id, "w");
        assert!(r.extend_lease);
        assert_eq!(r.status, Some(Status::InProgress));
        assert!(v.get("progressPercent").is_none());
        // the worker's own outputData wins over a top-level duplicate
        assert_eq!(
            v["outputData"],
            json!({"progressPercent": 10, "keep": 1, "progressMessage": "m"})
        );
        let mut v = json!({"taskId": "t", "status": "COMPLETED", "progress": 100});
        normalize(&mut v).unwrap();
        assert_eq!(v["outputData"], json!({"progress": 100}));
        assert!(normalize(&mut json!([1, 2])).is_none());
        assert!(normalize(&mut json!({"status": "COMPLETED"})).is_none());
    }

    #[test]
    fn a_heartbeat_is_progress_whatever_status_it_says() {
        let v = json!({"taskId": "t", "status": "COMPLETED", "extendLease": true});
        let mut r = normalize(&mut v.clone()).unwrap();
        let recorded = lease_as_progress(&mut r, &v);
        assert_eq!(r.status, Some(Status::InProgress));
        assert_eq!(recorded["status"], "IN_PROGRESS");
        // not a heartbeat, or a status the engine refuses: as it is
        for v in [
            json!({"taskId": "t", "status": "COMPLETED"}),
            json!({"taskId": "t", "status": "TIMED_OUT", "extendLease": true}),
        ] {
            let mut r = normalize(&mut v.clone()).unwrap();
            let before = r.status;
            assert_eq!(*lease_as_progress(&mut r, &v), v);
            assert_eq!(r.status, before);
        }
    }

    #[test]
    fn a_task_result_is_read_as_the_proxy_reads_it() {
        let body = br#"{"taskId":"t","workflowInstanceId":"w","status":"IN_PROGRESS",
                        "extendLease":true,"progressPercent":40}"#;
        assert_eq!(
            inspect_task_result(body),
            Some(("t".to_string(), Some(Status::InProgress), true))
        );
        assert_eq!(
            inspect_task_result(br#"{"taskId":"t","status":"BOGUS"}"#),
            Some(("t".to_string(), None, false))
        );
        assert_eq!(inspect_task_result(b"not json"), None);
        assert_eq!(inspect_task_result(b"[1,2]"), None);
        assert_eq!(inspect_task_result(br#"{"taskId":7}"#), None);
    }
}
