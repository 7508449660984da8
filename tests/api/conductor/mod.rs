//! A Conductor ENGINE EMULATOR for tests, and the runner for the real Conductor Python SDK
//! workers in `tests/conductor/`.
//!
//! The Conductor server cannot run here, so [`Emulator`] stands in for it. It is not Conductor:
//! it is a small axum server that implements only the task API a worker (or taskpulse's
//! Conductor proxy) talks to, and behaves exactly as `docs/engines/conductor.md` says, nothing more:
//!
//! * `GET /api/tasks/poll/batch/{taskType}?workerid=&count=&timeout=` answers a JSON array of
//!   due tasks (waiting up to `timeout` ms, at most 1 s, for one to become due);
//!   `GET /api/tasks/poll/{taskType}` answers one Task or 204. A poll sets the task
//!   IN_PROGRESS, stamps `workerId` and `startTime` (first poll), and increments `pollCount`.
//!   A task is due when it is SCHEDULED and its requeue delay (`callbackAfterSeconds`) is over.
//! * `POST /api/tasks` takes a TaskResult and answers the taskId as `text/plain`:
//!   - `taskId` and `workflowInstanceId` are required, `status` must be a TaskResult status
//!     (400 otherwise); an unknown task is 404;
//!   - an update to a task that is already terminal is ignored (answered 200) and counted as
//!     `task_update_conflict` ([`Emulator::conflicts`]), unless the stale writer is on (below);
//!   - `extendLease: true` only refreshes `updateTime`: status, `outputData` and
//!     `callbackAfterSeconds` are dropped;
//!   - `IN_PROGRESS` (without `extendLease`) is stored as **SCHEDULED**, `outputData` replaces
//!     the stored output, and the task is requeued, due after `callbackAfterSeconds`;
//!   - a terminal status is stored with `outputData`, `reasonForIncompletion` (cut at 500
//!     chars) and `endTime`, and leaves the queue. `logs` are kept ([`Emulator::logs`]).
//! * `POST /api/tasks/update-v2`: the same update; after a terminal update it answers the next
//!   due Task of the same type (polled as above for the update's `workerId`), else 204, which
//!   is what the SDK treats as "nothing". [`Emulator::disable_update_v2`] makes it 404, as on a
//!   server without it; the SDK then falls back to `POST /api/tasks`.
//! * `GET /api/tasks/{taskId}`: the Task JSON (null fields omitted), 404 when unknown.
//! * `GET /api/tasks/queue/all/verbose`: `{"<taskType>": {"a": {"size": due-or-waiting
//!   SCHEDULED tasks, "uacked": IN_PROGRESS tasks}}}`.
//! * `PUT /api/workflow/decide/{workflowId}`: recorded ([`Emulator::decides`]), 200.
//!
//! Fault switches, for the races taskpulse must survive:
//! * [`Emulator::set_stale_writer`]: act as the Postgres DAO's unconditional
//!   `UPDATE task SET json_data=?`: a late IN_PROGRESS update (heartbeat or not) to a terminal
//!   task overwrites it with status IN_PROGRESS (the conductor-oss#176 shape), output replaced
//!   unless it was a heartbeat. Not counted as a conflict.
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
//! [`Emulator::updates_for`]). There is no workflow engine behind it: no decider, no timeouts,
//! no retries; tests schedule tasks with [`Emulator::start_task`].

pub mod engine_rules;
pub mod facts;
pub mod sdk;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Task statuses that are terminal (docs/engines/conductor.md).
pub const TERMINAL: &[&str] = &[
    "COMPLETED",
    "COMPLETED_WITH_ERRORS",
    "SKIPPED",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "TIMED_OUT",
    "CANCELED",
];

/// Statuses a TaskResult may carry.
const RESULT_STATUSES: &[&str] = &[
    "IN_PROGRESS",
    "FAILED",
    "FAILED_WITH_TERMINAL_ERROR",
    "COMPLETED",
    "CANCELED",
];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A task as the emulator stores it and answers it (Conductor's Task JSON; null fields are
/// omitted).
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
    pub correlation_id: Option<String>,
}

/// What to schedule with [`Emulator::start_task`]. Defaults: workflow `wf-<n>` of type
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

