//! The ingest path every source shares (the API, the Conductor webhook, the worker proxy):
//! admission, store look-up of tasks not in memory, the lifecycle, waiting for the commits an
//! acknowledgement needs, and counting by source.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::{error, unavailable, AppState};
use crate::ingest::{BodyError, Item};
use crate::lifecycle::Rejection;
use crate::state::Applied;
use crate::store::Commit;

/// How long an update that needs a commit waits for it before the client gets 503.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a client waiting for a commit looks at the writer's health: once the store is
/// known to fail, it gets 503 within this, not after the whole [`COMMIT_TIMEOUT`].
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// The answer to an update that needs a commit while the store is failing. What was accepted
/// stays in memory and in the writer's queue, so the retry the client makes is a duplicate.
const STORE_FAILING: &str = "the store is unavailable; retry (accepted updates are kept and written when it is back, and a retry is answered as a duplicate)";

/// One rejected item in the ingest response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RejectedItem {
    index: usize,
    task_id: Option<String>,
    reason: String,
    detail: String,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct IngestResponse {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<RejectedItem>,
}

impl IngestResponse {
    fn reject(&mut self, index: usize, task_id: Option<String>, r: &Rejection) {
        self.rejected.push(RejectedItem {
            index,
            task_id,
            reason: r.reason(),
            detail: r.detail(),
        });
    }
}

/// The body, or 413 naming the limit.
pub(crate) fn read_body(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Response> {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than --max-body-bytes ({})",
                    s.settings.max_body_bytes.display().iec()
                ),
            ))
        }
        Err(e) => return Err(error(e.status(), e.body_text())),
    };
    admit(s)?;
    Ok(body)
}

/// 400 for a body that is not JSON at all, naming line and column.
pub(crate) fn bad_body(e: &BodyError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": e.to_string(), "line": e.line, "column": e.column })),
    )
        .into_response()
}

/// Refuses new updates while draining or while the store is too far behind.
pub(crate) fn admit(s: &AppState) -> Result<(), Response> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(unavailable("taskpulse is shutting down"));
    }
    let pending = s.tracker.writer().pending();
    if pending > s.settings.max_pending_writes {
        return Err(unavailable(format!(
            "the store is behind: {pending} writes waiting (limit --max-pending-writes {})",
            s.settings.max_pending_writes
        )));
    }
    Ok(())
}

/// Applies parsed items through the lifecycle and the throttle, waits for the commits that
/// acknowledged updates need, and counts the outcomes under `source`.
pub(crate) async fn accept(
    s: &AppState,
    items: Vec<Item>,
    source: &str,
) -> Result<IngestResponse, Response> {
    apply(s, items, source, true).await
}

/// Like [`accept`], without waiting for commits: for updates whose sender is answered by
/// someone else (the worker proxy answers with the engine's response).
pub(crate) async fn accept_nowait(
    s: &AppState,
    items: Vec<Item>,
    source: &str,
) -> Result<IngestResponse, Response> {
    apply(s, items, source, false).await
}

