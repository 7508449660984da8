//! Reading state: the task list and one task, the repairs audit, health, readiness,
//! `/metrics` and the landing page (`docs/contract.md` §2 and §5).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::views::TaskView;
use super::{error, unavailable, HttpState};
use crate::model::{Attempt, Status};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    status: Option<String>,
    task_type: Option<String>,
    workflow_type: Option<String>,
    workflow_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const DEFAULT_LIST_LIMIT: usize = 100;
/// Longest page of the task list: a page copies only its own records.
const MAX_LIST_LIMIT: usize = 1000;

/// A page boundary as the API hands it out: `<lastSeen>.<task id in hex>`.
fn cursor_of(last_seen: i64, task_id: &str) -> String {
    let hex: String = task_id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{last_seen}.{hex}")
}

fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (seen, hex) = c.split_once('.')?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((seen.parse().ok()?, String::from_utf8(bytes).ok()?))
}

/// `GET /api/v1/tasks`: tracked tasks, most recently updated first, a page at a time.
pub(super) async fn list_tasks(State(s): State<HttpState>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.status.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match Status::parse(v) {
            Some(st) => Some(st),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "unknown status `{v}`; expected a Conductor task status such as IN_PROGRESS"
                ),
                )
            }
        },
    };
    let limit = match parse_limit(q.limit.as_deref()) {
        Ok(n) => n,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match parse_cursor(c) {
            Some(a) => Some(a),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("`cursor` is not one this API handed out: `{c}`"),
                )
            }
        },
    };
    let tracker = s.pipeline.tracker();
    let (tasks, more) = tracker.page(
        |r| {
            status.is_none_or(|st| r.status == st)
                && q.task_type.as_deref().is_none_or(|t| &*r.task_type == t)
                && q.workflow_type
                    .as_deref()
                    .is_none_or(|t| r.workflow_type.as_deref() == Some(t))
                && q.workflow_id
                    .as_deref()
                    .is_none_or(|w| &*r.workflow_id == w)
        },
        after.as_ref().map(|(seen, id)| (*seen, id.as_str())),
        limit,
    );
    let next = more
        .then(|| tasks.last().map(|r| cursor_of(r.last_seen, &r.task_id)))
        .flatten();
    let stall_ms = s.stall_after.as_millis() as i64;
    let now = crate::now_ms();
    let views: Vec<TaskView> = tasks
        .iter()
        .map(|r| {
            let predicted = tracker.predicted_completion(&r.task_id, now, stall_ms);
            TaskView::new(r, predicted, now, stall_ms)
        })
        .collect();
    Json(json!({ "tasks": views, "count": views.len(), "next": next })).into_response()
}

