//! Reading state: the task list and one task, the repairs audit, health, readiness,
//! `/metrics` and the status page's overview (`docs/contract.md` §2 and §5).

use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::query::{parse_limit, ListParams, TaskQuery};
use super::views::TaskView;
use super::{error, unavailable, HttpState};
use crate::model::{Attempt, TaskEvent};

/// `GET /api/v1/tasks`: tracked tasks, filtered and sorted ([`TaskQuery`]), a page at a time.
pub(super) async fn list_tasks(
    State(s): State<HttpState>,
    Query(p): Query<ListParams>,
) -> Response {
    let q = match TaskQuery::parse(p) {
        Ok(q) => q,
        Err(bad) => return error(StatusCode::BAD_REQUEST, bad.to_string()),
    };
    if !q.max_age.is_zero() {
        if let Some(answer) = s.shared_lists.get(&q.answer_key(), q.max_age) {
            return json_bytes(answer);
        }
    }
    let answer = match task_page(&s, &q) {
        Ok(a) => bytes::Bytes::from(a),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if !q.max_age.is_zero() {
        s.shared_lists.put(q.answer_key(), answer.clone());
    }
    json_bytes(answer)
}

/// An answer already serialized as JSON.
fn json_bytes(body: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One page of the task list, serialized.
fn task_page(s: &HttpState, q: &TaskQuery) -> serde_json::Result<Vec<u8>> {
    let tracker = s.pipeline.tracker();
    let page = tracker.page(
        |r| q.matches(r),
        |r| q.key(r),
        q.after.as_ref().map(|(k, id)| (*k, id.as_str())),
        q.limit,
    );
    let next = page
        .more
        .then(|| page.tasks.last().map(|(k, r)| q.cursor(*k, &r.task_id)))
        .flatten();
    let stall_ms = s.stall_after.as_millis() as i64;
    let now = crate::now_ms();
    let views: Vec<TaskView> = page
        .tasks
        .iter()
        .map(|(_, r)| {
            let predicted = tracker.predicted_completion(&r.task_id, now, stall_ms);
            TaskView::new(r, predicted, now, stall_ms)
        })
        .collect();
    serde_json::to_vec(&TaskPage {
        count: views.len(),
        next,
        tasks: views,
        total: page.total,
    })
}

/// `GET /api/v1/tasks`'s answer. Fields in the order of their names, the order the answer has
/// always had (it was built as a `serde_json` map, which sorts its keys).
#[derive(Serialize)]
struct TaskPage<'a> {
    /// Tasks on this page.
    count: usize,
    /// The cursor of the next page, `null` on the last.
    next: Option<String>,
    tasks: Vec<TaskView<'a>>,
    /// Tasks matching the filter, on every page.
    total: usize,
}

/// Task-list answers kept for the requests that accept a recent one (`maxAge`): fifty open
/// status pages refreshing the same first page cost one walk of the tracked tasks, not fifty.
/// Answers are kept as their JSON bytes, none longer than the longest `maxAge` (older ones are
/// dropped whenever the cache is used), at most [`SHARED_LISTS`] of them and
/// [`SHARED_LIST_BYTES`] in all: past that the oldest go first, and an answer larger than the
/// whole budget is not kept. What the cache pins is bounded, whatever the queries.
#[derive(Default)]
pub struct SharedLists {
    answers: std::sync::Mutex<SharedAnswers>,
}

#[derive(Default)]
struct SharedAnswers {
    by_key: std::collections::HashMap<String, (Instant, bytes::Bytes)>,
    bytes: usize,
}

/// Answers kept at once.
const SHARED_LISTS: usize = 64;
/// Bytes of answers (and their keys) kept at once.
pub const SHARED_LIST_BYTES: usize = 16 * 1024 * 1024;

impl SharedAnswers {
    fn remove(&mut self, key: &str) {
        if let Some((_, v)) = self.by_key.remove(key) {
            self.bytes -= v.len() + key.len();
        }
    }

    /// Drops what no `maxAge` can accept any more.
    fn expire(&mut self) {
        let oldest = Duration::from_millis(super::query::MAX_AGE_MS);
        let stale: Vec<String> = self
            .by_key
            .iter()
            .filter(|(_, (at, _))| at.elapsed() > oldest)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.remove(&k);
        }
    }

    /// Drops the oldest answers until `need` more bytes and one more answer fit.
    fn make_room(&mut self, need: usize) {
        while !self.by_key.is_empty()
            && (self.by_key.len() >= SHARED_LISTS || self.bytes + need > SHARED_LIST_BYTES)
        {
            let Some(oldest) = self
                .by_key
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
    }
}

impl SharedLists {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedAnswers> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str, max_age: Duration) -> Option<bytes::Bytes> {
        let mut answers = self.lock();
        answers.expire();
        answers
            .by_key
            .get(key)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: String, answer: bytes::Bytes) {
        let need = answer.len() + key.len();
        let mut answers = self.lock();
        answers.expire();
        answers.remove(&key);
        if need > SHARED_LIST_BYTES {
            return;
        }
        answers.make_room(need);
        answers.bytes += need;
        answers.by_key.insert(key, (Instant::now(), answer));
    }

    /// Bytes the kept answers take (and their keys).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// `GET /api/v1/tasks/{taskId}`: one task, its recent history and its attempts' workers.
pub(super) async fn get_task(State(s): State<HttpState>, Path(task_id): Path<String>) -> Response {
    task_answer(&s, task_id).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TaskIdQuery {
    task_id: Option<String>,
}

/// `GET /api/v1/task?taskId=ID`: the same answer as `GET /api/v1/tasks/{taskId}`, for ids no
/// path can carry. A browser resolves `.` and `..` segments, `%2E%2E` included, before it
/// sends a URL, so the status page asks for every task this way.
pub(super) async fn get_task_by_query(
    State(s): State<HttpState>,
    Query(q): Query<TaskIdQuery>,
) -> Response {
    match q.task_id.filter(|id| !id.is_empty()) {
        Some(task_id) => task_answer(&s, task_id).await,
        None => error(
            StatusCode::BAD_REQUEST,
            "`taskId` is required: GET /api/v1/task?taskId=ID",
        ),
    }
}

/// One task as `GET /api/v1/tasks/{taskId}` answers it.
async fn task_answer(s: &HttpState, task_id: String) -> Response {
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
            Some(stored) => {
                stored.last_seen = stored.last_seen.max(a.last_seen);
                stored.status = a.status.or(stored.status);
                stored.start_time = a.start_time.or(stored.start_time);
                stored.end_time = a.end_time.or(stored.end_time);
            }
            None => attempts.push(a),
        }
    }
    if let Some(worker) = &rec.worker_id {
        let n = rec.retry_count.unwrap_or(0);
        if !attempts
            .iter()
            .any(|a| a.attempt == n && a.worker_id == *worker)
        {
            attempts.push(Attempt::seen(
                rec.task_id.clone(),
                n,
                worker.clone(),
                rec.last_seen,
            ));
        }
    }
    attempts.sort_by_key(|a| (a.attempt, a.first_seen));
    let excess = attempts.len().saturating_sub(crate::model::ATTEMPTS_KEPT);
    attempts.drain(..excess);
    let stall_ms = s.stall_after.as_millis() as i64;
    let now = crate::now_ms();
    let predicted = tracker.predicted_completion(&task_id, now, stall_ms);
    let mut attempts: Vec<AttemptAnswer> = attempts
        .into_iter()
        .map(|attempt| AttemptAnswer {
            attempt,
            host: None,
        })
        .collect();
    // The host of each worker, where an engine told it (Kestra's service registry): kept after
    // the worker is gone.
    let ids = distinct_workers(&attempts);
    if !ids.is_empty() && history_error.is_none() {
        if let Ok(hosts) = within_store_timeout(s.store.worker_hosts(&ids)).await {
            for a in &mut attempts {
                a.host = hosts.get(&*a.attempt.worker_id).cloned();
            }
        }
    }
    let answer = TaskAnswer {
        view: TaskView::new(&rec, predicted, now, stall_ms),
        history,
        progress_samples: tracker
            .progress_samples(&task_id)
            .into_iter()
            .map(|(at, p)| (at, f64::from(p)))
            .collect(),
        attempts,
        // Only the in-memory part is shown; say so rather than pass off an empty history.
        history_unavailable: history_error,
    };
    Json(answer).into_response()
}

