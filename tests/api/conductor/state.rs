//! The emulator's state and the engine's rules for what a poll and a task update do to it.
//!
//! Every rule is the engine's, read in conductor-oss/conductor at b54f0d4e (`CORE` =
//! `core/src/main/java/com/netflix/conductor/`, `COMMON` =
//! `common/src/main/java/com/netflix/conductor/common/`); `Ops` below is
//! `CORE/core/execution/WorkflowExecutorOps.java`, `Facade` is
//! `CORE/core/dal/ExecutionDAOFacade.java`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::spec::{epoch_ms, is_system_task, is_terminal, EmuTask, Recorded, RESULT_STATUSES};

/// A TaskResult as the engine's Jackson reads it (`COMMON/metadata/tasks/TaskResult.java:36-94`;
/// unknown fields ignored, `COMMON/config/ObjectMapperBuilderConfiguration.java:28-33`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TaskResultIn {
    task_id: Option<String>,
    workflow_instance_id: Option<String>,
    status: Option<String>,
    #[serde(default)]
    output_data: Option<Map<String, Value>>,
    worker_id: Option<String>,
    /// A Java `long`: absent or null reads as 0.
    callback_after_seconds: Option<i64>,
    reason_for_incompletion: Option<String>,
    sub_workflow_id: Option<String>,
    #[serde(default)]
    logs: Option<Vec<Value>>,
    /// A Java `boolean`: absent or null reads as false.
    #[serde(default)]
    extend_lease: Option<bool>,
}

/// Why the engine refuses an update; the route turns it into the engine's HTTP status.
pub(super) enum Refusal {
    /// Jackson cannot read the body (not JSON, a wrong type, a status that is not a TaskResult
    /// status): an exception the mapper does not list, so a 500.
    Unreadable(String),
    /// `taskId` or `workflowInstanceId` missing or empty (`@NotEmpty`, `TaskResult.java:45-51`).
    Invalid,
    /// No such task (`NotFoundException`, `Ops:932-938`, `:1140-1146`): 404.
    NotFound(String),
    /// No `status` on an update to a task that is not terminal: `taskResult.getStatus().name()`
    /// throws a NullPointerException (`Ops:977-982`), a 500.
    NoStatus,
}

/// An update the engine took (applied, ignored or, with the fault switch, lost).
pub(super) struct Taken {
    pub task_type: String,
    /// The task is terminal after the call: update-v2 then answers the next task
    /// (`REST/controllers/TaskResource.java:98-113`). Never for a heartbeat (`Ops:924-927`
    /// returns null, so update-v2 answers 204).
    pub terminal_after: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub tasks: BTreeMap<String, EmuTask>,
    /// Queue messages, in order: (task id, due).
    pub queue: Vec<(String, Instant)>,
    /// Every status the store held, per task, in order.
    pub history: HashMap<String, Vec<String>>,
    /// The task as it was just before its terminal write: what a writer that read it earlier
    /// writes back (the stale writer).
    pub before_terminal: HashMap<String, EmuTask>,
    pub logs: HashMap<String, Vec<Value>>,
    pub requests: Vec<Recorded>,
    pub decides: Vec<String>,
    pub conflicts: u64,
    pub lost: Vec<Value>,
    pub stale_writes: u64,
    pub next: u64,
    // switches
    pub stale_writer: bool,
    pub lose_next_completion: bool,
    pub fail_with: Option<u16>,
    pub delay: Option<Duration>,
    pub no_update_v2: bool,
    /// Status every `GET /api/tasks/{taskId}` answers with, until `Emulator::heal`.
    pub fail_lookups: Option<u16>,
    /// `(header, value)` every request must carry, else 403 (an engine with auth on).
    pub require: Option<(String, String)>,
}

/// `StringUtils.substring(reason, 0, 500)` in the setter Jackson reads the body through
/// (`TaskResult.java:149-151`): the first 500 UTF-16 code units of a Java String. A cut through
/// a surrogate pair leaves half a character in Java; a Rust string cannot hold it, so the
/// emulator drops that half (what the engine then writes is unverified).
pub fn cut_reason(reason: &str) -> String {
    let mut units = 0;
    reason
        .chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= 500
        })
        .collect()
}

