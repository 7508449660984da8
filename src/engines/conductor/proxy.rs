//! The worker proxy: with `--conductor-url`, taskpulse serves a Conductor-compatible API at
//! `/api/` and forwards to the engine. Workers point their SDK at taskpulse
//! (`CONDUCTOR_SERVER_URL=http://<taskpulse>/api`) and taskpulse learns every task they are
//! handed and every update they send, without changing Conductor.
//!
//! What reaches the engine is decided by what the engine must see (`docs/engines/conductor.md`):
//!
//! - **Polls** (`GET /api/tasks/poll/...`) and the next-task answer of `update-v2` are passed
//!   through; the tasks in them are learned (ids, type, workflow, worker, timeouts, seq,
//!   iteration) before the worker gets them, so the worker's first update finds its task known.
//! - **Lease heartbeats** (`extendLease: true`) carry the progress conductor-oss#224 asks for;
//!   the engine drops their output, so taskpulse is where that progress lives. They are
//!   coalesced per task (answered at once, as the engine would) with at most one going upstream
//!   per `min(--progress-min-interval, responseTimeoutSeconds / 2)`, so the engine never times
//!   out a live task.
//! - **Every other update is forwarded at once**, including a yielding IN_PROGRESS with
//!   `callbackAfterSeconds` (the engine must see it to requeue the task). Top-level
//!   `progressPercent`/`progress`/`progressMessage` are moved into `outputData` first.
//! - **Terminal updates go upstream in order** (one update at a time per task), and a
//!   non-terminal update for a task whose terminal update was accepted is never sent upstream:
//!   that alone stops the conductor-oss#176 overwrite for every task going through taskpulse.
//!   Each forwarded terminal update is kept until the engine is seen to hold it
//!   (`lost_terminal_update`).
//! - **Everything else** under `/api/` passes through unchanged (method, path, query, headers,
//!   body, status, streaming). Engine errors reach the worker as they are; a dead engine is a
//!   502 and a slow one a 504, and then nothing is recorded as accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use dashmap::DashMap;
use serde_json::{Map, Value};

use super::client::{collect, EngineClient, UpstreamError};
use super::metrics::ConductorMetrics;
use crate::ingest::{Format, Item};
use crate::model::Status;
use crate::pipeline::{Ack, Pipeline};

/// `source` label of updates learned by the proxy.
pub const SOURCE: &str = "conductor_proxy";
/// Heartbeat period when the task's `responseTimeoutSeconds` is unknown.
const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// A terminal update that went upstream, kept until the engine is seen to hold it.
#[derive(Clone, Debug)]
pub struct ForwardedTerminal {
    pub workflow_id: String,
    pub status: Status,
    /// The TaskResult as forwarded, to post again if the engine lost it.
    pub body: Bytes,
    pub forwarded_at: Instant,
}

/// The proxy's state, shared by every request.
pub struct Proxy {
    pub client: Arc<EngineClient>,
    heartbeat_min_interval: Duration,
    /// Task id -> when a heartbeat for it last went upstream.
    last_heartbeat: DashMap<Arc<str>, Instant>,
    /// Per-task lock: one update per task at a time goes upstream, in order.
    locks: DashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>,
    /// Terminal updates forwarded and not yet seen held by the engine.
    pub forwarded: DashMap<String, ForwardedTerminal>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("base", &self.client.base())
            .field("forwarded", &self.forwarded.len())
            .finish()
    }
}

impl Proxy {
    /// At most one heartbeat per task goes upstream per `heartbeat_min_interval` (or half the
    /// task's response timeout, if that is shorter).
    pub fn new(client: Arc<EngineClient>, heartbeat_min_interval: Duration) -> Proxy {
        Proxy {
            client,
            heartbeat_min_interval,
            last_heartbeat: DashMap::new(),
            locks: DashMap::new(),
            forwarded: DashMap::new(),
        }
    }