/// One task as `GET /api/v1/tasks/{taskId}` answers it: the list's view of the task, and what
/// only the store (or memory not yet written) knows of it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskAnswer<'a> {
    #[serde(flatten)]
    view: TaskView<'a>,
    /// Newest first, at most 50 lines.
    history: Vec<TaskEvent>,
    /// `[at, percent]` pairs, the window the prediction is drawn from; absent when empty.
    /// Widened to `f64`, as the answer always wrote them (like the record's progress).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    progress_samples: Vec<(i64, f64)>,
    attempts: Vec<AttemptAnswer>,
    /// Why the history and the stored attempts are missing, when the store did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    history_unavailable: Option<String>,
}

/// One attempt, with its worker's host where an engine reported one.
#[derive(Serialize)]
struct AttemptAnswer {
    #[serde(flatten)]
    attempt: Attempt,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RepairsQuery {
    limit: Option<String>,
    /// Only this task's repairs.
    task_id: Option<String>,
}

/// `GET /api/v1/repairs`: the checker's audit trail, newest first.
pub(super) async fn list_repairs(
    State(s): State<HttpState>,
    Query(q): Query<RepairsQuery>,
) -> Response {
    let limit = match parse_limit(q.limit.as_deref()) {
        Ok(n) => n,
        Err(bad) => return error(StatusCode::BAD_REQUEST, bad.to_string()),
    };
    let task = q.task_id.as_deref().filter(|t| !t.is_empty());
    match within_store_timeout(s.store.list_repairs(limit as i64, task)).await {
        Ok(repairs) => Json(json!({ "repairs": repairs, "count": repairs.len() })).into_response(),
        Err(why) => unavailable(format!("store unavailable: {why}")),
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
pub(super) async fn within_store_timeout<T>(
    read: impl std::future::Future<Output = crate::Result<T>>,
) -> Result<T, StoreRead> {
    match tokio::time::timeout(STORE_READ_TIMEOUT, read).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreRead::Failed(e)),
        Err(_) => Err(StoreRead::TimedOut(humantime::format_duration(
            STORE_READ_TIMEOUT,
        ))),
    }
}

/// Why a bounded store read gave no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreRead {
    #[error(transparent)]
    Failed(crate::error::Error),
    #[error("no answer within {0}")]
    TimedOut(humantime::FormattedDuration),
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
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/overview`: the status page's overview ([`super::overview`]): the last one
/// computed, never a wait for a walk of the tracked tasks (but the very first).
pub(super) async fn overview(State(s): State<HttpState>) -> Response {
    Json(s.overview.get().await).into_response()
}

pub(super) async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The distinct worker ids of the attempts, at most one look-up per attempt kept.
fn distinct_workers(attempts: &[AttemptAnswer]) -> Vec<&str> {
    let mut ids: Vec<&str> = attempts.iter().map(|a| &*a.attempt.worker_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