async fn apply(
    s: &AppState,
    items: Vec<Item>,
    source: &str,
    wait: bool,
) -> Result<IngestResponse, Response> {
    // Tasks that are not in memory may still be in the store (finished past the retention):
    // bring them back first, with one query for the whole body, so the lifecycle decides on
    // what the store holds rather than treating them as new.
    let unknown = s.tracker.unknown(
        items
            .iter()
            .filter_map(|i| i.parsed.as_ref().ok())
            .map(|u| u.task_id.as_str()),
    );
    if !unknown.is_empty() {
        // Unknown tasks are new (they need a commit) or must be read from the store first:
        // neither can succeed while the store is failing, so don't make the client wait for
        // the pool's connect timeout.
        if s.tracker.writer().store_failing() {
            return Err(unavailable(STORE_FAILING));
        }
        match s.store.get_tasks(&unknown).await {
            Ok(found) => s.tracker.load_absent(found),
            Err(e) => return Err(unavailable(format!("store unavailable: {e}"))),
        }
    }
    let mut resp = IngestResponse::default();
    let mut waits = Vec::new();
    let store_failing = wait && s.tracker.writer().store_failing();
    // A retried completion is a duplicate from memory, but while the store fails its first
    // attempt may still be waiting in the writer: a 200 now would acknowledge a completion
    // that is not durable yet. The client gets 503 until the store is back.
    let mut unconfirmed_duplicate = false;
    for item in items {
        match item.parsed {
            Err(e) => resp.reject(item.index, e.task_id, &e.rejection),
            Ok(update) => {
                let task_id = update.task_id.clone();
                let sent = (update.status, update.update_time);
                match s.tracker.apply(update) {
                    Applied::Accepted { commit: None } => resp.accepted += 1,
                    Applied::Accepted { commit: Some(_) } if !wait => resp.accepted += 1,
                    Applied::Accepted { commit: Some(rx) } => {
                        waits.push(((item.index, task_id, sent), rx))
                    }
                    Applied::Duplicate => {
                        resp.duplicates += 1;
                        unconfirmed_duplicate |= store_failing && sent.0.is_terminal();
                    }
                    Applied::Rejected(r) => resp.reject(item.index, Some(task_id), &r),
                }
            }
        }
    }
    if unconfirmed_duplicate && waits.is_empty() {
        s.metrics
            .updates_total
            .with_label_values(&[source, "accepted"])
            .inc_by(resp.accepted);
        return Err(unavailable(STORE_FAILING));
    }
    if !waits.is_empty() {
        let (meta, receivers): (Vec<_>, Vec<_>) = waits.into_iter().unzip();
        let commits = match wait_for_commits(s, receivers).await {
            Ok(c) => c,
            Err(why) => {
                s.metrics
                    .updates_total
                    .with_label_values(&[source, "accepted"])
                    .inc_by(resp.accepted);
                return Err(unavailable(why));
            }
        };
        for ((index, task_id, (status, update_time)), commit) in meta.into_iter().zip(commits) {
            match commit {
                Ok(Commit::Written) => resp.accepted += 1,
                Ok(Commit::Conflict(Some(stored))) => {
                    // Another writer (a replica, a repair) got there first: the lifecycle rules
                    // applied to what the store holds decide.
                    let stored = *stored;
                    if stored.status.is_terminal() && stored.status == status {
                        resp.duplicates += 1;
                        s.tracker.reload(stored);
                        continue;
                    }
                    let rejection = if stored.status.is_terminal() {
                        Rejection::Terminal {
                            from: stored.status,
                            to: status,
                        }
                    } else {
                        Rejection::Stale {
                            stored: stored.update_time.unwrap_or(0),
                            got: update_time.unwrap_or(0),
                        }
                    };
                    s.tracker.lost_to_store(stored, status);
                    resp.reject(index, Some(task_id), &rejection)
                }
                Ok(Commit::Conflict(None)) => resp.reject(
                    index,
                    Some(task_id),
                    &Rejection::Invalid("the store refused the update".into()),
                ),
                Ok(Commit::Failed(msg)) => resp.reject(
                    index,
                    Some(task_id),
                    &Rejection::Invalid(format!("the store refused the update: {msg}")),
                ),
                Err(_) => return Err(unavailable("taskpulse is shutting down")),
            }
        }
    }
    let count = |outcome: &str, n: u64| {
        if n > 0 {
            s.metrics
                .updates_total
                .with_label_values(&[source, outcome])
                .inc_by(n);
        }
    };
    count("accepted", resp.accepted);
    count("duplicate", resp.duplicates);
    count("rejected", resp.rejected.len() as u64);
    Ok(resp)
}

/// Waits for the commits an acknowledgement needs, up to [`COMMIT_TIMEOUT`], but gives up as
/// soon as the writer reports the store failing: the commit cannot come until the store is
/// back, and a quick 503 lets the client back off instead of holding a connection for 10 s.
async fn wait_for_commits(
    s: &AppState,
    receivers: Vec<tokio::sync::oneshot::Receiver<Commit>>,
) -> Result<Vec<Result<Commit, tokio::sync::oneshot::error::RecvError>>, &'static str> {
    let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
    let all = futures_util::future::join_all(receivers);
    tokio::pin!(all);
    loop {
        tokio::select! {
            // A commit that arrived wins over a failure seen at the same time.
            biased;
            commits = &mut all => return Ok(commits),
            _ = tokio::time::sleep(HEALTH_POLL) => {
                if s.tracker.writer().store_failing() {
                    return Err(STORE_FAILING);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err("the store did not confirm the write in time; retry (accepted updates are kept and a retry is answered as a duplicate)");
                }
            }
        }
    }
}
