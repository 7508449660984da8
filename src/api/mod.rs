//! The HTTP surface (contract sections 2 and 5): ingest, reading state, health and `/metrics`.

// Handlers return `Result<_, Response>`: the error is the HTTP answer itself, sent as it is;
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub(crate) mod ingest;
mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::Settings;
use crate::ingest::Format;
use crate::lifecycle::Status;
use crate::metrics::{Metrics, SOURCE_API};
use crate::state::Tracker;
use crate::store::Store;
pub use views::TaskView;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub tracker: Arc<Tracker>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    /// Set when shutdown starts: readiness turns false and new updates get 503.
    pub draining: Arc<AtomicBool>,
    /// The Conductor worker proxy, with `--conductor-url`.
    pub conductor: Option<Arc<crate::engines::conductor::proxy::Proxy>>,
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/updates", post(post_updates))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{task_id}", get(get_task))
        .route("/repairs", get(list_repairs))
        .route(
            "/conductor/task-status",
            post(crate::engines::conductor::webhook::task_status),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(landing))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .route(
            "/api/{*rest}",
            axum::routing::any(crate::engines::conductor::proxy::handle),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), body_deadline))
        .layer(DefaultBodyLimit::max(
            state.settings.max_body_bytes.as_u64() as usize,
        ))
        .with_state(state)
}

/// A JSON error body with a status.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

pub(crate) fn unavailable(msg: impl Into<String>) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `--body-read-timeout`: a request whose body has not fully arrived this long after its head
/// gets 408 and its connection is closed.
///
/// Without it a client that sends a head with `Content-Length: 8000000` and then trickles (or
/// stops) would hold its connection, and the handler waiting for the body, forever. The deadline
/// runs from when the head was read; a body nobody reads costs nothing.
async fn body_deadline(State(s): State<AppState>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let limit = s.settings.body_read_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        axum::body::Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            expired: expired.clone(),
        })
    });
    let resp = next.run(req).await;
    if !expired.load(Ordering::Relaxed) {
        return resp;
    }
    let mut r = error(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within --body-read-timeout ({})",
            humantime::format_duration(limit)
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The body did not arrive in time (`--body-read-timeout`).
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {}", humantime::format_duration(*.0))]
struct BodyTimeout(Duration);

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
}

impl axum::body::HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimeout(this.limit).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.settings.auth_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.0.as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer TOKEN)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// `POST /api/v1/updates`.
async fn post_updates(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match ingest::read_body(&s, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let format = Format::from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    // Parsing and applying is CPU work on the request's own task; it never awaits.
    let items = match crate::ingest::parse_body(&body, format) {
        Ok(items) => items,
        Err(e) => return ingest::bad_body(&e),
    };
    match ingest::accept(&s, items, SOURCE_API).await {
        Ok(resp) => (StatusCode::OK, Json(resp)).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    status: Option<String>,
    task_type: Option<String>,
    workflow_id: Option<String>,
    limit: Option<String>,
}

const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 10_000;

/// `GET /api/v1/tasks`: tracked tasks, most recently updated first.
async fn list_tasks(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
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
    let mut tasks = s.tracker.select(|r| {
        status.is_none_or(|st| r.status == st)
            && q.task_type.as_deref().is_none_or(|t| &*r.task_type == t)
            && q.workflow_id
                .as_deref()
                .is_none_or(|w| &*r.workflow_id == w)
    });
    tasks.sort_unstable_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then(a.task_id.cmp(&b.task_id))
    });
    tasks.truncate(limit);
    let stall_ms = s.settings.stall_after.as_millis() as i64;
    let now = crate::now_ms();
    let views: Vec<TaskView> = tasks
        .iter()
        .map(|r| {
            let predicted = s.tracker.predicted_completion(&r.task_id, now, stall_ms);
            TaskView::new(r, predicted, now, stall_ms)
        })
        .collect();
    Json(json!({ "tasks": views, "count": views.len() })).into_response()
}

/// `GET /api/v1/tasks/{taskId}`: one task, its recent history and its attempts' workers.
async fn get_task(State(s): State<AppState>, Path(task_id): Path<String>) -> Response {
    let rec = match s.tracker.get(&task_id) {
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
    let (history, mut attempts, history_error) = match from_store {
        Ok((h, a)) => (h, a, None),
        Err(why) => (
            Vec::new(),
            Vec::new(),
            Some(format!("store unavailable: {why}")),
        ),
    };
    // The current attempt is in memory at once; its row may still be on its way to the store.
    if let Some(worker) = &rec.worker_id {
        let n = rec.retry_count.unwrap_or(0);
        if !attempts
            .iter()
            .any(|a| a.attempt == n && a.worker_id == *worker)
        {
            attempts.push(crate::store::Attempt {
                task_id: rec.task_id.clone(),
                attempt: n,
                worker_id: worker.clone(),
                first_seen: rec.last_seen,
                last_seen: rec.last_seen,
            });
        }
    }
    let stall_ms = s.settings.stall_after.as_millis() as i64;
    let now = crate::now_ms();
    let predicted = s.tracker.predicted_completion(&task_id, now, stall_ms);
    let mut view =
        serde_json::to_value(TaskView::new(&rec, predicted, now, stall_ms)).unwrap_or_default();
    view["history"] = json!(history);
    view["attempts"] = json!(attempts);
    if let Some(why) = history_error {
        // Only the in-memory part is shown; say so rather than pass off an empty history.
        view["historyUnavailable"] = json!(why);
    }
    Json(view).into_response()
}

#[derive(Debug, Deserialize)]
struct RepairsQuery {
    limit: Option<String>,
}

/// `GET /api/v1/repairs`: the checker's audit trail, newest first.
async fn list_repairs(State(s): State<AppState>, Query(q): Query<RepairsQuery>) -> Response {
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

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    // The writer knows first: a store that answers pings but refuses writes (disk full, read-
    // only, a lock held) is not ready either.
    if let Some(since) = s.tracker.writer().store_failing_since() {
        let secs = (crate::now_ms() - since).max(0) as f64 / 1000.0;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store not ready: writes have been failing for {secs:.1}s and are being retried ({} pending)",
                s.metrics.store_pending_writes.get()
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

async fn metrics(State(s): State<AppState>) -> Response {
    let m = s.metrics.clone();
    match tokio::task::spawn_blocking(move || m.render()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scrape failed: {e}"),
        ),
    }
}

async fn landing() -> Html<&'static str> {
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

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}
