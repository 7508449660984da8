//! What the emulator stores and answers (Conductor's Task JSON), what a test schedules
//! ([`TaskSpec`]), and what it records of each request ([`Recorded`]).
//!
//! Citations are conductor-oss/conductor at b54f0d4e; `COMMON` = `common/src/main/java/com/
//! netflix/conductor/common/`, `CORE` = `core/src/main/java/com/netflix/conductor/`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Task statuses that are terminal (`COMMON/metadata/tasks/Task.java:36-48`,
/// `CORE/model/TaskModel.java:35-44`).
pub const TERMINAL: &[&str] = &[
    "COMPLETED",
    "COMPLETED_WITH_ERRORS",
    "SKIPPED",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "TIMED_OUT",
    "CANCELED",
];

/// Statuses a TaskResult may carry (`COMMON/metadata/tasks/TaskResult.java:37-43`); Jackson
/// refuses any other name when it reads the body.
pub const RESULT_STATUSES: &[&str] = &[
    "IN_PROGRESS",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "COMPLETED",
    "CANCELED",
];

/// Task types the engine registers as system tasks (`SystemTaskRegistry.isSystemTask`,
/// `CORE/core/execution/tasks/SystemTaskRegistry.java:62-64`): the `WorkflowSystemTask`
/// components of core (`CORE/core/execution/tasks/*.java`, each `super(TASK_TYPE_...)`) and of
/// the http-task and json-jq-task modules. A worker's IN_PROGRESS update stays IN_PROGRESS
/// for these and becomes SCHEDULED for every other type
/// (`CORE/core/execution/WorkflowExecutorOps.java:977-982`).
pub const SYSTEM_TASK_TYPES: &[&str] = &[
    "WAIT",
    "HUMAN",
    "EVENT",
    "SUB_WORKFLOW",
    "START_WORKFLOW",
    "JOIN",
    "EXCLUSIVE_JOIN",
    "FORK",
    "DECISION",
    "SWITCH",
    "DO_WHILE",
    "TERMINATE",
    "SET_VARIABLE",
    "LAMBDA",
    "INLINE",
    "NOOP",
    "HTTP",
    "JSON_JQ_TRANSFORM",
];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

pub fn is_system_task(task_type: &str) -> bool {
    SYSTEM_TASK_TYPES.contains(&task_type)
}

pub(super) fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A task as the emulator stores it and answers it (Conductor's Task JSON,
/// `COMMON/metadata/tasks/Task.java:75-225`; null fields are omitted, as the server's
/// ObjectMapper does, `COMMON/config/ObjectMapperConfiguration.java:33-36`).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmuTask {
    pub task_id: String,
    pub task_type: String,
    pub task_def_name: String,
    pub reference_task_name: String,
    pub status: String,
    pub seq: i64,
    pub iteration: i64,
    pub retry_count: i64,
    pub poll_count: i64,
    pub workflow_instance_id: String,
    pub workflow_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    pub scheduled_time: i64,
    pub start_time: i64,
    pub end_time: i64,
    pub update_time: i64,
    pub callback_after_seconds: i64,
    pub response_timeout_seconds: i64,
    pub input_data: Map<String, Value>,
    pub output_data: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_for_incompletion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_workflow_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// What to schedule with [`super::Emulator::start_task`]. Defaults: workflow `wf-<n>` of type
/// `media`, reference name `<type>_ref`, seq `n`, iteration 0, responseTimeoutSeconds 60.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub task_type: String,
    pub input: Value,
    pub response_timeout_seconds: i64,
    pub workflow_instance_id: Option<String>,
    pub workflow_type: String,
    pub reference_task_name: Option<String>,
    pub seq: Option<i64>,
    pub iteration: i64,
}

impl TaskSpec {
    pub fn new(task_type: &str) -> TaskSpec {
        TaskSpec {
            task_type: task_type.into(),
            input: json!({}),
            response_timeout_seconds: 60,
            workflow_instance_id: None,
            workflow_type: "media".into(),
            reference_task_name: None,
            seq: None,
            iteration: 0,
        }
    }
    pub fn input(mut self, input: Value) -> TaskSpec {
        self.input = input;
        self
    }
    pub fn response_timeout(mut self, seconds: i64) -> TaskSpec {
        self.response_timeout_seconds = seconds;
        self
    }
    pub fn workflow(mut self, workflow_instance_id: &str, workflow_type: &str) -> TaskSpec {
        self.workflow_instance_id = Some(workflow_instance_id.into());
        self.workflow_type = workflow_type.into();
        self
    }
    pub fn reference(mut self, name: &str, seq: i64, iteration: i64) -> TaskSpec {
        self.reference_task_name = Some(name.into());
        self.seq = Some(seq);
        self.iteration = iteration;
        self
    }

    /// The task this spec schedules: SCHEDULED, `scheduledTime` and `updateTime` now.
    pub(super) fn into_task(self, id: String, n: u64) -> EmuTask {
        let ms = epoch_ms();
        EmuTask {
            task_id: id,
            task_def_name: self.task_type.clone(),
            reference_task_name: self
                .reference_task_name
                .unwrap_or_else(|| format!("{}_ref", self.task_type)),
            task_type: self.task_type,
            status: "SCHEDULED".into(),
            seq: self.seq.unwrap_or(n as i64),
            iteration: self.iteration,
            workflow_instance_id: self.workflow_instance_id.unwrap_or(format!("wf-{n:04}")),
            workflow_type: self.workflow_type,
            scheduled_time: ms,
            update_time: ms,
            response_timeout_seconds: self.response_timeout_seconds,
            input_data: self.input.as_object().cloned().unwrap_or_default(),
            ..EmuTask::default()
        }
    }
}

/// One request as it reached the emulator.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The body parsed as JSON; `Null` when empty, a JSON string when it is not JSON.
    pub body: Value,
    /// Header names (lower case) and values.
    pub headers: BTreeMap<String, String>,
    pub at_ms: i64,
}

impl Recorded {
    /// A task update (either endpoint).
    pub fn is_update(&self) -> bool {
        self.method == "POST" && (self.path == "/api/tasks" || self.path == "/api/tasks/update-v2")
    }
    /// A lease heartbeat: an update with `extendLease: true`.
    pub fn is_heartbeat(&self) -> bool {
        self.is_update() && self.body["extendLease"] == json!(true)
    }
    /// A poll (either endpoint).
    pub fn is_poll(&self) -> bool {
        self.method == "GET" && self.path.starts_with("/api/tasks/poll/")
    }
}
