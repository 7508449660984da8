//! A Conductor ENGINE EMULATOR for tests, and the runner for the real Conductor Python SDK
//! workers in `tests/conductor/` ([`workers`]).
//!
//! The Conductor server cannot run here, so [`Emulator`] stands in for it. It is not Conductor:
//! it is a small axum server that implements only the task API a worker (or taskpulse's
//! Conductor proxy) talks to, and behaves as conductor-oss/conductor does at b54f0d4e
//! (`docs/engines/conductor.md`), each rule cited where it is coded: [`state`] (what a poll
//! and an update do to a task), [`routes`] (the HTTP answers), [`spec`] (the Task JSON, what
//! a test schedules, what is recorded).
//!
//! * `GET /api/tasks/poll/batch/{taskType}?workerid=&count=&timeout=` answers a JSON array of
//!   due tasks (waiting up to `timeout` ms, at most 1 s, for one to become due);
//!   `GET /api/tasks/poll/{taskType}` answers one Task or 204. A poll sets the task
//!   IN_PROGRESS, `workerId` to the poll's, `startTime` (first poll), `callbackAfterSeconds`
//!   0, `updateTime`, and increments `pollCount`. A task is due when it is SCHEDULED and its
//!   queue message's delay (`callbackAfterSeconds`) is over.
//! * `POST /api/tasks` takes a TaskResult and answers the taskId as `text/plain`:
//!   - a body Jackson cannot read (not JSON, a status that is no TaskResult status) is a 500;
//!     a missing `taskId` or `workflowInstanceId` a 400 (a 500 on update-v2); an unknown
//!     task a 404;
//!   - `extendLease: true` only refreshes `updateTime` of a task that is not terminal; all
//!     else in it (status, output, workerId, callbackAfterSeconds, logs) is dropped, and one
//!     for a terminal task is ignored silently (no conflict);
//!   - any other update to a task that is already terminal is ignored (answered 200) and
//!     counted as `task_update_conflict` ([`Emulator::conflicts`]), its logs dropped, unless
//!     the stale writer is on (below); without a `status`, an update to a task that is not
//!     terminal is a 500 (the engine's NullPointerException);
//!   - otherwise the result replaces `outputData`, `reasonForIncompletion` (cut at 500 UTF-16
//!     code units), `workerId`, `callbackAfterSeconds` and `subWorkflowId`, absent ones
//!     included; `IN_PROGRESS` is stored as **SCHEDULED** for a worker task (IN_PROGRESS for a
//!     system task type such as WAIT) and the task is requeued, due after
//!     `callbackAfterSeconds`; a terminal status sets `endTime`, leaves `updateTime` as it was
//!     and takes the task off the queue; `logs` are kept ([`Emulator::logs`]).
//! * `POST /api/tasks/update-v2`: the same update; when the task is terminal after it
//!   (applied, or ignored as already terminal) it answers the next due Task of the same type
//!   (polled as above for the update's `workerId`), else 204, which is what the SDK treats as
//!   "nothing". [`Emulator::disable_update_v2`] makes it 404, as on a server without it; the
//!   SDK then falls back to `POST /api/tasks`.
//! * `GET /api/tasks/{taskId}`: the Task JSON (null fields omitted), 404 when unknown.
//! * `GET /api/tasks/queue/all/verbose`: `{"<taskType>": {"a": {"size": due-or-waiting
//!   SCHEDULED tasks, "uacked": IN_PROGRESS tasks}}}`.
//! * `PUT /api/workflow/decide/{workflowId}`: recorded ([`Emulator::decides`]), 200.
//!
//! Fault switches, for the races taskpulse must survive:
//! * [`Emulator::set_stale_writer`]: act as a writer that read the task before it finished,
//!   then wrote with the Postgres DAO's unconditional `UPDATE task SET json_data=?`: a late
//!   IN_PROGRESS update to a terminal task is applied to the task as it was before (so a worker
//!   task becomes SCHEDULED and is requeued), and a late heartbeat writes that earlier task
//!   back as it was, IN_PROGRESS with its old output (the conductor-oss#176 shape). Counted in
//!   [`Emulator::stale_writes`], not as a conflict.
//! * [`Emulator::lose_next_completion`]: the next terminal update is answered as a success but
//!   not applied (the task stays where it was): the lost completion of conductor-oss#176.
//! * [`Emulator::require_header`]: every request without that header and value is answered
//!   403, as an engine with authentication on (Orkes Conductor's `X-Authorization`) answers.
//! * [`Emulator::fail_lookups`] answers every `GET /api/tasks/{taskId}` with that status.
//! * [`Emulator::fail_with`] answers every task update (both endpoints) with that HTTP status,
//!   unapplied, until [`Emulator::heal`]; [`Emulator::delay`] delays every task update.
//!
//! Every request is recorded before anything else happens (method, path, query, JSON body),
//! so a test can assert exactly what reached the engine ([`Emulator::requests`],
//! [`Emulator::updates_for`]). There is no workflow engine behind it: no workflows (so no
//! "workflow already terminal" conflict), no decider, no timeouts, no retries; tests schedule
//! tasks with [`Emulator::start_task`].