/// `GET /api/v1/tasks/{taskId}`: one task, its recent history and its attempts' workers.
pub(super) async fn get_task(State(s): State<HttpState>, Path(task_id): Path<String>) -> Response {
    let tracker = s.pipeline.tracker();
    let rec = match tracker.get(&task_id) {
        Some(r) => Some(r),
        None => match within_store_timeout(s.store.get_task(&task_id)).await {
            Ok(r) => r,
            Err(why) => return unavailable(format!("store unavailable: {why}")),
        },
    };
    let Some(rec) = rec else {
        return error(StatusCode::NOT_FOUND, format!("unknown task `{task_id}`"));
    };
    // History lives in the store. When it can't answer (promptly), a task in memory is still
    // shown, with what memory knows and the reason the rest is missing: during an outage the
    // current state is what an operator looks for.
    let from_store = within_store_timeout(async {
        tokio::try_join!(
            s.store.task_history(&task_id, 50),
            s.store.task_attempts(&task_id)
        )
    })
    .await;
    let (mut history, mut attempts, history_error) = match from_store {
        Ok((h, a)) => (h, a, None),
        Err(why) => (
            Vec::new(),
            Vec::new(),
            Some(format!("store unavailable: {why}")),
        ),
    };
    // Rejected updates folded into one line wait in memory for the task's write slot (one
    // history write per task per interval): shown at once, newest first like the rest.
    if let Some(line) = tracker.unwritten_rejections(&task_id) {
        history.insert(0, line);
        history.truncate(50);
    }
    // Attempts seen since the task's last write are in memory only; and the current one may be
    // on its way to the store.
    for a in tracker.unwritten_attempts(&task_id) {
        match attempts
            .iter_mut()
            .find(|s| s.attempt == a.attempt && s.worker_id == a.worker_id)
        {
            Some(stored) => stored.last_seen = stored.last_seen.max(a.last_seen),
            None => attempts.push(a),
        }
    }
    if let Some(worker) = &rec.worker_id {
        let n = rec.retry_count.unwrap_or(0);
        if !attempts
            .iter()
            .any(|a| a.attempt == n && a.worker_id == *worker)
        {
            attempts.push(Attempt {
                task_id: rec.task_id.clone(),
                attempt: n,
                worker_id: worker.clone(),
                first_seen: rec.last_seen,
                last_seen: rec.last_seen,
            });
        }
    }
    attempts.sort_by_key(|a| (a.attempt, a.first_seen));
    let excess = attempts.len().saturating_sub(crate::model::ATTEMPTS_KEPT);
    attempts.drain(..excess);
    let stall_ms = s.stall_after.as_millis() as i64;
    let now = crate::now_ms();
    let predicted = tracker.predicted_completion(&task_id, now, stall_ms);
    let mut view =
        serde_json::to_value(TaskView::new(&rec, predicted, now, stall_ms)).unwrap_or_default();
    view["history"] = json!(history);
    let mut attempts = json!(attempts);
    // The host of each worker, where an engine told it (Kestra's service registry): kept after
    // the worker is gone.
    let ids: Vec<&str> = rec_workers(&attempts);
    if !ids.is_empty() && history_error.is_none() {
        if let Ok(hosts) = within_store_timeout(s.store.worker_hosts(&ids)).await {
            for a in attempts.as_array_mut().into_iter().flatten() {
                let host = a["workerId"].as_str().and_then(|w| hosts.get(w)).cloned();
                if let Some(h) = host {
                    a["host"] = json!(h);
                }
            }
        }
    }
    view["attempts"] = attempts;
    if let Some(why) = history_error {
        // Only the in-memory part is shown; say so rather than pass off an empty history.
        view["historyUnavailable"] = json!(why);
    }
    Json(view).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct RepairsQuery {
    limit: Option<String>,
}

/// `GET /api/v1/repairs`: the checker's audit trail, newest first.
pub(super) async fn list_repairs(
    State(s): State<HttpState>,
    Query(q): Query<RepairsQuery>,
) -> Response {
    let limit = match parse_limit(q.limit.as_deref()) {
        Ok(n) => n,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    match s.store.list_repairs(limit as i64).await {
        Ok(repairs) => Json(json!({ "repairs": repairs, "count": repairs.len() })).into_response(),
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}

/// `limit` query parameter: 1 to MAX_LIST_LIMIT, default DEFAULT_LIST_LIMIT.
fn parse_limit(v: Option<&str>) -> Result<usize, String> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "`limit` must be a number from 1 to {MAX_LIST_LIMIT}, got `{v}`"
            )),
        },
    }
}

pub(super) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready: not draining, every engine source readable, the writer not failing, the store
/// reachable and migrated.
pub(super) async fn readyz(State(s): State<HttpState>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    // The writer knows first: a store that answers pings but refuses writes (disk full, read-
    // only, a lock held) is not ready either.
    if let Some(why) = s.engine_readiness.iter().find_map(|check| check()) {
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let writer = s.pipeline.tracker().writer();
    if let Some(since) = writer.store_failing_since() {
        let secs = (crate::now_ms() - since).max(0) as f64 / 1000.0;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store not ready: writes have been failing for {secs:.1}s and are being retried ({} pending)",
                writer.pending()
            ),
        );
    }
    match within_store_timeout(s.store.ready()).await {
        Ok(()) => Json(json!({ "status": "ready", "store": s.store.kind() })).into_response(),
        Err(why) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {why}"),
        ),
    }
}

/// Longest a read request (readiness, the task view) waits for the store before answering
/// without it: a store that hangs must not hang the probes and the API with it.
const STORE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A store read bounded by [`STORE_READ_TIMEOUT`]; the error says why it gave no answer.
async fn within_store_timeout<T>(
    read: impl std::future::Future<Output = crate::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(STORE_READ_TIMEOUT, read).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(STORE_READ_TIMEOUT)
        )),
    }
}

pub(super) async fn metrics(State(s): State<HttpState>) -> Response {
    match s.exposition.scrape().await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(super) async fn landing() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><title>taskpulse</title></head><body>",
        "<h1>taskpulse ",
        env!("CARGO_PKG_VERSION"),
        "</h1><p>Monitoring sidecar for workflow engines.</p><ul>",
        "<li><a href=\"/metrics\">/metrics</a></li>",
        "<li><a href=\"/api/v1/tasks\">/api/v1/tasks</a></li>",
        "<li><a href=\"/healthz\">/healthz</a></li>",
        "<li><a href=\"/readyz\">/readyz</a></li></ul></body></html>"
    ))
}

pub(super) async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The distinct worker ids of the attempts (as JSON), at most one look-up per attempt kept.
fn rec_workers(attempts: &serde_json::Value) -> Vec<&str> {
    let mut ids: Vec<&str> = attempts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["workerId"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
