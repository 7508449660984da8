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
//!   out a live task. The engine reads nothing of one but its `taskId`, so one that says
//!   COMPLETED is still only a heartbeat (`task_result::lease_as_progress`).
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
//! - **Paths** are read as Conductor's server will read them ([`path`]: `;parameters`
//!   dropped, percent-decoding, `//` and a trailing `/` folded) before anything is decided, and
//!   the canonical form is what goes upstream: `/api/tasks;x=1` and `/api/%74asks/` are
//!   guarded and recorded like `/api/tasks`. `/api/v1/`, in any spelling, is taskpulse's own
//!   and never forwarded; dot segments and encoded slashes are refused (400).
//! - **What is recorded** is only what the engine accepted, and with `--auth-token` only what an
//!   authenticated caller sent (see [`caller`]).

mod caller;
mod forwarded;
mod path;
mod task_result;

pub use caller::{Caller, Callers, Proof, TOKEN_HEADER};
pub use forwarded::{Forwarded, ForwardedTerminal};
pub use task_result::inspect_task_result;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use dashmap::DashMap;
use serde_json::Value;

use super::client::{collect, EngineClient, UpstreamError};
use super::metrics::ConductorMetrics;
use crate::http::seam::error;
use crate::ingest::{Format, Item};
use crate::metrics::{text, Budget, Collector};
use crate::model::Status;
use crate::pipeline::{Ack, Pipeline};
use task_result::{lease_as_progress, local_answer, normalize};

/// `source` label of updates learned by the proxy.
pub const SOURCE: &str = "conductor_proxy";
/// Heartbeat period when the task's `responseTimeoutSeconds` is unknown.
const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// What the proxy remembers of a task's lease: when a heartbeat last went upstream, and the
/// credentials the engine last accepted an update of it from.
#[derive(Clone, Copy, Debug)]
struct Lease {
    heartbeat_sent: Option<Instant>,
    accepted_from: u64,
    seen: Instant,
}