pub mod engine_rules;
pub mod facts;
mod proxy_rules;
mod routes;
pub mod sdk;
pub mod spec;
mod state;
pub mod workers;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use spec::{EmuTask, Recorded, TaskSpec};
pub use state::cut_reason;
pub use workers::{python, run_worker};

use state::State;

/// The running emulator. Dropping it stops the server.
pub struct Emulator {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Emulator {
    /// Starts the emulator on 127.0.0.1 on a free port.
    pub async fn start() -> Emulator {
        let state = Arc::new(Mutex::new(State::default()));
        let app = routes::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind emulator");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("emulator serves");
        });
        Emulator {
            addr,
            state,
            server,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT` (no `/api`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SDK's `server_api_url`: `http://127.0.0.1:PORT/api`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.url())
    }

    /// Schedules a task (SCHEDULED, due now) and returns its id.
    pub fn start_task(&self, spec: TaskSpec) -> String {
        let mut s = self.lock();
        s.next += 1;
        let n = s.next;
        let id = format!("{}-{n:04}-emu", spec.task_type);
        s.tasks.insert(id.clone(), spec.into_task(id.clone(), n));
        s.history.insert(id.clone(), vec!["SCHEDULED".into()]);
        s.queue.push((id.clone(), Instant::now()));
        id
    }

    /// The stored task.
    pub fn task(&self, id: &str) -> Option<EmuTask> {
        self.lock().tasks.get(id).cloned()
    }

    /// Every status the store held for a task, in order (polls included).
    pub fn history(&self, id: &str) -> Vec<String> {
        self.lock().history.get(id).cloned().unwrap_or_default()
    }

    /// The `logs` entries the engine stored for a task: those of applied updates only
    /// (`CORE/core/execution/WorkflowExecutorOps.java:1077-1081`).
    pub fn logs(&self, id: &str) -> Vec<Value> {
        self.lock().logs.get(id).cloned().unwrap_or_default()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The bodies of every update (both endpoints) for one task, in arrival order.
    pub fn updates_for(&self, task_id: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_update() && r.body["taskId"] == json!(task_id))
            .map(|r| r.body)
            .collect()
    }

    /// Updates for one task that are heartbeats (`extendLease: true`).
    pub fn heartbeats_for(&self, task_id: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_heartbeat() && r.body["taskId"] == json!(task_id))
            .collect()
    }

    /// Updates to terminal tasks that were ignored (Conductor's `task_update_conflict`,
    /// `CORE/core/execution/WorkflowExecutorOps.java:944-956`); heartbeats are not among them
    /// (`:1152`, ignored silently).
    pub fn conflicts(&self) -> u64 {
        self.lock().conflicts
    }

    /// Terminal updates swallowed by [`Emulator::lose_next_completion`].
    pub fn lost_completions(&self) -> Vec<Value> {
        self.lock().lost.clone()
    }

    /// Terminal tasks overwritten by the stale writer.
    pub fn stale_writes(&self) -> u64 {
        self.lock().stale_writes
    }

    /// Workflow ids of every `PUT /api/workflow/decide/{id}`.
    pub fn decides(&self) -> Vec<String> {
        self.lock().decides.clone()
    }

    /// Act as a stale writer (module doc): a late IN_PROGRESS update or heartbeat overwrites a
    /// terminal task with what was read before it finished.
    pub fn set_stale_writer(&self, on: bool) {
        self.lock().stale_writer = on;
    }

    /// Accept (2xx) but do not apply the next terminal update.
    pub fn lose_next_completion(&self) {
        self.lock().lose_next_completion = true;
    }

    /// Answer every task update with this status, unapplied, until [`Emulator::heal`].
    pub fn fail_with(&self, status: u16) {
        self.lock().fail_with = Some(status);
    }

    /// Delay every task update by this much, until [`Emulator::heal`].
    pub fn delay(&self, by: Duration) {
        self.lock().delay = Some(by);
    }

    /// Answer every task look-up (`GET /api/tasks/{taskId}`) with this status, until
    /// [`Emulator::heal`].
    pub fn fail_lookups(&self, status: u16) {
        self.lock().fail_lookups = Some(status);
    }

    /// Clears [`Emulator::fail_with`], [`Emulator::fail_lookups`] and [`Emulator::delay`].
    pub fn heal(&self) {
        let mut s = self.lock();
        s.fail_with = None;
        s.fail_lookups = None;
        s.delay = None;
    }

    /// From now on every request without `header: value` is answered 403 (after being
    /// recorded), as an engine with authentication on answers a caller without credentials.
    pub fn require_header(&self, header: &str, value: &str) {
        self.lock().require = Some((header.to_ascii_lowercase(), value.to_string()));
    }

    /// `POST /api/tasks/update-v2` answers 404, as on a server without it.
    pub fn disable_update_v2(&self) {
        self.lock().no_update_v2 = true;
    }

    /// Waits until the stored task satisfies `cond`, or panics after `limit`.
    pub async fn wait_task(
        &self,
        id: &str,
        limit: Duration,
        cond: impl Fn(&EmuTask) -> bool,
    ) -> EmuTask {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.task(id).filter(|t| cond(t)) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never reached the expected state; it is {:?}",
                self.task(id)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