#[derive(Default)]
struct State {
    tasks: BTreeMap<String, EmuTask>,
    /// Requeued or new tasks, in order: (task id, due).
    queue: Vec<(String, Instant)>,
    /// Every status the store held, per task, in order.
    history: HashMap<String, Vec<String>>,
    logs: HashMap<String, Vec<Value>>,
    requests: Vec<Recorded>,
    decides: Vec<String>,
    conflicts: u64,
    lost: Vec<Value>,
    stale_writes: u64,
    next: u64,
    // switches
    stale_writer: bool,
    lose_next_completion: bool,
    fail_with: Option<u16>,
    delay: Option<Duration>,
    no_update_v2: bool,
    /// Status every `GET /api/tasks/{taskId}` answers with, until [`Emulator::heal`].
    fail_lookups: Option<u16>,
    /// `(header, value)` every request must carry, else 403 (an engine with auth on).
    require: Option<(String, String)>,
}

impl State {
    fn set_status(&mut self, id: &str, status: &str) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.status = status.into();
        }
        self.history
            .entry(id.into())
            .or_default()
            .push(status.into());
    }

    /// Takes up to `count` due tasks of a type and marks them polled.
    fn poll(&mut self, task_type: &str, worker_id: Option<&str>, count: usize) -> Vec<EmuTask> {
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
                let (id, _) = self.queue.remove(i);
                taken.push(id);
            } else {
                i += 1;
            }
        }
        let ms = epoch_ms();
        taken
            .into_iter()
            .map(|id| {
                self.set_status(&id, "IN_PROGRESS");
                let t = self.tasks.get_mut(&id).expect("queued task exists");
                t.poll_count += 1;
                if t.start_time == 0 {
                    t.start_time = ms;
                }
                t.update_time = ms;
                if let Some(w) = worker_id {
                    t.worker_id = Some(w.into());
                }
                t.clone()
            })
            .collect()
    }
}

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
        let app = Router::new()
            .route("/api/tasks/poll/batch/{task_type}", get(batch_poll))
            .route("/api/tasks/poll/{task_type}", get(single_poll))
            .route("/api/tasks", post(update_v1))
            .route("/api/tasks/update-v2", post(update_v2))
            .route("/api/tasks/queue/all/verbose", get(queue_verbose))
            .route("/api/tasks/{task_id}", get(get_task))
            .route("/api/workflow/decide/{workflow_id}", put(decide))
            .layer(middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
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
        self.state.lock().unwrap()
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
        let ms = epoch_ms();
        let task = EmuTask {
            task_id: id.clone(),
            task_def_name: spec.task_type.clone(),
            reference_task_name: spec
                .reference_task_name
                .unwrap_or_else(|| format!("{}_ref", spec.task_type)),
            task_type: spec.task_type,
            status: "SCHEDULED".into(),
            seq: spec.seq.unwrap_or(n as i64),
            iteration: spec.iteration,
            workflow_instance_id: spec.workflow_instance_id.unwrap_or(format!("wf-{n:04}")),
            workflow_type: spec.workflow_type,
            scheduled_time: ms,
            update_time: ms,
            response_timeout_seconds: spec.response_timeout_seconds,
            input_data: spec.input.as_object().cloned().unwrap_or_default(),
            ..EmuTask::default()
        };
        s.tasks.insert(id.clone(), task);
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

    /// The `logs` entries received for a task.
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

    /// Updates to terminal tasks that were ignored (Conductor's `task_update_conflict`).
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

    /// Act as the stale Postgres writer: a late IN_PROGRESS overwrites a terminal task.
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

type Shared = Arc<Mutex<State>>;

/// Records every request (with its body) before it is handled.
async fn record(AxState(state): AxState<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let body_json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let refused = {
        let mut s = state.lock().unwrap();
        s.requests.push(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            body: body_json,
            headers,
            at_ms: epoch_ms(),
        });
        s.require.as_ref().is_some_and(|(name, value)| {
            parts.headers.get(name.as_str()).map(|v| v.as_bytes()) != Some(value.as_bytes())
        })
    };
    if refused {
        return error(StatusCode::FORBIDDEN, "no valid credentials");
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[derive(Deserialize)]
struct PollQuery {
    workerid: Option<String>,
    count: Option<usize>,
    timeout: Option<u64>,
}

async fn batch_poll(
    AxState(state): AxState<Shared>,
    UrlPath(task_type): UrlPath<String>,
    Query(q): Query<PollQuery>,
) -> Response {
    let count = q.count.unwrap_or(1).max(1);
    let deadline = Instant::now() + Duration::from_millis(q.timeout.unwrap_or(100).min(1000));
    loop {
        let tasks = state
            .lock()
            .unwrap()
            .poll(&task_type, q.workerid.as_deref(), count);
        if !tasks.is_empty() || Instant::now() >= deadline {
            return Json(tasks).into_response();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn single_poll(
    AxState(state): AxState<Shared>,
    UrlPath(task_type): UrlPath<String>,
    Query(q): Query<PollQuery>,
) -> Response {
    let mut tasks = state
        .lock()
        .unwrap()
        .poll(&task_type, q.workerid.as_deref(), 1);
    match tasks.pop() {
        Some(t) => Json(t).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// A TaskResult as it arrives (unknown fields ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskResultIn {
    task_id: Option<String>,
    workflow_instance_id: Option<String>,
    status: Option<String>,
    #[serde(default)]
    output_data: Option<Map<String, Value>>,
    worker_id: Option<String>,
    callback_after_seconds: Option<i64>,
    reason_for_incompletion: Option<String>,
    #[serde(default)]
    logs: Option<Vec<Value>>,
    #[serde(default)]
    extend_lease: Option<bool>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"status": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// Applies one update; `Ok(task_type)` when it was accepted (applied, ignored or lost).
async fn apply_update(state: &Shared, body: &Bytes) -> Result<(String, String), Response> {
    let (fail, delay) = {
        let s = state.lock().unwrap();
        (s.fail_with, s.delay)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = fail {
        let code = StatusCode::from_u16(code).expect("valid status");
        return Err(error(code, "emulator fault: fail_with"));
    }
    let r: TaskResultIn = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad TaskResult: {e}")))?;
    let (Some(id), Some(_wf)) = (
        r.task_id.clone().filter(|s| !s.is_empty()),
        r.workflow_instance_id.clone().filter(|s| !s.is_empty()),
    ) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "taskId and workflowInstanceId are required",
        ));
    };
    let status = r.status.clone().unwrap_or_default();
    if !RESULT_STATUSES.contains(&status.as_str()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("bad TaskResult status {status:?}"),
        ));
    }
    let worker = r.worker_id.clone().unwrap_or_default();
    let extend = r.extend_lease == Some(true);
    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    let Some(task) = s.tasks.get(&id) else {
        return Err(error(StatusCode::NOT_FOUND, &format!("no task {id}")));
    };
    let task_type = task.task_type.clone();
    let stored = task.status.clone();
    if is_terminal(&status) && s.lose_next_completion {
        s.lose_next_completion = false;
        s.lost
            .push(serde_json::from_slice(body).unwrap_or(Value::Null));
        return Ok((task_type, worker));
    }
    if let Some(logs) = r.logs {
        s.logs.entry(id.clone()).or_default().extend(logs);
    }
    let ms = epoch_ms();
    if is_terminal(&stored) {
        if s.stale_writer && status == "IN_PROGRESS" {
            s.stale_writes += 1;
            s.set_status(&id, "IN_PROGRESS");
            let t = s.tasks.get_mut(&id).unwrap();
            t.update_time = ms;
            if !extend {
                t.output_data = r.output_data.unwrap_or_default();
            }
        } else {
            s.conflicts += 1;
        }
        return Ok((task_type, worker));
    }
    if let Some(w) = r.worker_id {
        s.tasks.get_mut(&id).unwrap().worker_id = Some(w);
    }
    if extend {
        s.tasks.get_mut(&id).unwrap().update_time = ms;
        return Ok((task_type, worker));
    }
    let output = r.output_data.unwrap_or_default();
    if status == "IN_PROGRESS" {
        let after = r.callback_after_seconds.unwrap_or(0).max(0);
        s.set_status(&id, "SCHEDULED");
        let t = s.tasks.get_mut(&id).unwrap();
        t.output_data = output;
        t.callback_after_seconds = after;
        t.update_time = ms;
        s.queue.retain(|(q, _)| *q != id);
        s.queue
            .push((id, Instant::now() + Duration::from_secs(after as u64)));
    } else {
        s.set_status(&id, &status);
        let t = s.tasks.get_mut(&id).unwrap();
        t.output_data = output;
        t.reason_for_incompletion = r
            .reason_for_incompletion
            .map(|m| m.chars().take(500).collect());
        t.end_time = ms;
        t.update_time = ms;
        s.queue.retain(|(q, _)| *q != id);
    }
    Ok((task_type, worker))
}

async fn update_v1(AxState(state): AxState<Shared>, body: Bytes) -> Response {
    match apply_update(&state, &body).await {
        Ok(_) => {
            let id = serde_json::from_slice::<Value>(&body).unwrap()["taskId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ([(header::CONTENT_TYPE, "text/plain")], id).into_response()
        }
        Err(resp) => resp,
    }
}

async fn update_v2(AxState(state): AxState<Shared>, body: Bytes) -> Response {
    if state.lock().unwrap().no_update_v2 {
        return error(StatusCode::NOT_FOUND, "no update-v2 on this server");
    }
    let terminal = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["status"].as_str().map(is_terminal))
        .unwrap_or(false);
    match apply_update(&state, &body).await {
        Ok((task_type, worker)) if terminal => {
            let worker = Some(worker.as_str()).filter(|w| !w.is_empty());
            match state.lock().unwrap().poll(&task_type, worker, 1).pop() {
                Some(next) => Json(next).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            }
        }
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(resp) => resp,
    }
}

async fn get_task(AxState(state): AxState<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    let s = state.lock().unwrap();
    if let Some(status) = s.fail_lookups {
        return error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "failing look-ups (Emulator::fail_lookups)",
        );
    }
    match s.tasks.get(&id) {
        Some(t) => Json(t.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no task {id}")),
    }
}

async fn queue_verbose(AxState(state): AxState<Shared>) -> Response {
    let s = state.lock().unwrap();
    let mut out = Map::new();
    for t in s.tasks.values() {
        let entry = out
            .entry(t.task_type.clone())
            .or_insert_with(|| json!({"a": {"size": 0, "uacked": 0}}));
        let key = match t.status.as_str() {
            "SCHEDULED" => "size",
            "IN_PROGRESS" => "uacked",
            _ => continue,
        };
        let n = entry["a"][key].as_i64().unwrap() + 1;
        entry["a"][key] = json!(n);
    }
    Json(Value::Object(out)).into_response()
}

async fn decide(AxState(state): AxState<Shared>, UrlPath(id): UrlPath<String>) -> StatusCode {
    state.lock().unwrap().decides.push(id);
    StatusCode::OK
}

// ---------------------------------------------------------------------------------------------
// The real Conductor Python SDK workers (tests/conductor/*.py)
// ---------------------------------------------------------------------------------------------

/// The Python with `conductor-python` installed: `TASKPULSE_TEST_PYTHON`, else
/// `<repo>/.venv/bin/python`. `None` after a skip note when missing; with
/// `TASKPULSE_REQUIRE_TOOLS=1` (set by `scripts/test.sh`) a missing interpreter is a failure.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TASKPULSE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let how = "python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt, \
               or run scripts/test.sh";
    if std::env::var("TASKPULSE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!(
            "no Python with conductor-python at {} and TASKPULSE_REQUIRE_TOOLS=1 ({how})",
            candidate.display()
        );
    }
    eprintln!(
        "SKIPPED: no Python with conductor-python at {} ({how})",
        candidate.display()
    );
    None
}

/// What a worker script did: its exit code and the JSON summary line it printed.
#[derive(Debug)]
pub struct WorkerRun {
    pub code: Option<i32>,
    pub summary: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

impl WorkerRun {
    /// Panics with the worker's stderr unless it exited 0.
    pub fn assert_ok(&self) -> &Value {
        assert_eq!(
            self.code,
            Some(0),
            "worker failed; summary {}\nstderr:\n{}",
            self.summary,
            self.stderr
        );
        &self.summary
    }

    /// The updates the worker's SDK client sent (as the worker saw them).
    pub fn updates(&self) -> Vec<Value> {
        self.summary["updates"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Runs `tests/conductor/<script>` against `server_api_url` (ending in `/api`), waiting for
/// `tasks` terminal updates. The script gives up after `limit` minus 2 s; the child is killed
/// at `limit`.
pub async fn run_worker(
    python: &Path,
    script: &str,
    server_api_url: &str,
    tasks: usize,
    extra_args: &[&str],
    limit: Duration,
) -> WorkerRun {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conductor")
        .join(script);
    let inner = limit.saturating_sub(Duration::from_secs(2)).as_secs_f64();
    let started = Instant::now();
    let child = tokio::process::Command::new(python)
        .arg(&path)
        .args(["--url", server_api_url])
        .args(["--tasks", &tasks.to_string()])
        .args(["--timeout", &inner.to_string()])
        .args(extra_args)
        .env("CONDUCTOR_SERVER_URL", server_api_url)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {} {}: {e}", python.display(), path.display()));
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("worker output"),
        // dropping the future drops the child: kill_on_drop kills it
        Err(_) => panic!("{script} still running after {limit:?}; killed"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!("{script} printed no summary; stdout:\n{stdout}\nstderr:\n{stderr}")
        });
    WorkerRun {
        code: out.status.code(),
        summary,
        stderr,
        elapsed: started.elapsed(),
    }
}
