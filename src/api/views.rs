//! JSON shapes of the read API. Times are epoch milliseconds, like Conductor's.

use std::sync::Arc;

use serde::Serialize;

use crate::lifecycle::Status;
use crate::store::TaskRecord;

/// One tracked task as `GET /api/v1/tasks` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub task_id: Arc<str>,
    pub workflow_id: Arc<str>,
    pub workflow_type: Option<Arc<str>>,
    pub task_type: Arc<str>,
    pub reference_task_name: Option<Arc<str>>,
    pub seq: Option<i32>,
    pub iteration: Option<i32>,
    pub retry_count: Option<i32>,
    /// The attempt number: Conductor's `retryCount`, 0 for the first.
    pub attempt: i32,
    pub status: Status,
    pub progress_percent: Option<f32>,
    pub progress_message: Option<Arc<str>>,
    pub worker_id: Option<Arc<str>>,
    pub start_time: Option<i64>,
    pub update_time: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub response_timeout_seconds: Option<i64>,
    /// When the task times out, where known.
    pub deadline: Option<i64>,
    /// Estimated finish from the progress rate (timeout prediction; null until known).
    pub predicted_completion: Option<i64>,
    pub wait_until: Option<i64>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub progress_changed: i64,
    pub stalled: bool,
}

impl TaskView {
    pub fn new(r: &TaskRecord, now: i64, stall_after_ms: i64) -> TaskView {
        TaskView {
            task_id: r.task_id.clone(),
            workflow_id: r.workflow_id.clone(),
            workflow_type: r.workflow_type.clone(),
            task_type: r.task_type.clone(),
            reference_task_name: r.reference_task_name.clone(),
            seq: r.seq,
            iteration: r.iteration,
            retry_count: r.retry_count,
            attempt: r.retry_count.unwrap_or(0),
            status: r.status,
            progress_percent: r.progress,
            progress_message: r.progress_message.clone(),
            worker_id: r.worker_id.clone(),
            start_time: r.start_time,
            update_time: r.update_time,
            timeout_seconds: r.timeout_seconds,
            response_timeout_seconds: r.response_timeout_seconds,
            deadline: r.deadline_ms(),
            predicted_completion: None,
            wait_until: r.wait_until,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            progress_changed: r.progress_changed,
            stalled: r.is_in_flight()
                && r.progress.is_some()
                && now - r.progress_changed >= stall_after_ms,
        }
    }
}
