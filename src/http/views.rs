//! JSON shapes of the read API. Times are epoch milliseconds, like Conductor's.

use serde::Serialize;

use crate::model::TaskRecord;

/// One tracked task as the read API shows it: the record plus what is derived from it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView<'a> {
    #[serde(flatten)]
    pub record: &'a TaskRecord,
    /// The attempt number: Conductor's `retryCount`, 0 for the first.
    pub attempt: i32,
    /// When the task times out, where known.
    pub deadline: Option<i64>,
    /// Estimated finish from the progress rate, where the rate allows one.
    pub predicted_completion: Option<i64>,
    /// The predicted completion is past the deadline.
    pub predicted_late: bool,
    /// In flight, and its progress hasn't changed for `--stall-after`.
    pub stalled: bool,
}

impl<'a> TaskView<'a> {
    pub fn new(
        r: &'a TaskRecord,
        predicted_completion: Option<i64>,
        now: i64,
        stall_after_ms: i64,
    ) -> TaskView<'a> {
        TaskView {
            record: r,
            attempt: r.retry_count.unwrap_or(0),
            deadline: r.deadline_ms(),
            predicted_completion,
            predicted_late: r.predicted_late(predicted_completion),
            stalled: r.is_in_flight() && r.progress_stalled(now, stall_after_ms),
        }
    }
}