/// Reads a TaskResult as Jackson and the validation do.
pub(super) fn read_result(body: &[u8]) -> Result<TaskResultIn, Refusal> {
    let r: TaskResultIn =
        serde_json::from_slice(body).map_err(|e| Refusal::Unreadable(e.to_string()))?;
    if let Some(s) = r.status.as_deref().filter(|s| !RESULT_STATUSES.contains(s)) {
        return Err(Refusal::Unreadable(format!(
            "Cannot deserialize TaskResult.Status from {s:?}"
        )));
    }
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if !present(&r.task_id) || !present(&r.workflow_instance_id) {
        return Err(Refusal::Invalid);
    }
    Ok(r)
}

impl State {
    pub fn set_status(&mut self, id: &str, status: &str) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.status = status.into();
        }
        self.history
            .entry(id.into())
            .or_default()
            .push(status.into());
    }

    /// Takes up to `count` due tasks of a type and marks them polled, as
    /// `CORE/service/ExecutionService.java:179-189` does: IN_PROGRESS, `startTime` now if 0,
    /// `callbackAfterSeconds` 0, `workerId` = the poll's (null without one), `pollCount + 1`,
    /// and `updateTime` now (`Facade:552-561`).
    pub fn poll(&mut self, task_type: &str, worker_id: Option<&str>, count: usize) -> Vec<EmuTask> {
        let now = Instant::now();
        let mut taken = Vec::new();
        let mut i = 0;
        while i < self.queue.len() && taken.len() < count {
            let (id, due) = &self.queue[i];
            let ready = *due <= now
                && self
                    .tasks
                    .get(id)
                    .is_some_and(|t| t.task_type == task_type && t.status == "SCHEDULED");
            if ready {
                taken.push(self.queue.remove(i).0);
            } else {
                i += 1;
            }
        }
        let ms = epoch_ms();
        let mut out = Vec::new();
        for id in taken {
            self.set_status(&id, "IN_PROGRESS");
            if let Some(t) = self.tasks.get_mut(&id) {
                t.poll_count += 1;
                if t.start_time == 0 {
                    t.start_time = ms;
                }
                t.callback_after_seconds = 0;
                t.worker_id = worker_id.map(Into::into);
                t.update_time = ms;
                out.push(t.clone());
            }
        }
        out
    }

    /// `WorkflowExecutorOps.updateTask` (`Ops:921-1110`) on a result [`read_result`] took.
    /// `raw` is the body, kept when the fault switch loses the update.
    pub fn update(&mut self, r: TaskResultIn, raw: &[u8]) -> Result<Taken, Refusal> {
        let id = r.task_id.clone().unwrap_or_default();
        let Some(stored) = self.tasks.get(&id) else {
            return Err(Refusal::NotFound(id));
        };
        let task_type = stored.task_type.clone();
        let stored_terminal = is_terminal(&stored.status);
        if r.extend_lease == Some(true) {
            self.extend_lease(&id, stored_terminal);
            return Ok(Taken {
                task_type,
                terminal_after: false,
            });
        }
        let status = r.status.clone();
        if status.as_deref().is_some_and(is_terminal) && self.lose_next_completion {
            self.lose_next_completion = false;
            self.lost
                .push(serde_json::from_slice(raw).unwrap_or(Value::Null));
            return Ok(Taken {
                task_type,
                terminal_after: true,
            });
        }
        if stored_terminal && !self.stale_overwrite(&id, status.as_deref()) {
            // Ops:944-956: queue message removed, task_update_conflict counted, logs dropped,
            // the stored task returned unchanged (terminal, so update-v2 hands out a next task)
            self.queue.retain(|(q, _)| *q != id);
            self.conflicts += 1;
            return Ok(Taken {
                task_type,
                terminal_after: true,
            });
        }
        let status = status.ok_or(Refusal::NoStatus)?;
        let terminal_after = self.apply(&id, status, r);
        Ok(Taken {
            task_type,
            terminal_after,
        })
    }

    /// `extendLease` (`Ops:1139-1165`): the task is read again and, unless terminal, written
    /// back with only `updateTime` = now (`Facade:632-635`). Nothing of the result but its
    /// `taskId` is used (status, output, workerId, callbackAfterSeconds and logs are dropped),
    /// the queue is untouched, and a heartbeat to a terminal task is ignored silently: no
    /// `task_update_conflict`. The stale writer instead writes back the task as it was before
    /// it finished, which is what a heartbeat that read it then writes.
    fn extend_lease(&mut self, id: &str, stored_terminal: bool) {
        let ms = epoch_ms();
        if !stored_terminal {
            if let Some(t) = self.tasks.get_mut(id) {
                t.update_time = ms;
            }
            return;
        }
        if !self.stale_writer {
            return;
        }
        if let Some(mut before) = self.before_terminal.get(id).cloned() {
            self.stale_writes += 1;
            before.update_time = ms;
            let status = before.status.clone();
            self.tasks.insert(id.into(), before);
            self.set_status(id, &status);
        }
    }

    /// With the stale writer on, a late IN_PROGRESS update to a terminal task is applied to
    /// the task as it was before it finished: the Postgres DAO's unconditional
    /// `UPDATE task SET json_data=?` (`postgres-persistence/.../postgres/dao/PostgresExecutionDAO.java:722-746`) after a read
    /// that came before the terminal write. Whether it did.
    fn stale_overwrite(&mut self, id: &str, status: Option<&str>) -> bool {
        if !self.stale_writer || status != Some("IN_PROGRESS") {
            return false;
        }
        let Some(before) = self.before_terminal.get(id).cloned() else {
            return false;
        };
        self.stale_writes += 1;
        self.tasks.insert(id.into(), before);
        true
    }

    /// Applies an update to a task that is not terminal (`Ops:973-1081`); whether the task is
    /// terminal after it.
    fn apply(&mut self, id: &str, status: String, r: TaskResultIn) -> bool {
        let Some(before) = self.tasks.get(id).cloned() else {
            return false;
        };
        // Ops:977-982: a worker's IN_PROGRESS is stored SCHEDULED; a system task's stays
        let stored = if status == "IN_PROGRESS" && !is_system_task(&before.task_type) {
            "SCHEDULED".to_string()
        } else {
            status
        };
        let terminal = is_terminal(&stored);
        if terminal {
            self.before_terminal.insert(id.into(), before);
        }
        self.set_status(id, &stored);
        let ms = epoch_ms();
        let callback = r.callback_after_seconds.unwrap_or(0);
        if let Some(t) = self.tasks.get_mut(id) {
            // Ops:983-993: replaced with the result's, absent ones included; an absent
            // outputData is an empty map (TaskResult.java:66, TaskModel.java:475-480)
            t.reason_for_incompletion = r.reason_for_incompletion.as_deref().map(cut_reason);
            t.worker_id = r.worker_id;
            t.callback_after_seconds = callback;
            t.output_data = r.output_data.unwrap_or_default();
            t.sub_workflow_id = r.sub_workflow_id;
            if terminal {
                t.end_time = ms; // Ops:995-997
            }
            // Facade:552-561: updateTime now, but a terminal write keeps it unless it is 0
            if !terminal || t.update_time == 0 {
                t.update_time = ms;
            }
        }
        // Ops:1000-1048: a terminal status leaves the queue; an open one is postponed by
        // callbackAfterSeconds (remove and push, CORE/dao/QueueDAO.java:178-183)
        self.queue.retain(|(q, _)| q != id);
        if !terminal {
            let after = Duration::from_secs(callback.max(0) as u64);
            self.queue.push((id.into(), Instant::now() + after));
        }
        // Ops:1077-1081: logs are stored after the task write
        if let Some(logs) = r.logs {
            self.logs.entry(id.into()).or_default().extend(logs);
        }
        terminal
    }
}