    fn lock_for(&self, task_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        if let Some(l) = self.locks.get(task_id) {
            return l.clone();
        }
        self.locks
            .entry(Arc::from(task_id))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Forgets per-task state of tasks that finished or went quiet (called by the sweeper).
    pub fn sweep(&self, quiet_for: Duration) {
        self.last_heartbeat
            .retain(|_, at| at.elapsed() < quiet_for.max(DEFAULT_HEARTBEAT_EVERY * 4));
        // A lock only this map refers to is not held by any request.
        self.locks.retain(|_, l| Arc::strong_count(l) > 1);
    }
}

/// What the proxy's handlers share.
#[derive(Clone)]
struct ProxyState {
    proxy: Arc<Proxy>,
    pipeline: Arc<Pipeline>,
    metrics: ConductorMetrics,
    max_body_bytes: usize,
}

/// The proxy's routes: every `/api/` request that isn't taskpulse's own.
pub fn routes(
    proxy: Arc<Proxy>,
    pipeline: Arc<Pipeline>,
    metrics: ConductorMetrics,
    max_body_bytes: usize,
) -> Router {
    let state = ProxyState {
        proxy,
        pipeline,
        metrics,
        max_body_bytes,
    };
    Router::new()
        .route("/api/{*rest}", any(handle))
        .with_state(state)
}

async fn handle(State(s): State<ProxyState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::GET && path.starts_with("/api/tasks/poll/") {
        return poll(&s, req).await.unwrap_or_else(|e| e.into_response());
    }
    if method == Method::POST && (path == "/api/tasks" || path == "/api/tasks/update-v2") {
        return update(&s, req, path == "/api/tasks/update-v2")
            .await
            .unwrap_or_else(|e| e.into_response());
    }
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or(path);
    s.proxy
        .client
        .send(parts.method, &pq, parts.headers, body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// Rebuilds a response around a body already read.
fn respond(parts: http::response::Parts, body: Bytes) -> Response {
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Learns the tasks in an engine answer (a Task, an array of Tasks, or nothing).
async fn learn_tasks(s: &ProxyState, body: &[u8]) {
    if body.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let Ok(items) = crate::ingest::parse_body(body, Format::Json) else {
        return;
    };
    // Workers get their tasks without waiting for taskpulse's store.
    if let Err(e) = s.pipeline.submit(items, SOURCE, Ack::Memory).await {
        tracing::debug!(error = %e, "proxy: could not record polled tasks");
    }
}

async fn poll(s: &ProxyState, req: Request) -> Result<Response, UpstreamError> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let resp = s
        .proxy
        .client
        .send(parts.method, &pq, parts.headers, body)
        .await?;
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = collect(body, s.max_body_bytes * 4).await?;
    learn_tasks(s, &bytes).await;
    Ok(respond(parts, bytes))
}

/// What taskpulse reads from a TaskResult.
struct TaskResult {
    task_id: String,
    status: Option<Status>,
    extend_lease: bool,
    workflow_id: String,
}

/// Moves top-level progress fields into `outputData` (the engine only keeps `outputData`) and
/// reads what the proxy needs. `None` when the body is not a TaskResult object.
fn normalize(v: &mut Value) -> Option<TaskResult> {
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
fn local_answer(task_id: &str, v2: bool) -> Response {
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

/// Records an update in taskpulse (after the engine took it, or instead of sending it).
async fn record(s: &ProxyState, body: &Value) {
    let items = vec![Item {
        index: 0,
        parsed: crate::ingest::parse_value(body),
    }];
    if let Err(e) = s.pipeline.submit(items, SOURCE, Ack::Memory).await {
        tracing::debug!(error = %e, "proxy: could not record an update");
    }
}

async fn update(s: &ProxyState, req: Request, v2: bool) -> Result<Response, UpstreamError> {
    let px = &s.proxy;
    let (parts, body) = req.into_parts();
    let bytes = collect(body, s.max_body_bytes).await?;
    let mut value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        // Not ours to judge: the engine answers it as it would.
        Err(_) => {
            let path = parts.uri.path().to_string();
            return px
                .client
                .send(parts.method, &path, parts.headers, Body::from(bytes))
                .await;
        }
    };
    let Some(result) = normalize(&mut value) else {
        let path = parts.uri.path().to_string();
        return px
            .client
            .send(parts.method, &path, parts.headers, Body::from(bytes))
            .await;
    };
    // What the engine takes, taskpulse must be able to record (a terminal update it could not
    // record would let a late IN_PROGRESS through to the engine): while the pipeline takes
    // nothing, the worker is told to retry instead.
    if let Err(e) = s.pipeline.admit() {
        return Ok(e.into_response());
    }
    let lock = px.lock_for(&result.task_id);
    let _in_order = lock.lock().await;

    let known = s.pipeline.tracker().get(&result.task_id);
    let terminal_accepted = known.as_ref().is_some_and(|r| r.status.is_terminal());
    let is_terminal = result.status.is_some_and(Status::is_terminal);
    if terminal_accepted && !is_terminal {
        // conductor-oss#176: never let a late non-terminal update reach the engine after the
        // terminal one. Recording it counts the rejected transition.
        record(s, &value).await;
        return Ok(local_answer(&result.task_id, v2));
    }
    if result.extend_lease && result.status == Some(Status::InProgress) {
        record(s, &value).await;
        let every = known
            .as_ref()
            .and_then(|r| r.response_timeout_seconds)
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(t as u64 * 500))
            .unwrap_or(DEFAULT_HEARTBEAT_EVERY)
            .min(px.heartbeat_min_interval);
        let due = px
            .last_heartbeat
            .get(result.task_id.as_str())
            .is_none_or(|at| at.elapsed() >= every);
        if !due {
            s.metrics.heartbeat(false);
            return Ok(local_answer(&result.task_id, v2));
        }
        s.metrics.heartbeat(true);
    }
    let body = Bytes::from(value.to_string());
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    let resp = px
        .client
        .send(
            parts.method,
            parts.uri.path(),
            headers,
            Body::from(body.clone()),
        )
        .await?;
    if !resp.status().is_success() {
        return Ok(resp); // the engine's error, as it is; nothing recorded
    }
    let (rparts, rbody) = resp.into_parts();
    let answer = collect(rbody, s.max_body_bytes * 4).await?;
    if result.extend_lease {
        px.last_heartbeat
            .insert(Arc::from(result.task_id.as_str()), Instant::now());
    } else {
        record(s, &value).await;
    }
    if let Some(status) = result.status.filter(|st| st.is_terminal()) {
        px.forwarded.insert(
            result.task_id.clone(),
            ForwardedTerminal {
                workflow_id: result.workflow_id.clone(),
                status,
                body,
                forwarded_at: Instant::now(),
            },
        );
        px.last_heartbeat.remove(result.task_id.as_str());
    }
    if v2 {
        learn_tasks(s, &answer).await;
    }
    Ok(respond(rparts, answer))
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
