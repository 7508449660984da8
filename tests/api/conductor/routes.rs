//! The emulator's HTTP routes: Conductor's task API as the engine answers it, the request
//! recorder and the fault switches. `REST` = `rest/src/main/java/com/netflix/conductor/rest/`
//! in conductor-oss/conductor at b54f0d4e.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::spec::{epoch_ms, Recorded};
use super::state::{read_result, Refusal, State, Taken};

pub(super) type Shared = Arc<Mutex<State>>;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/tasks/poll/batch/{task_type}", get(batch_poll))
        .route("/api/tasks/poll/{task_type}", get(single_poll))
        .route("/api/tasks", post(update_v1))
        .route("/api/tasks/update-v2", post(update_v2))
        .route("/api/tasks/queue/all/verbose", get(queue_verbose))
        .route("/api/tasks/{task_id}", get(get_task))
        .route("/api/workflow/decide/{workflow_id}", put(decide))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

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
        let mut s = lock(&state);
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

/// `REST/controllers/TaskResource.java:78-89`: a JSON array, empty when nothing is due,
/// waiting up to `timeout` ms (default 100; at most 1 s here) for a task to become due.
async fn batch_poll(
    AxState(state): AxState<Shared>,
    UrlPath(task_type): UrlPath<String>,
    Query(q): Query<PollQuery>,
) -> Response {
    let count = q.count.unwrap_or(1).max(1);
    let deadline = Instant::now() + Duration::from_millis(q.timeout.unwrap_or(100).min(1000));
    loop {
        let tasks = lock(&state).poll(&task_type, q.workerid.as_deref(), count);
        if !tasks.is_empty() || Instant::now() >= deadline {
            return Json(tasks).into_response();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `REST/controllers/TaskResource.java:66-76`: one Task, or 204.
async fn single_poll(
    AxState(state): AxState<Shared>,
    UrlPath(task_type): UrlPath<String>,
    Query(q): Query<PollQuery>,
) -> Response {
    match lock(&state)
        .poll(&task_type, q.workerid.as_deref(), 1)
        .pop()
    {
        Some(t) => Json(t).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// The engine's error body (`REST/controllers/ApplicationExceptionMapper.java:63-79`).
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"status": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// The HTTP answer to a refused update (`ApplicationExceptionMapper.java:51-66`,
/// `ValidationExceptionMapper.java:49-60`). A missing `taskId` or `workflowInstanceId` is a
/// 400 on `POST /api/tasks` (the `@Valid` of `CORE/service/TaskService.java:97-98` throws a
/// ConstraintViolationException); on update-v2 the controller's own `@Valid`
/// (`TaskResource.java:100`) throws Spring's MethodArgumentNotValidException first, which no
/// mapper lists, so a 500 (read, not run: unverified). A body Jackson cannot read (an unknown
/// status) is an HttpMessageNotReadableException, unlisted too: 500 (its cause,
/// InvalidFormatException, is mapped to 500 as well, `ApplicationExceptionMapper.java:55`).
fn refused(r: Refusal, v2: bool) -> Response {
    match r {
        Refusal::Unreadable(m) => error(StatusCode::INTERNAL_SERVER_ERROR, &m),
        Refusal::Invalid if v2 => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Validation failed for argument [0]",
        ),
        Refusal::Invalid => error(
            StatusCode::BAD_REQUEST,
            "Validation failed, check below errors for detail.",
        ),
        Refusal::NotFound(id) => error(
            StatusCode::NOT_FOUND,
            &format!("No such task found by id: {id}"),
        ),
        Refusal::NoStatus => error(StatusCode::INTERNAL_SERVER_ERROR, "NullPointerException"),
    }
}

/// Applies one update after the fault switches had their say.
async fn apply_update(state: &Shared, body: &Bytes, v2: bool) -> Result<Taken, Response> {
    let (fail, delay) = {
        let s = lock(state);
        (s.fail_with, s.delay)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = fail {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(error(code, "emulator fault: fail_with"));
    }
    let result = read_result(body).map_err(|r| refused(r, v2))?;
    lock(state).update(result, body).map_err(|r| refused(r, v2))
}

/// `POST /api/tasks`: the taskId as `text/plain` (`REST/controllers/TaskResource.java:91-96`).
async fn update_v1(AxState(state): AxState<Shared>, body: Bytes) -> Response {
    match apply_update(&state, &body, false).await {
        Ok(_) => {
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["taskId"].as_str().map(String::from))
                .unwrap_or_default();
            ([(header::CONTENT_TYPE, "text/plain")], id).into_response()
        }
        Err(resp) => resp,
    }
}

/// `POST /api/tasks/update-v2` (`REST/controllers/TaskResource.java:98-113`): when the task is
/// terminal after the call (applied, or already terminal and ignored), the next task of its
/// type polled for the result's `workerId` (null when absent); else 204.
async fn update_v2(AxState(state): AxState<Shared>, body: Bytes) -> Response {
    if lock(&state).no_update_v2 {
        return error(StatusCode::NOT_FOUND, "no update-v2 on this server");
    }
    let worker = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["workerId"].as_str().map(String::from));
    match apply_update(&state, &body, true).await {
        Ok(taken) if taken.terminal_after => {
            match lock(&state)
                .poll(&taken.task_type, worker.as_deref(), 1)
                .pop()
            {
                Some(next) => Json(next).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            }
        }
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(resp) => resp,
    }
}

/// `GET /api/tasks/{taskId}`: the Task, 404 when unknown (`TaskResource.java:211-218`).
async fn get_task(AxState(state): AxState<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    let s = lock(&state);
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

/// `GET /api/tasks/queue/all/verbose`: `{"<taskType>": {"a": {"size": SCHEDULED tasks,
/// "uacked": IN_PROGRESS tasks}}}`.
async fn queue_verbose(AxState(state): AxState<Shared>) -> Response {
    let s = lock(&state);
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
        let n = entry["a"][key].as_i64().unwrap_or(0) + 1;
        entry["a"][key] = json!(n);
    }
    Json(Value::Object(out)).into_response()
}

/// `PUT /api/workflow/decide/{workflowId}`: recorded, 200.
async fn decide(AxState(state): AxState<Shared>, UrlPath(id): UrlPath<String>) -> StatusCode {
    lock(&state).decides.push(id);
    StatusCode::OK
}