/// The proxy's state, shared by every request.
pub struct Proxy {
    pub client: Arc<EngineClient>,
    heartbeat_min_interval: Duration,
    leases: DashMap<Arc<str>, Lease>,
    /// Per-task lock: one update per task at a time goes upstream, in order.
    locks: DashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>,
    /// Terminal updates forwarded and not yet seen held by the engine.
    pub forwarded: Forwarded,
    callers: Callers,
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
    /// task's response timeout, if that is shorter). `callers` knows taskpulse's token.
    pub fn new(
        client: Arc<EngineClient>,
        heartbeat_min_interval: Duration,
        callers: Callers,
    ) -> Proxy {
        Proxy {
            client,
            heartbeat_min_interval,
            leases: DashMap::new(),
            locks: DashMap::new(),
            forwarded: Forwarded::default(),
            callers,
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

    /// Forgets per-task state of tasks that finished or went quiet, and forwarded terminal
    /// updates past their age (called by the sweeper).
    pub fn sweep(&self, quiet_for: Duration) {
        let quiet = quiet_for.max(DEFAULT_HEARTBEAT_EVERY * 4);
        self.leases.retain(|_, l| l.seen.elapsed() < quiet);
        // A lock only this map refers to is not held by any request.
        self.locks.retain(|_, l| Arc::strong_count(l) > 1);
        let expired = self.forwarded.expire();
        if expired > 0 {
            tracing::warn!(
                expired,
                "proxy: forwarded terminal updates never seen held by the engine within 10 minutes; no longer checked"
            );
        }
    }

    /// Whether what `caller` says of this task may be recorded without asking the engine: it
    /// carried taskpulse's token, or the same credentials the engine last accepted an update
    /// of this task from (and, with a token set, it carried some).
    fn vouched(&self, task_id: &str, caller: Caller) -> bool {
        caller == Caller::Taskpulse
            || caller.may_record(true, self.callers.proof())
                && self
                    .leases
                    .get(task_id)
                    .is_some_and(|l| l.accepted_from == caller.fingerprint())
    }

    /// The engine accepted an update of this task from `caller`.
    fn accepted(&self, task_id: &str, caller: Caller, heartbeat: bool) {
        let now = Instant::now();
        let mut lease = self.leases.entry(Arc::from(task_id)).or_insert(Lease {
            heartbeat_sent: None,
            accepted_from: caller.fingerprint(),
            seen: now,
        });
        lease.accepted_from = caller.fingerprint();
        lease.seen = now;
        if heartbeat {
            lease.heartbeat_sent = Some(now);
        }
    }
}

/// The forwarded terminal updates waiting to be seen held by the engine, and the TaskResult
/// bytes kept of them: what the proxy holds in memory besides per-task leases.
impl Collector for Proxy {
    fn write_text(&self, out: &mut String, budget: &mut Budget) {
        let start = out.len();
        for (name, help, v) in [
            (
                "taskpulse_conductor_unconfirmed_terminal_updates",
                "Terminal updates the worker proxy forwarded and has not yet seen held by the engine (at most 10,000, none older than 10 minutes).",
                self.forwarded.len(),
            ),
            (
                "taskpulse_conductor_unconfirmed_terminal_update_bytes",
                "Bytes of those TaskResults kept to post again if the engine lost them (at most 16 KiB each, 16 MiB in all).",
                self.forwarded.body_bytes(),
            ),
        ] {
            text::header(out, name, help, "gauge");
            text::sample_i64(out, name, &[], v as i64);
        }
        budget.series = budget.series.saturating_sub(2);
        budget.bytes = budget.bytes.saturating_sub(out.len() - start);
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

async fn handle(State(s): State<ProxyState>, mut req: Request) -> Response {
    let path = match canonical_request(&mut req) {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let caller = s.proxy.callers.identify(req.headers_mut());
    let method = req.method().clone();
    if method == Method::GET && path.starts_with("/api/tasks/poll/") {
        return poll(&s, req, caller)
            .await
            .unwrap_or_else(|e| e.into_response());
    }
    if method == Method::POST && (path == "/api/tasks" || path == "/api/tasks/update-v2") {
        return update(&s, req, caller, path == "/api/tasks/update-v2")
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

/// Reads the request's path as the engine's server will ([`path::canonical`]) and puts the
/// canonical form in its place, so what the proxy decides on is what goes upstream. Returns the
/// decoded path, or the answer to a path that is not forwarded: taskpulse's own API (in any
/// spelling), and what cannot be read the same way.
fn canonical_request(req: &mut Request) -> Result<String, Box<Response>> {
    let refused = |r: path::Refused| Box::new(error(StatusCode::BAD_REQUEST, r.message()));
    let path = path::canonical(req.uri().path()).map_err(refused)?;
    if path.decoded == "/api/v1" || path.decoded.starts_with("/api/v1/") {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "no such endpoint (/api/v1/ is taskpulse's own API and is not forwarded)",
        )));
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{}?{q}", path.encoded),
        None => path.encoded,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| refused(path::Refused::Ambiguous))?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| refused(path::Refused::Ambiguous))?;
    Ok(path.decoded)
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
    let Ok(items) = crate::ingest::items(body, Format::Json) else {
        return;
    };
    // Workers get their tasks without waiting for taskpulse's store.
    if let Err(e) = s.pipeline.submit(items, SOURCE, Ack::Memory).await {
        tracing::debug!(error = %e, "proxy: could not record polled tasks");
    }
}

async fn poll(s: &ProxyState, req: Request, caller: Caller) -> Result<Response, UpstreamError> {
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
    if caller.may_record(true, s.proxy.callers.proof()) {
        learn_tasks(s, &bytes).await;
    }
    Ok(respond(parts, bytes))
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

async fn update(
    s: &ProxyState,
    req: Request,
    caller: Caller,
    v2: bool,
) -> Result<Response, UpstreamError> {
    let px = &s.proxy;
    let proof = px.callers.proof();
    let (parts, body) = req.into_parts();
    let bytes = collect(body, s.max_body_bytes).await?;
    let path = parts.uri.path().to_string();
    let forward_as_is = |bytes: Bytes| {
        px.client.send(
            parts.method.clone(),
            &path,
            parts.headers.clone(),
            Body::from(bytes),
        )
    };
    // Not ours to judge: the engine answers it as it would.
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return forward_as_is(bytes).await;
    };
    let Some(mut result) = normalize(&mut value) else {
        return forward_as_is(bytes).await;
    };
    let recorded = lease_as_progress(&mut result, &value);
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
        // terminal one. Recording it counts the rejected transition, when the caller is one
        // the engine vouched for.
        if px.vouched(&result.task_id, caller) {
            record(s, &recorded).await;
        }
        return Ok(local_answer(&result.task_id, v2));
    }
    let heartbeat = result.extend_lease && result.status == Some(Status::InProgress);
    if heartbeat {
        let every = known
            .as_ref()
            .and_then(|r| r.response_timeout_seconds)
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(t as u64 * 500))
            .unwrap_or(DEFAULT_HEARTBEAT_EVERY)
            .min(px.heartbeat_min_interval);
        let due = px
            .leases
            .get(result.task_id.as_str())
            .and_then(|l| l.heartbeat_sent)
            .is_none_or(|at| at.elapsed() >= every);
        // Answered here only for a caller the engine accepted this task's updates from.
        if !due && px.vouched(&result.task_id, caller) {
            s.metrics.heartbeat(false);
            record(s, &recorded).await;
            return Ok(local_answer(&result.task_id, v2));
        }
        s.metrics.heartbeat(true);
    }
    let body = Bytes::from(value.to_string());
    let mut headers = parts.headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    let resp = px
        .client
        .send(
            parts.method.clone(),
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
    px.accepted(&result.task_id, caller, heartbeat);
    if caller.may_record(true, proof) {
        record(s, &recorded).await;
    }
    if let Some(status) = result.status.filter(|st| st.is_terminal()) {
        px.forwarded.insert(
            result.task_id.clone(),
            result.workflow_id.clone(),
            status,
            body,
        );
    }
    if v2 && caller.may_record(true, proof) {
        learn_tasks(s, &answer).await;
    }
    Ok(respond(rparts, answer))
}
